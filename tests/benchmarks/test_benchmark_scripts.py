"""The GPU and cluster benchmark scripts: what they do without their hardware, and their parsing."""

import importlib.util
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
