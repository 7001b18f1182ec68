r"""Training samples/s on one GPU against MultiVae 1.0.3, and Ray Train DDP over 2 GPUs (NCCL).

Needs a CUDA GPU: without one it says so and exits with status 2, training nothing.

With one, it runs, on the parity benchmark's networks and data (``reference_parity.py``: the
3-modality poly-digits, MLP encoders 512-512 and decoders 512, latent 16, batch 64, Adam 1e-3),
every model both libraries have, 1 seed, for these variants of our side against the same
reference run:

* ``fp32``: the eager step;
* ``bf16``: ``training.precision: bf16`` (autocast to bfloat16);
* ``compile``: ``training.compile: true`` (``torch.compile``: Inductor + Triton; its steady rate,
  after the compiling epoch, is the figure that counts);
* ``cudagraphs``: ``compile`` + ``training.cuda_graphs: true`` (the compiled step replayed as
  CUDA graphs).

Then, on a machine with 2 GPUs or more, ``multivae train --ray --num-workers 2
--gpus-per-worker 1`` (NCCL DDP) against 1 worker on the same run, as samples/s.

Usage::

    python benchmarks/gpu_throughput.py [--models mvae mopoe] [--epochs 3] \
        [--out benchmarks/results/gpu_throughput.json]

Target (issue 13): at least 5x the reference's samples/s on the same GPU and networks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "fp32": [],
    "bf16": ["--our-precision", "bf16"],
    "compile": ["--our-compile"],
    "cudagraphs": ["--our-compile", "--our-cuda-graphs"],
}


def cuda_devices() -> int:
    """CUDA GPUs torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parity(args: argparse.Namespace, variant: str, sides: list[str], out: Path) -> dict[str, Any]:
    """One parity run on CUDA; returns its summary rows keyed by model."""
    command = [
        sys.executable,
        str(HERE / "reference_parity.py"),
        "--device",
        "cuda",
        "--datasets",
        "poly-digits",
        "--settings",
        "complete",
        "--seeds",
        "0",
        "--epochs",
        str(args.epochs),
        "--nll-k",
        "0",
        "--unconditional",
        "0",
        "--models",
        *args.models,
        "--sides",
        *sides,
        "--out",
        str(out),
        *VARIANTS[variant],
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    document = json.loads(out.read_text())
    return {row["model"]: row for row in document["summary"]}


def ddp_rate(workers: int, epochs: int, folder: Path) -> float:
    """Training samples/s of ``multivae train --ray`` with ``workers`` one-GPU workers."""
    from multivae.data.datasets import prepare_builtin

    data = folder / "poly"
    if not data.exists():
        prepare_builtin("poly-digits", data, n_train=10000, n_val=1000, n_test=1000)
    out = folder / f"ddp-{workers}"
    command = [
        str(Path(sys.executable).parent / "multivae"),
        "train",
        "--config",
        str(HERE.parent / "examples" / "mopoe.yaml"),
        "--ray",
        "--num-workers",
        str(workers),
        "--gpus-per-worker",
        "1",
        "--set",
        f"data={data}",
        "--set",
        "builtin=null",
        "--set",
        f"output_dir={out}",
        "--set",
        f"training.epochs={epochs}",
        "--set",
        "mlflow.enabled=false",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    history = json.loads((out / "metrics.json").read_text())["history"]
    # The first epoch starts the workers and the NCCL group: the later ones are the rate.
    rates = [float(r["samples_per_s"]) for r in history[1:] or history]
    return sum(rates) / len(rates) * workers


def main(argv: list[str] | None = None) -> int:
    """Run every variant and the DDP comparison; write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["jmvae", "mvae", "mopoe", "mvtcae"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "gpu_throughput.json"))
    args = parser.parse_args(argv)
    gpus = cuda_devices()
    if gpus == 0:
        print(
            "benchmarks/gpu_throughput.py needs a CUDA GPU: torch.cuda.is_available() is False "
            "here. Run it on a GPU machine; nothing was measured.",
            file=sys.stderr,
        )
        return 2
    import torch

    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="multivae-gpu-") as tmp:
        work = Path(tmp)
        reference = parity(args, "fp32", ["reference", "ours"], work / "fp32.json")
        for model, row in reference.items():
            ref_rate = float(row["reference"]["samples_per_s"][0])
            rows[model] = {"reference_samples_per_s": ref_rate}
            ours = float(row["ours"]["steady_samples_per_s"][0])
            rows[model]["fp32"] = {"samples_per_s": ours, "ratio": ours / ref_rate}
        for variant in ("bf16", "compile", "cudagraphs"):
            for model, row in parity(args, variant, ["ours"], work / f"{variant}.json").items():
                ours = float(row["ours"]["steady_samples_per_s"][0])
                ref_rate = rows[model]["reference_samples_per_s"]
                rows[model][variant] = {"samples_per_s": ours, "ratio": ours / ref_rate}
        ddp = None
        if gpus >= 2:
            one, two = ddp_rate(1, args.epochs, work), ddp_rate(2, args.epochs, work)
            ddp = {"one_worker": one, "two_workers": two, "scaling": two / one}
    document = {
        "command": "python benchmarks/gpu_throughput.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0),
        "gpus": gpus,
        "torch": torch.__version__,
        "epochs": args.epochs,
        "models": rows,
        "ddp_mopoe_samples_per_s": ddp,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
