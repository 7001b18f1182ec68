"""Reference side of ``benchmarks/reference_parity.py``: one job on MultiVae 1.0.3.

This file runs only with the reference's own interpreter (``benchmarks/.reference-venv``), started
by ``reference_parity.py`` as ``python -I reference_parity_worker.py JOB.json``: ``-I`` keeps the
script's folder, ``PYTHONPATH`` and the user site out of ``sys.path``, so the ``multivae`` that
imports is MultiVae 1.0.3 from the reference venv and never this project's package (the worker
checks that and stops otherwise). It imports nothing from this project.

A job (JSON) names the data (an ``.npz`` exported by the main script from the project's
built-in dataset), one model, one seed and the training settings. The worker

1. builds the model with networks written here to match the project's ``mlp`` encoder and
   decoder layer for layer (encoder: Linear-ReLU per hidden size, then one linear layer giving
   mean and log-variance; decoder: Linear-ReLU, then a linear output layer, no sigmoid), and for
   JMVAE, TELBO and JNF a joint encoder matching the project's (one such feature MLP per
   modality, the features concatenated, for TELBO and JNF with one presence bit per modality,
   constant 1 on complete data, then ReLU and an MLP head; sizes from the job). JNF's flows are
   MultiVae's default (pythae's MAF). CVAE gets the project's CVAE networks: one feature MLP
   per modality, shared by the posterior (a joint encoder over every modality, with presence
   bits) and the main modality's conditional decoder (an MLP on the latent, the conditioning
   modalities' features and their presence bits);
2. trains it with the reference's ``BaseTrainer``, or for the two-stage TELBO and JNF its
   ``MultistageTrainer`` (stage 1 is the config's ``warmup``, set by the job), with Adam, the
   job's learning rate, batch size and epochs, no evaluation set, timing only the trainer's
   ``train_step`` calls;
3. writes, for the complete test split, the generations of the job's (subset, targets) pairs
   (``model.predict``; by default every modality outside every conditioning subset),
   unconditional samples (``generate_from_prior`` then ``decode``) and the joint NLL
   (``compute_joint_nll``) on the first test samples, to ``OUT.npz`` and ``OUT.json``. The job
   asks no samples and no NLL of CVAE (MultiVae's CVAE has neither).

Everything the main script needs comes back in those two files; a failure in an optional part
(a subset the model refuses, samples, NLL) is reported in the JSON instead of stopping the job.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _check_reference_import(project_root: str) -> object:
    """Import MultiVae 1.0.3 and make sure it is the reference venv's copy."""
    root = Path(project_root).resolve()
    for entry in sys.path:
        resolved = Path(entry or os.getcwd()).resolve()
        if resolved == root or (resolved / "multivae" / "registry.py").exists():
            raise SystemExit(
                f"reference worker: sys.path holds {resolved}, where the project's multivae "
                "package could shadow the reference; run this file with the reference venv's "
                "python -I from outside the project"
            )
    import multivae

    location = Path(multivae.__file__).resolve()
    prefix = Path(sys.prefix).resolve()
    if prefix not in location.parents:
        raise SystemExit(
            f"reference worker: multivae imported from {location}, outside the reference "
            f"environment {prefix}"
        )
    from importlib.metadata import version

    found = version("multivae")
    if found != "1.0.3":
        raise SystemExit(f"reference worker: expected multivae 1.0.3, found {found}")
    return multivae


