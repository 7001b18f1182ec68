"""Training objectives, kept apart from the models: KL terms, ELBO, IWAE, DReG and warmups.

Models compute log-densities and log-likelihoods; these functions turn them into bounds. All
return one value per sample (shape ``(N,)``); models average them into ``output.loss``.
"""

from multivae.objectives.bounds import (
    dreg_surrogate,
    elbo,
    iwae_bound,
    log_mean_exp,
)
from multivae.objectives.kl import kl_normal, kl_standard_normal
from multivae.objectives.warmup import linear_warmup

__all__ = [
    "dreg_surrogate",
    "elbo",
    "iwae_bound",
    "kl_normal",
    "kl_standard_normal",
    "linear_warmup",
    "log_mean_exp",
]
