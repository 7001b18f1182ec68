"""Shared building blocks of the models.

Encoders and decoders chosen by registered name, likelihoods, and fusion operators (product and
mixture of experts). Arrives with the model core (issue 3).
"""
