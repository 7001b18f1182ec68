"""Evaluation metrics and their plots.

Likelihoods, coherences, FID, reconstruction and clustering. Arrives with evaluation (issue 5).
"""
