"""Every model trains under DistributedDataParallel when one rank's batch lacks a modality.

Two processes (gloo, on this machine) train each registered model for a few steps of every
stage, wrapped once as Ray Train wraps it (``find_unused_parameters`` for models whose steps
leave parameters out: later stages freezing modules, several optimizer groups); rank 1's
batches lack the first modality entirely. DDP needs every parameter to take part in every step
(or it fails with "Expected to have finished reduction in the prior iteration"); the models
give the absent modality's encoder and decoder a zero gradient instead of none. After the steps
both ranks hold the same weights.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import multivae

STEPS = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _train(rank: int, port: int, tests: str, out: str) -> None:
    sys.path.insert(0, tests)
    from kit.models import N, names_of, tiny_batch, tiny_model
    from torch.nn.parallel import DistributedDataParallel

    from multivae.training.distributed import finds_unused_parameters

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    try:
        for name in multivae.list_models():
            model = tiny_model(name, "default", "mixed")  # the same weights on both ranks
            # As Ray Train's workers wrap it (prepare_model), once for every stage.
            ddp = DistributedDataParallel(
                model, find_unused_parameters=finds_unused_parameters(model)
            )
            first = names_of("mixed")[0]
            losses = []
            for stage in model.stages:
                model.set_stage(stage)
                model.train()
                optimizer = torch.optim.Adam(model.stage_parameters(stage), lr=1e-3)
                for step in range(STEPS):
                    missing = {first: [False] * N} if rank == 1 else None
                    batch = tiny_batch("mixed", missing=missing, seed=10 * step + rank)
                    torch.manual_seed(100 * step + rank)
                    loss = ddp(batch).loss
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss))
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            results[name] = (losses, flat)
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out) / f"rank{rank}.pt")


@pytest.mark.timeout(600)
def test_every_model_trains_under_ddp_when_a_rank_lacks_a_modality(tmp_path):
    tests = str(Path(__file__).resolve().parents[1])
    mp.start_processes(
        _train, args=(_free_port(), tests, str(tmp_path)), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert set(ranks[0]) == set(multivae.list_models())
    for name in ranks[0]:
        (losses0, weights0), (losses1, weights1) = ranks[0][name], ranks[1][name]
        assert all(torch.isfinite(torch.tensor(losses0 + losses1))), name
        # The gradients were averaged across ranks: the weights moved, and moved alike.
        torch.testing.assert_close(weights0, weights1, msg=f"{name}: ranks disagree")
