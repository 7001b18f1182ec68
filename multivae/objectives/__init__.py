"""Training objectives, kept apart from the models.

ELBO, IWAE, DReG, closed-form KL terms and annealing schedules. Arrives with the model core
(issue 3).
"""
