"""Do the project and MultiVae 1.0.3 train the same model? One point, then a few steps.

``reference_parity.py`` compares the two libraries after whole trainings, where seeds, data
order and initial weights differ. This script removes every such difference for one model and
measures what is left: both sides start from **the same weights** (the project's, copied into
the reference's modules under its parameter names), see **the same batches** in the same order
and **the same reparameterisation noise** (the reference's latent draw is replaced by
``mean + std * noise`` with the noise the project's side drew), and take Adam steps with the
same learning rate. It reports

* the loss of the first step on both sides and their relative difference;
* the largest relative difference of any parameter's gradient at that point (norm of the
  difference over norm of the project's gradient);
* the losses of every later step on both sides (after step 1 the weights move: float rounding
  and the two Adam implementations, fused and for-loop, compound step by step).

If the objectives are the same function of the weights, the first loss and the gradients agree
to float32 rounding (about 1e-6 relative) and the trajectories stay close for many steps; a
difference in the objective shows at step 1.

Models: those whose training step draws exactly one Gaussian latent tensor per step on both
sides, so the noise can be shared: ``mvtcae``.

Usage::

    python benchmarks/objective_parity.py --model mvtcae --dataset poly-digits --steps 50
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_parity as parity

SUPPORTED = ("mvtcae",)


def reference_names(state: dict) -> dict:
    """The project's parameter names as the reference worker's modules name them.

    Our encoder MLP starts with a ``Flatten`` (``network.0``), the reference's flattens in
    ``forward``: its Linear layers are one index lower. Decoders match index for index; the
    likelihoods' fixed log-scales have no counterpart.
    """
    renamed = {}
    for name, value in state.items():
        if name.startswith("likelihoods."):
            continue
        match = re.fullmatch(r"encoders\.(\w+)\.network\.(\d+)\.(weight|bias)", name)
        if match:
            modality, index, kind = match.groups()
            name = f"encoders.{modality}.network.{int(index) - 1}.{kind}"
        renamed[name] = value
    return renamed


def our_steps(model, batches, noise, lr):
    """Losses of each step and the first step's gradients, on our side, with the given noise."""
    import torch

    from multivae.nn import posteriors

    queue: list[torch.Tensor] = []

    def draw(self, n_samples):
        assert n_samples == 1
        return self.mean + torch.exp(0.5 * self.logvar) * queue.pop(0).unsqueeze(0)

    original = posteriors.GaussianPosterior.rsample
    posteriors.GaussianPosterior.rsample = draw
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        losses, gradients = [], {}
        for step, (batch, eps) in enumerate(zip(batches, noise, strict=True)):
            queue[:] = [eps]
            optimizer.zero_grad()
            loss = model(batch).loss
            loss.backward()
            losses.append(float(loss.detach()))
            if step == 0:
                gradients = {
                    name: p.grad.detach().clone()
                    for name, p in model.named_parameters()
                    if p.grad is not None
                }
            optimizer.step()
    finally:
        posteriors.GaussianPosterior.rsample = original
    return losses, gradients


def main(argv=None) -> None:
    import torch

    import multivae
    from multivae.data import MultimodalDataset, make_dataloader

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=SUPPORTED, default="mvtcae")
    parser.add_argument("--dataset", choices=parity.DATASETS, default="poly-digits")
    parser.add_argument("--setting", choices=list(parity.SETTINGS), default="complete")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=parity.DEFAULT_WORK)
    parser.add_argument("--venv", type=Path, default=parity.DEFAULT_VENV)
    parser.add_argument(
        "--out", type=Path, default=parity.DEFAULT_RESULTS / "objective_parity.json"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    python = parity.ensure_reference_venv(args.venv)
    n_train = args.n_train or parity.DEFAULT_N_TRAIN[args.dataset]
    sizes = {"n_train": n_train, "n_val": n_train // 10, "n_test": 2000}
    data = parity.prepare_data(args.work, args.dataset, args.setting, sizes)
    if args.setting != "complete":
        raise SystemExit("objective_parity: complete data only (the reference masks in place)")

    torch.manual_seed(args.seed)
    model = multivae.create_model(args.model, parity.our_config(data, args.model))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loader = make_dataloader(
        MultimodalDataset(data.folder, "train"), args.batch_size, shuffle=True, seed=args.seed
    )
    batches = [batch for _, batch in zip(range(args.steps), loader, strict=False)]
    noise = [torch.randn(len(b), parity.LATENT_DIM) for b in batches]
    ours, our_gradients = our_steps(model, batches, noise, args.lr)

    with tempfile.TemporaryDirectory(prefix="multivae-objective-") as tmp:
        steps_file = Path(tmp) / "steps.pt"
        torch.save(
            {
                "state": reference_names(initial),
                "batches": [{m: b.data[m] for m in data.modalities} for b in batches],
                "noise": noise,
            },
            steps_file,
        )
        job = {
            "project_root": str(parity.PROJECT_ROOT),
            "data": str(data.export),
            "out": str(Path(tmp) / "out"),
            "model": args.model,
            "seed": args.seed,
            "setting": data.setting,
            "modalities": list(data.modalities),
            "likelihoods": data.likelihoods,
            "scales": dict.fromkeys(data.modalities, 1.0),
            "latent_dim": parity.LATENT_DIM,
            "private_dim": 0,
            "encoder_hidden": parity.ENCODER_HIDDEN,
            "decoder_hidden": parity.DECODER_HIDDEN,
            "joint_encoder": parity.JOINT_ENCODER,
            "config": {},
            "epochs": 1,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "threads": 1,
            "steps": str(steps_file),
        }
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        done = subprocess.run(
            [str(python), "-I", str(parity.WORKER), str(Path(tmp) / "job.json")],
            cwd=tmp,
            env=parity._clean_env(),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"reference worker failed:\n{done.stderr[-3000:]}")
        reference = torch.load(job["out"] + ".pt", weights_only=True)

    theirs = reference["losses"]
    ref_gradients = reference["gradients"]
    ours_by_reference_name = reference_names(our_gradients)
    missing = sorted(set(ours_by_reference_name) ^ set(ref_gradients))
    gradient_gap = max(
        float((ours_by_reference_name[n] - ref_gradients[n]).norm() / ref_gradients[n].norm())
        for n in ref_gradients
        if n in ours_by_reference_name
    )
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "setting": args.setting,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "first_loss": {"ours": ours[0], "reference": theirs[0]},
        "first_loss_relative_difference": abs(ours[0] - theirs[0]) / abs(theirs[0]),
        "largest_relative_gradient_difference": gradient_gap,
        "parameters_without_counterpart": missing,
        "losses": {"ours": ours, "reference": theirs},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"{args.model} on {args.dataset} ({args.setting}), the same weights, batches and noise:\n"
        f"  step 1 loss: ours {ours[0]:.6g}, reference {theirs[0]:.6g} "
        f"(relative difference {result['first_loss_relative_difference']:.2e})\n"
        f"  step 1 gradients: largest relative difference {gradient_gap:.2e}"
        + (f"; without counterpart {missing}" if missing else "")
    )
    for step in sorted({0, 1, 4, 9, 19, 49, 99, args.steps - 1}):
        if step < args.steps:
            print(f"  step {step + 1:>4}: ours {ours[step]:.6g}  reference {theirs[step]:.6g}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
