"""Training objectives, kept apart from the models: KL terms, ELBO, IWAE, DReG and warmups.

Models compute log-densities and log-likelihoods; these functions turn them into bounds. All
return one value per sample (shape ``(N,)``); models average them into ``output.loss``.
"""

from multivae.objectives.bounds import (
    average_over_experts,
    dreg_surrogate,
    elbo,
    iwae_bound,
    log_mean_exp,
    mixture_of_experts_bound,
)
from multivae.objectives.kl import kl_normal, kl_standard_normal, kl_to_experts
from multivae.objectives.warmup import linear_warmup

__all__ = [
    "average_over_experts",
    "dreg_surrogate",
    "elbo",
    "iwae_bound",
    "kl_normal",
    "kl_standard_normal",
    "kl_to_experts",
    "linear_warmup",
    "log_mean_exp",
    "mixture_of_experts_bound",
]
