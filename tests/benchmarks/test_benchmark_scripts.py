"""The GPU and cluster benchmark scripts: what they do without their hardware, and their parsing."""

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_says_it_needs_a_gpu_and_measures_nothing(monkeypatch, tmp_path, capsys):
    gpu = load("gpu_throughput")
    monkeypatch.setattr(gpu, "cuda_devices", lambda: 0)

    def never(*args, **kwargs):
        raise AssertionError("nothing may run without a GPU")

    monkeypatch.setattr(gpu, "parity", never)
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


def test_the_gpu_benchmark_variants_are_options_of_the_parity_script():
    gpu = load("gpu_throughput")
    parity = (BENCHMARKS / "reference_parity.py").read_text()
    for flags in gpu.VARIANTS.values():
        for flag in flags:
            if flag.startswith("--"):
                assert f'"{flag}"' in parity, flag


def test_the_cluster_benchmark_reads_trial_overheads_from_tune_results(tmp_path):
    sweep = load("sweep_cluster")
    trial = tmp_path / "tune" / "_run_trial_1"
    trial.mkdir(parents=True)
    reports = [
        {"trial_id": "a1", "epoch": 1, "epoch_time": 2.0, "time_total_s": 9.0},
        {"trial_id": "a1", "epoch": 2, "epoch_time": 3.0, "time_total_s": 12.5, "config": {}},
        # A Train run's final report repeats the last epoch: not an epoch of its own.
        {"trial_id": "a1", "epoch": 2, "epoch_time": 3.0, "time_total_s": 13.0, "run_finished": 1},
    ]
    (trial / "result.json").write_text("\n".join(json.dumps(r) for r in reports) + "\n")
    best = {"trials": [{"trial_id": "a1", "finished": True, "error": None}]}
    (tmp_path / "best.json").write_text(json.dumps(best))
    (row,) = sweep.tune_results(tmp_path)
    assert row["epochs"] == 2 and row["finished"]
    assert row["seconds_in_tune"] == 13.0 and row["seconds_training"] == 5.0
    assert row["overhead_seconds"] == pytest.approx(8.0)


def test_the_objective_check_maps_our_weights_onto_the_reference_layout():
    import torch

    import multivae

    objective = load("objective_parity")
    parity = objective.parity
    shapes = {"m0": (3, 28, 28), "m1": (8,)}
    data = parity.PreparedData(
        dataset="x",
        setting="complete",
        folder=Path("."),
        export=Path("."),
        modalities=tuple(shapes),
        likelihoods={"m0": "laplace", "m1": "normal"},
        shapes=shapes,
        n_train=1,
    )
    model = multivae.create_model("mvtcae", parity.our_config(data, "mvtcae"))
    mapped = {k: tuple(v.shape) for k, v in objective.reference_names(model.state_dict()).items()}
    # The worker's modules: Linear-ReLU-Linear-ReLU-Linear encoders (flattening in forward),
    # Linear-ReLU-Linear decoders, as nn.Sequential indices.
    latent, hidden = parity.LATENT_DIM, parity.ENCODER_HIDDEN
    expected = {}
    for m, shape in shapes.items():
        size = int(torch.tensor(shape).prod())
        sizes = [size, *hidden, 2 * latent]
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            expected[f"encoders.{m}.network.{2 * index}.weight"] = (fan_out, fan_in)
            expected[f"encoders.{m}.network.{2 * index}.bias"] = (fan_out,)
        sizes = [latent, *parity.DECODER_HIDDEN, size]
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            expected[f"decoders.{m}.network.{2 * index}.weight"] = (fan_out, fan_in)
            expected[f"decoders.{m}.network.{2 * index}.bias"] = (fan_out,)
    assert mapped == expected


def test_the_objective_check_replays_our_steps_with_the_noise_given():
    import torch

    import multivae
    from multivae.data import Batch

    objective = load("objective_parity")
    config = {"latent_dim": 2, "modalities": {m: {"shape": [4]} for m in ("a", "b")}}
    torch.manual_seed(0)
    start = multivae.create_model("mvtcae", config).state_dict()
    batch = Batch(
        data={m: torch.randn(5, 4) for m in ("a", "b")},
        mask={m: torch.ones(5, dtype=torch.bool) for m in ("a", "b")},
    )
    noise = [torch.randn(5, 2), torch.randn(5, 2)]

    def replay(eps):
        model = multivae.create_model("mvtcae", config)
        model.load_state_dict(start)
        return objective.our_steps(model, [batch, batch], eps, lr=1e-3)[0]

    first = replay(noise)
    assert replay(noise) == first  # the draws are the noise given, nothing else
    assert replay([-noise[0], noise[1]])[0] != first[0]
    assert first[1] < first[0]  # an Adam step on the same batch lowers its loss