def _replay_steps(job: dict, model: object, dataset_class: type) -> None:
    """``objective_parity.py``'s job: given weights, batches and noise, losses and gradients.

    The job's ``steps`` file holds the project's initial weights (already under this model's
    parameter names), and per step a batch and the standard normal noise of the one latent draw;
    the model's draw is replaced by ``mean + std * noise``. Each step: the loss, every
    parameter's gradient, then one Adam step (PyTorch's default, lr of the job). Writes the
    losses and the first step's gradients to ``OUT.pt``.
    """
    import importlib

    import torch

    given = torch.load(job["steps"], weights_only=True)
    model.load_state_dict(given["state"], strict=True)  # type: ignore[attr-defined]
    module = importlib.import_module(type(model).__module__)
    noise: list[torch.Tensor] = []

    def draw(mu, log_var, N=1, return_mean=False, flatten=False):
        assert N == 1 and not return_mean
        return mu + torch.exp(0.5 * log_var) * noise.pop(0)

    module.rsample_from_gaussian = draw
    optimizer = torch.optim.Adam(model.parameters(), lr=float(job["lr"]))  # type: ignore[attr-defined]
    losses, gradients = [], {}
    for step, (batch, eps) in enumerate(zip(given["batches"], given["noise"], strict=True)):
        noise[:] = [eps]
        optimizer.zero_grad()
        loss = model(dataset_class(data=batch)).loss  # type: ignore[operator]
        loss.backward()
        losses.append(float(loss))
        if step == 0:
            gradients = {
                name: p.grad.detach().clone()
                for name, p in model.named_parameters()  # type: ignore[attr-defined]
                if p.grad is not None
            }
        optimizer.step()
    torch.save({"losses": losses, "gradients": gradients}, job["out"] + ".pt")


