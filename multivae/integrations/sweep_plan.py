"""The cluster plan of a sweep: the resources each running trial takes, how many run at once.

Before any trial starts the sweep is sized to the cluster (:func:`plan_sweep`): a running trial
takes its driver's resources, its Train workers' and one CPU of headroom for its dataset's read
tasks; concurrency is lowered to what fits and a sweep that cannot fit is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from multivae.config import ConfigError
from multivae.integrations.sweep_file import SweepConfig, with_params

DATA_HEADROOM_CPUS = 1.0
"""CPUs left unreserved for each running trial whose training is a Ray Train run: Ray Data's
read tasks of its dataset need them (with every CPU held by trial drivers and Train workers they
get a budget of 0 and the trial waits forever)."""

_RAY_NAMES = {"cpu": "CPU", "gpu": "GPU"}


def _ray_resources(resources: Mapping[str, float]) -> dict[str, float]:
    """Tune's resource names (``cpu``, ``gpu``) as the cluster reports them (``CPU``, ``GPU``)."""
    return {_RAY_NAMES.get(name, name): float(amount) for name, amount in resources.items()}


@dataclass(frozen=True)
class SweepPlan:
    """The resources a sweep needs per running trial, and how many trials run at once.

    Attributes:
        driver: What each trial's Tune actor reserves (Ray's names: ``CPU``, ``GPU``, custom).
        workers: Ray Train workers per trial (``train_workers``; 0: the driver trains).
        per_worker: What each worker reserves (``run.ray``: CPUs, GPUs, custom resources).
        headroom_cpus: Left free per trial for its dataset's read tasks (0 without workers).
        cluster: The cluster's resources (``ray.cluster_resources()``, or those Ray is started
            with).
        concurrency: Trials run at once: ``max_concurrent_trials``, lowered to what fits.
    """

    driver: dict[str, float]
    workers: int
    per_worker: dict[str, float]
    headroom_cpus: float
    cluster: dict[str, float]
    concurrency: int

    @property
    def trial(self) -> dict[str, float]:
        """Everything one running trial takes, headroom included (resources it needs > 0)."""
        needs: dict[str, float] = {"CPU": self.headroom_cpus}
        for name, amount in self.driver.items():
            needs[name] = needs.get(name, 0.0) + amount
        for name, amount in self.per_worker.items():
            needs[name] = needs.get(name, 0.0) + self.workers * amount
        return {name: amount for name, amount in needs.items() if amount > 0}

    @property
    def trial_cpus(self) -> float:
        """CPUs one running trial takes, headroom included."""
        return self.trial.get("CPU", 0.0)

    def fits(self) -> int:
        """How many trials the cluster holds at once (by its totals of each resource)."""
        counts = [
            int((float(self.cluster.get(name, 0.0)) + 1e-9) // amount)
            for name, amount in self.trial.items()
        ]
        return min(counts) if counts else self.concurrency

    def describe(self) -> str:
        """One line: what a trial needs and what runs at once."""
        cpus = (
            f"driver {self.driver.get('CPU', 0.0):g} + {self.workers} worker(s) x "
            f"{self.per_worker.get('CPU', 0.0):g} + headroom {self.headroom_cpus:g}"
        )
        others = ", ".join(
            f"{amount:g} {name}" for name, amount in self.trial.items() if name != "CPU"
        )
        return (
            f"{self.concurrency} trial(s) at once, each {self.trial_cpus:g} CPUs ({cpus})"
            + (f" and {others}" if others else "")
            + f", on a cluster of {self.cluster.get('CPU', 0.0):g} CPUs"
        )


def make_plan(
    sweep: SweepConfig, base: Mapping[str, Any], cluster: Mapping[str, float]
) -> SweepPlan:
    """The plan of a sweep on ``cluster``, its concurrency not yet sized to what fits."""
    from multivae.run_config import RayConfig

    workers = int(sweep.train_workers)
    per_worker: dict[str, float] = {}
    if workers:
        ray_config = RayConfig.from_dict(dict(with_params(base, {}).get("ray") or {}))
        per_worker = {"CPU": ray_config.cpus_per_worker, **ray_config.resources_per_worker}
        if ray_config.gpus_per_worker:
            per_worker["GPU"] = ray_config.gpus_per_worker
    return SweepPlan(
        driver=_ray_resources(sweep.driver_resources()),
        workers=workers,
        per_worker=per_worker,
        headroom_cpus=DATA_HEADROOM_CPUS if workers else 0.0,
        cluster={name: float(amount) for name, amount in cluster.items()},
        concurrency=sweep.max_concurrent_trials,
    )


def plan_sweep(
    sweep: SweepConfig, base: Mapping[str, Any], cluster: Mapping[str, float]
) -> SweepPlan:
    """Size the sweep's concurrency to the cluster's resources, or refuse a sweep that cannot fit.

    Args:
        sweep: The sweep.
        base: The base run config (plain data); its ``ray`` section sizes the Train workers.
        cluster: The cluster's resources in Ray's names (``ray.cluster_resources()``).

    Raises:
        ConfigError: When not even one trial fits, with what it needs and what there is.
    """
    plan = make_plan(sweep, base, cluster)
    fits = plan.fits()
    if fits < 1:
        shortages = []
        for name, amount in plan.trial.items():
            have = plan.cluster.get(name, 0.0)
            if have + 1e-9 >= amount:
                continue
            why = ""
            if name == "CPU":
                why = (
                    f" (driver {plan.driver.get('CPU', 0.0):g} + {plan.workers} train_workers x "
                    f"{plan.per_worker.get('CPU', 0.0):g} cpus_per_worker + "
                    f"{plan.headroom_cpus:g} for its dataset's read tasks)"
                )
            shortages.append(f"{amount:g} {name}{why}, the Ray cluster has {have:g}")
        raise ConfigError(
            f"sweep: a trial needs {'; '.join(shortages)}. Lower train_workers, the per-worker "
            "resources (run.ray) or trial_resources, or use a larger cluster"
        )
    return replace(plan, concurrency=min(sweep.max_concurrent_trials, fits))
