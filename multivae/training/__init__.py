"""The one training loop.

Optimizers, schedules, mixed precision, checkpoints, resume and callbacks. Arrives with the model
core (issue 3).
"""
