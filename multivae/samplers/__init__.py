"""Latent samplers for generation and data augmentation.

Prior, GMM, MAF and IAF samplers fitted on encoded data. Arrives with evaluation (issue 5).
"""
