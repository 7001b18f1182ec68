"""Ray start-up: the cluster a Train run or a sweep connects to, or a local Ray instance.

The cluster is ``ray.address`` (a sweep file's ``address``), else ``RAY_ADDRESS``; without one a
local instance is started, with at least the CPUs the caller needs (its logical CPUs may then
exceed the machine's cores). An address where nothing listens is refused before anything is
written or started (:func:`~multivae.integrations.endpoints.check_ray_address`). A Ray instance
already running in this process (a sweep's trial, a caller's ``ray.init``) is used as it is.
"""

from __future__ import annotations

import math
import os


def cluster_address(configured: str | None) -> str | None:
    """The cluster to connect to: ``configured``, else ``RAY_ADDRESS``; empty: a local instance."""
    return configured or os.environ.get("RAY_ADDRESS")


def local_cpus() -> float:
    """The CPUs of this machine (those a local Ray instance detects)."""
    return float(os.cpu_count() or 1)


def local_gpus() -> int:
    """GPUs a local Ray instance started here would detect (those torch sees)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_cluster(configured: str | None, setting: str) -> bool:
    """Whether Ray is to be started here; if so, refuse an address where nothing listens.

    Args:
        configured: The configured address (``None``: ``RAY_ADDRESS``, else a local instance).
        setting: The setting that holds ``configured``, for the message.

    Raises:
        ConfigError: When the address does not answer.
    """
    import ray

    from multivae.integrations.endpoints import check_ray_address

    if ray.is_initialized():
        return False
    check_ray_address(configured, setting)
    return True


def start_ray(configured: str | None, cpus: float) -> None:
    """Connect to the cluster, or start a local instance with at least ``cpus`` CPUs."""
    import ray

    address = cluster_address(configured)
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus)))