def main() -> None:
    """Run the job named on the command line."""
    job = json.loads(Path(sys.argv[1]).read_text())
    _check_reference_import(job["project_root"])

    import numpy as np
    import torch
    from multivae.data.datasets.base import IncompleteDataset, MultimodalBaseDataset
    from multivae.models.nn.base_architectures import (
        BaseConditionalDecoder,
        BaseJointEncoder,
        BaseMultilatentEncoder,
    )
    from multivae.trainers import (
        BaseTrainer,
        BaseTrainerConfig,
        MultistageTrainer,
        MultistageTrainerConfig,
    )
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder
    from torch import nn

    from multivae.models import (
        CMVAE,
        CRMVAE,
        CVAE,
        DMVAE,
        JMVAE,
        JNF,
        MMVAE,
        MVAE,
        MVTCAE,
        TELBO,
        CMVAEConfig,
        CRMVAEConfig,
        CVAEConfig,
        DMVAEConfig,
        JMVAEConfig,
        JNFConfig,
        MMVAEConfig,
        MMVAEPlus,
        MMVAEPlusConfig,
        MoPoE,
        MoPoEConfig,
        MVAEConfig,
        MVTCAEConfig,
        TELBOConfig,
    )

    logging.disable(logging.INFO)

    models = {
        "jmvae": (JMVAE, JMVAEConfig),
        "mvae": (MVAE, MVAEConfig),
        "mmvae": (MMVAE, MMVAEConfig),
        "mopoe": (MoPoE, MoPoEConfig),
        "mvtcae": (MVTCAE, MVTCAEConfig),
        "mmvaeplus": (MMVAEPlus, MMVAEPlusConfig),
        "dmvae": (DMVAE, DMVAEConfig),
        "crmvae": (CRMVAE, CRMVAEConfig),
        "cmvae": (CMVAE, CMVAEConfig),
        "telbo": (TELBO, TELBOConfig),
        "jnf": (JNF, JNFConfig),
        "cvae": (CVAE, CVAEConfig),
    }
    # Given the project's joint encoder (MultiVae's default joint encoder is its own).
    joint_models = ("jmvae", "telbo", "jnf")
    # Trained in two stages by MultiVae's MultistageTrainer (stage 1: the config's warmup).
    staged_models = ("telbo", "jnf")

    def mlp(sizes: list[int]) -> nn.Sequential:
        # Linear-ReLU between every pair of sizes, a bare Linear last: the project's _mlp.
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes[:-1]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        return nn.Sequential(*layers)

    class Encoder(BaseEncoder):
        """Flatten, MLP, split the output into mean and log-variance."""

        def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: list[int]) -> None:
            BaseEncoder.__init__(self)
            self.input_size = math.prod(shape)
            self.latent_dim = latent_dim
            self.network = mlp([self.input_size, *hidden, 2 * latent_dim])

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mean, log_var = self.network(x.reshape(x.shape[0], -1).float()).chunk(2, dim=-1)
            # Copies, not views of the split: MultiVae's MVAE writes inf into the log-variances
            # of absent experts in place, which autograd refuses on views of one output.
            return ModelOutput(embedding=mean.clone(), log_covariance=log_var.clone())

    class PrivateEncoder(BaseMultilatentEncoder):
        """The same MLP with shared and private halves: [mean_z, mean_w | logvar_z, logvar_w]."""

        def __init__(
            self, shape: tuple[int, ...], latent_dim: int, private_dim: int, hidden: list[int]
        ) -> None:
            BaseMultilatentEncoder.__init__(self)
            self.input_size = math.prod(shape)
            self.latent_dim = latent_dim
            self.style_dim = private_dim
            self.network = mlp([self.input_size, *hidden, 2 * (latent_dim + private_dim)])

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mean, log_var = self.network(x.reshape(x.shape[0], -1).float()).chunk(2, dim=-1)
            d = self.latent_dim
            return ModelOutput(
                embedding=mean[..., :d].clone(),
                log_covariance=log_var[..., :d].clone(),
                style_embedding=mean[..., d:].clone(),
                style_log_covariance=log_var[..., d:].clone(),
            )

    class Decoder(BaseDecoder):
        """MLP from the latent to the flattened modality, reshaped; accepts leading dims."""

        def __init__(self, latent_dim: int, shape: tuple[int, ...], hidden: list[int]) -> None:
            BaseDecoder.__init__(self)
            self.shape = tuple(shape)
            self.network = mlp([latent_dim, *hidden, math.prod(shape)])

        def forward(self, z: torch.Tensor) -> ModelOutput:
            out = self.network(z)
            return ModelOutput(reconstruction=out.reshape(*z.shape[:-1], *self.shape))

    def features_of(networks: nn.ModuleDict, x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each network on its flattened modality, in the networks' order."""
        return [net(x[m].reshape(x[m].shape[0], -1).float()) for m, net in networks.items()]

    def presence(features: list[torch.Tensor]) -> torch.Tensor:
        """One presence bit per modality, all 1: these jobs' data is complete."""
        first = features[0]
        return torch.ones(first.shape[0], len(features), dtype=first.dtype, device=first.device)

    class JointEncoder(BaseJointEncoder):
        """The project's joint encoders: feature MLPs, concat, ReLU, MLP head.

        JMVAE's concatenates the features alone; TELBO's and JNF's (the project's masked joint
        encoder) and CVAE's posterior head append one presence bit per modality, constant 1
        here (complete data). ``features``: the feature network of each modality, or ``None``
        to build them (``hidden`` then ``feature_dim``) from ``shapes``.
        """

        def __init__(
            self,
            shapes: dict[str, tuple[int, ...]],
            latent_dim: int,
            hidden: list[int],
            feature_dim: int,
            head_hidden: list[int],
            presence_bits: bool = False,
            features: dict[str, nn.Module] | None = None,
        ) -> None:
            BaseJointEncoder.__init__(self)
            self.latent_dim = latent_dim
            self.presence_bits = presence_bits
            if features is None:
                features = {m: mlp([math.prod(s), *hidden, feature_dim]) for m, s in shapes.items()}
            self.features = nn.ModuleDict(features)
            width = len(shapes) * (feature_dim + int(presence_bits))
            self.head = nn.Sequential(nn.ReLU(), mlp([width, *head_hidden, 2 * latent_dim]))

        def forward(self, x: dict[str, torch.Tensor]) -> ModelOutput:
            features = features_of(self.features, x)
            if self.presence_bits:
                features.append(presence(features))
            mean, log_var = self.head(torch.cat(features, dim=-1)).chunk(2, dim=-1)
            return ModelOutput(embedding=mean.clone(), log_covariance=log_var.clone())

    class ConditionalDecoder(BaseConditionalDecoder):
        """The project's CVAE decoder: an MLP on ``[z, features of C, presence bits of C]``.

        ``features`` are the conditioning modalities' feature networks, the same modules as
        the posterior's (the project shares one feature network per modality).
        """

        def __init__(
            self,
            features: dict[str, nn.Module],
            latent_dim: int,
            feature_dim: int,
            shape: tuple[int, ...],
            hidden: list[int],
        ) -> None:
            BaseConditionalDecoder.__init__(self)
            self.latent_dim = latent_dim
            self.shape = tuple(shape)
            self.features = nn.ModuleDict(features)
            width = latent_dim + len(features) * (feature_dim + 1)
            self.network = mlp([width, *hidden, math.prod(shape)])

        def forward(self, z: torch.Tensor, cond_mods: dict[str, torch.Tensor]) -> ModelOutput:
            features = features_of(self.features, cond_mods)
            inputs = torch.cat([z, *features, presence(features)], dim=-1)
            out = self.network(inputs)
            return ModelOutput(reconstruction=out.reshape(z.shape[0], *self.shape))

    def timed(trainer_class: type) -> type:
        """A trainer class whose train_step calls are timed (the rest of train() is not)."""

        class TimedTrainer(trainer_class):  # type: ignore[misc, valid-type]
            def train_step(self, epoch: int):  # type: ignore[no-untyped-def]
                began = time.perf_counter()
                result = super().train_step(epoch)
                seconds = time.perf_counter() - began
                self.train_seconds = getattr(self, "train_seconds", 0.0) + seconds
                self.epoch_seconds = [*getattr(self, "epoch_seconds", []), seconds]
                return result

        return TimedTrainer

    name = job["model"]
    seed = int(job["seed"])
    latent_dim = int(job["latent_dim"])
    private_dim = int(job.get("private_dim") or 0)
    arrays = np.load(job["data"])
    modalities = list(job["modalities"])
    shapes = {m: tuple(arrays[f"train__{m}"].shape[1:]) for m in modalities}
    incomplete = job["setting"] != "complete"

    torch.set_num_threads(int(job.get("threads") or torch.get_num_threads()))
    random.seed(seed)
    # The reference draws from NumPy's global generator (MVAE subsets, MMVAE's expert choice).
    np.random.seed(seed)  # noqa: NPY002
    torch.manual_seed(seed)

    model_class, config_class = models[name]
    if name == "cvae":
        # The project's CVAE: one feature network per modality (its encoder MLP, 2 latent_dim
        # outputs) shared by the posterior head (over every modality of {y} + C) and y's
        # decoder (over z and the features of C).
        main_modality = job["config"]["main_modality"]
        conditions = list(job["config"]["conditioning_modalities"])
        feature_dim = 2 * latent_dim
        features = {
            m: mlp([math.prod(shapes[m]), *job["encoder_hidden"], feature_dim])
            for m in modalities
            if m == main_modality or m in conditions
        }
        joint = job["joint_encoder"]
        encoder = JointEncoder(
            {m: shapes[m] for m in features},
            latent_dim,
            job["encoder_hidden"],
            feature_dim,
            joint["hidden"],
            presence_bits=True,
            features=features,
        )
        decoder = ConditionalDecoder(
            {m: features[m] for m in conditions},
            latent_dim,
            feature_dim,
            shapes[main_modality],
            job["decoder_hidden"],
        )
        config = config_class(
            latent_dim=latent_dim,
            input_dims={m: shapes[m] for m in modalities},
            decoder_dist=job["likelihoods"][main_modality],
            decoder_dist_params={"scale": float(job["scales"][main_modality])},
            **job["config"],
        )
        model = model_class(config, encoder=encoder, decoder=decoder)
    else:
        if private_dim:
            encoders = {
                m: PrivateEncoder(shapes[m], latent_dim, private_dim, job["encoder_hidden"])
                for m in modalities
            }
        else:
            encoders = {
                m: Encoder(shapes[m], latent_dim, job["encoder_hidden"]) for m in modalities
            }
        decoders = {
            m: Decoder(latent_dim + private_dim, shapes[m], job["decoder_hidden"])
            for m in modalities
        }
        config = config_class(
            n_modalities=len(modalities),
            latent_dim=latent_dim,
            input_dims={m: shapes[m] for m in modalities},
            decoders_dist={m: job["likelihoods"][m] for m in modalities},
            decoder_dist_params={m: {"scale": float(job["scales"][m])} for m in modalities},
            **job.get("config", {}),
        )
        extra = {}
        if name in joint_models:
            joint = job["joint_encoder"]
            extra["joint_encoder"] = JointEncoder(
                shapes,
                latent_dim,
                job["encoder_hidden"],
                joint["feature_dim"],
                joint["hidden"],
                presence_bits=bool(joint.get("presence_bits", False)),
            )
        model = model_class(config, encoders=encoders, decoders=decoders, **extra)
    # Keep the weights of the last epoch, as the project's side does (keep="last"): the
    # reference keeps the last model up to start_keep_best_epoch, then the best on train.
    model.start_keep_best_epoch = int(job["epochs"]) + 1
    if job.get("steps"):
        _replay_steps(job, model, MultimodalBaseDataset)
        return

    def tensors(split: str) -> dict[str, torch.Tensor]:
        return {m: torch.from_numpy(arrays[f"{split}__{m}"]) for m in modalities}

    labels = torch.from_numpy(arrays["train__label"])
    if incomplete:
        masks = {m: torch.from_numpy(arrays[f"train__mask__{m}"]).bool() for m in modalities}
        train_set = IncompleteDataset(data=tensors("train"), masks=masks, labels=labels)
    else:
        train_set = MultimodalBaseDataset(data=tensors("train"), labels=labels)

    device = "cuda" if job.get("device") == "cuda" else "cpu"
    report: dict[str, object] = {"model": name, "seed": seed, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="multivae-ref-") as tmp:
        staged = name in staged_models
        trainer_config = (MultistageTrainerConfig if staged else BaseTrainerConfig)(
            output_dir=tmp,
            num_epochs=int(job["epochs"]),
            learning_rate=float(job["lr"]),
            per_device_train_batch_size=int(job["batch_size"]),
            per_device_eval_batch_size=int(job["batch_size"]),
            seed=seed,
            no_cuda=device != "cuda",
            steps_saving=None,
            steps_predict=None,
        )
        trainer_class = timed(MultistageTrainer if staged else BaseTrainer)
        trainer = trainer_class(model, train_set, None, trainer_config)
        trainer.train()
        model = trainer._best_model
    seconds = float(trainer.train_seconds)
    n_train = len(train_set)
    report["train_seconds"] = seconds
    report["epoch_seconds"] = [float(t) for t in trainer.epoch_seconds]
    report["samples_per_s"] = n_train * int(job["epochs"]) / seconds
    model.eval()
    model = model.to(device)
    model.device = device

    test = {m: t.to(device) for m, t in tensors("test").items()}
    n_test = len(next(iter(test.values())))
    chunk = int(job.get("generation_chunk", 500))
    outputs: dict[str, np.ndarray] = {}
    # (subset, targets) to generate: the job's list, or every modality outside each subset.
    generations = job.get("generations") or [
        [cond, [m for m in modalities if m not in cond]] for cond in job["subsets"]
    ]
    began = time.perf_counter()
    with torch.no_grad():
        for cond, targets in generations:
            parts: dict[str, list[np.ndarray]] = {m: [] for m in targets}
            try:
                for start in range(0, n_test, chunk):
                    rows = {m: t[start : start + chunk] for m, t in test.items()}
                    predicted = model.predict(
                        MultimodalBaseDataset(data=rows), cond_mod=list(cond), gen_mod=targets
                    )
                    for m in targets:
                        parts[m].append(predicted[m].float().cpu().numpy())
            except Exception:
                # One subset the model cannot condition on leaves the others' scores.
                report["errors"][f"predict {'+'.join(cond)}"] = traceback.format_exc(limit=3)
                continue
            for m in targets:
                outputs[f"cond={'+'.join(cond)}|gen={m}"] = np.concatenate(parts[m])
        report["generation_seconds"] = time.perf_counter() - began

        n_samples = int(job.get("unconditional", 0))
        if n_samples:
            try:
                latent = model.generate_from_prior(n_samples)
                decoded = model.decode(latent, modalities)
                for m in modalities:
                    outputs[f"sample|gen={m}"] = decoded[m].float().cpu().numpy()
            except Exception:
                report["errors"]["unconditional"] = traceback.format_exc(limit=3)

    nll = job.get("nll")
    if nll:
        rows = {m: t[: int(nll["n"])] for m, t in test.items()}
        began = time.perf_counter()
        try:
            total = model.compute_joint_nll(
                MultimodalBaseDataset(data=rows), K=int(nll["k"]), batch_size_K=100
            )
            report["joint_nll"] = float(total) / len(next(iter(rows.values())))
        except Exception:
            report["errors"]["joint_nll"] = traceback.format_exc(limit=3)
        report["nll_seconds"] = time.perf_counter() - began

    import multivae

    report["library"] = {"multivae": multivae.__file__, "torch": torch.__version__}
    np.savez(job["out"] + ".npz", **outputs)
    Path(job["out"] + ".json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
