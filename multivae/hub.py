"""The Hugging Face Hub: model folders downloaded from it and published to it.

A Hub model repository holds the files of a model folder (:mod:`multivae.model_folder`):
:func:`resolve_model_folder` fetches exactly those files of a repository id (at a pinned
``revision`` when given), and nothing else. :func:`hub_folder` writes the folder a push uploads
(the model's files, a model card and ``metrics.json``) and :func:`push_to_hub` uploads it.

The card (:func:`model_card`) is a :class:`huggingface_hub.ModelCard`: a YAML block with the
metadata the Hub reads (``license``, ``library_name``, ``tags``, ``datasets`` and a
``model-index`` of the evaluation's scalar results, built from
:class:`huggingface_hub.EvalResult`), then the model, its evaluation, its training data, intended
use and limits. This module never imports a model: the model whose card is written is loaded
through the registry.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multivae.io import staged_folder
from multivae.model_folder import (
    LIBRARY_NAME,
    MODEL_FOLDER_FILES,
    card_text,
    load_model_folder,
    model_card_body,
    model_card_tags,
    model_fingerprint,
)
from multivae.names import METRICS_FILE, MODEL_CARD_FILE, MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE

if TYPE_CHECKING:
    from huggingface_hub import EvalResult

    from multivae.models.base import MultimodalVAE


def resolve_model_folder(
    path_or_repo_id: str | os.PathLike[str], revision: str | None = None
) -> Path:
    """A local model folder: ``path_or_repo_id`` itself, or a Hub repository's files, fetched.

    Only the files of a model folder are downloaded (into the Hub's cache).

    Args:
        path_or_repo_id: A model folder, or a Hub repository id ``owner/name``.
        revision: For a repository: the branch, tag or commit hash to fetch (the default
            branch when ``None``). A commit hash pins the exact files; a branch or tag names
            whatever it points to when fetched.

    Raises:
        ValueError: For a ``revision`` with a local folder (a folder has no revisions), or an
            empty one.
        FileNotFoundError: For a path that is neither a folder nor a repository id, a
            repository the Hub does not show (absent, private without a token, or gated), or
            a revision the repository does not have.
        ConnectionError: When the Hub cannot be reached and the repository is not cached.
    """
    path = Path(path_or_repo_id)
    if revision is not None and not revision.strip():
        raise ValueError(
            f"{path_or_repo_id}: expected a revision (a branch, tag or commit hash), found an "
            f"empty text {revision!r}"
        )
    if path.is_dir():
        if revision is not None:
            raise ValueError(
                f"{path_or_repo_id}: a local model folder, given revision {revision!r}; a "
                "revision names a version of a Hub repository, a folder has none: drop the "
                "revision, or give the repository id 'owner/name'"
            )
        return path
    if path.exists() or str(path_or_repo_id).count("/") != 1:
        raise FileNotFoundError(
            f"{path_or_repo_id}: expected a model folder or a Hub repository id 'owner/name'"
        )
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(path_or_repo_id)
    try:
        return Path(
            snapshot_download(
                repo_id=repo_id, revision=revision, allow_patterns=list(MODEL_FOLDER_FILES)
            )
        )
    except HFValidationError:
        raise FileNotFoundError(
            f"{repo_id}: expected a model folder or a Hub repository id 'owner/name', found neither"
        ) from None
    except GatedRepoError:
        raise FileNotFoundError(
            f"{repo_id}: a gated Hub repository; accept its conditions on the Hub and set "
            "HF_TOKEN, or give a local model folder"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{repo_id}: expected a model folder or a Hub repository, found neither: no such "
            "folder here, and the Hub shows no such repository (a private one needs HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(
            f"{repo_id}: the Hub repository has no revision {revision!r}; expected one of its "
            "branches, tags or commit hashes"
        ) from None
    except LocalEntryNotFoundError as error:
        cause = (str(error).splitlines() or [type(error).__name__])[0].removeprefix("Got: ")
        network = any(word in cause for word in ("ConnectError", "Timeout", "Offline"))
        what = "could not reach the Hub" if network else "the Hub did not give the repository"
        at = "" if revision is None else f" at revision {revision!r}"
        raise ConnectionError(
            f"{repo_id}: {what} ({constants.ENDPOINT}: {cause}), and it is not in the local "
            f"cache{at}; expected a model folder, or a Hub repository you can read"
        ) from None
    except HfHubHTTPError as error:
        answer = (str(error).splitlines() or [type(error).__name__])[0]
        raise ConnectionError(
            f"{repo_id}: the Hub ({constants.ENDPOINT}) answered {answer}"
        ) from None


# ------------------------------------------------------------------------------------------------
# Publishing: the folder pushed to the Hub, and the push

HUB_FILES = (MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE)


def _metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows of the headline metrics present in an evaluation document."""
    rows: list[tuple[str, str]] = []
    coherence = metrics.get("coherence") or {}
    for size, value in (coherence.get("per_size") or {}).items():
        rows.append((f"coherence from {size} modalit{'y' if str(size) == '1' else 'ies'}", value))
    if "mean" in coherence:
        rows.append(("coherence, mean over all subsets", coherence["mean"]))
    likelihood = metrics.get("likelihood") or {}
    joint = likelihood.get("joint") or {}
    if "mean" in joint:
        rows.append(
            (
                f"joint NLL (nats, K={likelihood.get('k')}, {joint.get('count')} test samples)",
                f"{joint['mean']:.2f} ± {joint.get('std_error', float('nan')):.2f}",
            )
        )
    for kind, entry in (metrics.get("samplers") or {}).items():
        if "joint_coherence" in entry:
            rows.append((f"joint coherence ({kind} sampler)", entry["joint_coherence"]))
    clustering = (metrics.get("latents") or {}).get("clustering") or {}
    for key in ("accuracy", "nmi", "ari"):
        if key in clustering:
            rows.append((f"latent k-means {key}", clustering[key]))
    for name, entry in (metrics.get("classifiers") or {}).get("test_accuracy", {}).items():
        if entry is not None:
            rows.append((f"judging classifier accuracy ({name})", entry))
    return [
        (name, f"{value:.4f}" if isinstance(value, float) else str(value)) for name, value in rows
    ]


DEFAULT_LICENSE = "apache-2.0"
"""The card's ``license`` unless the publisher gives one: the library's own (Apache-2.0).

The license of published weights is the publisher's choice, not the library's: it may be bound
by the training data's terms. Give the Hub's id of the one that applies
(https://huggingface.co/docs/hub/repositories-licenses), or ``other`` with ``license_name`` and
``license_link`` in a card edited by hand.
"""

GENERATION_TASK = ("any-to-any", "Multimodal generation with missing modalities")
"""``model-index`` task (Hub task id, name) of the likelihood, coherence, FID and SSIM results."""
REPRESENTATION_TASK = ("feature-extraction", "Latent representation (k-means on test latents)")
"""``model-index`` task of the scores of the latents' k-means clusters against the labels."""


def _scalar(value: Any) -> float | None:
    """``value`` as a finite number, else ``None`` (absent, not applicable, NaN, infinite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _modalities(count: object) -> str:
    return f"{count} modalit{'y' if str(count) == '1' else 'ies'}"


def eval_results(metrics: Mapping[str, Any], dataset: str) -> list[EvalResult]:
    """The scalar results of an evaluation (``metrics.json``), for the card's ``model-index``.

    Cross-modal coherences (per subset size and their mean), the joint NLL, each sampler's
    joint coherence and FIDs, each image modality's reconstruction SSIM, and the latents'
    k-means accuracy, NMI and ARI; each with ``dataset`` (its Hub id or name) and the evaluated
    split. A value that is absent, not applicable, NaN or infinite is left out, and so are the
    judging classifiers' accuracies (the classifiers', not the model's).
    """
    from huggingface_hub import EvalResult

    split = str(metrics.get("split", "test"))
    rows: list[tuple[tuple[str, str], str, str, Any]] = []
    coherence = metrics.get("coherence") or {}
    for size, value in (coherence.get("per_size") or {}).items():
        name = f"Cross-modal coherence from {_modalities(size)}"
        rows.append((GENERATION_TASK, "coherence", name, value))
    rows.append(
        (GENERATION_TASK, "coherence", "Cross-modal coherence, mean", coherence.get("mean"))
    )
    likelihood = metrics.get("likelihood") or {}
    joint = likelihood.get("joint") or {}
    counted = f", {joint['count']} test samples" if "count" in joint else ""
    name = f"Joint NLL (nats, K={likelihood.get('k')}{counted})"
    rows.append((GENERATION_TASK, "nll", name, joint.get("mean")))
    samplers = metrics.get("samplers") or {}
    for kind, entry in samplers.items():
        if not isinstance(entry, Mapping):  # "not_applicable": a conditional model's reason
            continue
        name = f"Joint coherence ({kind} sampler)"
        rows.append((GENERATION_TASK, "coherence", name, entry.get("joint_coherence")))
        for key in sorted(k for k in entry if k == "fid" or k.startswith("fid_")):
            features = "Inception" if key == "fid" else key.removeprefix("fid_")
            for modality, value in (entry[key] or {}).items():
                name = f"FID of {modality} ({kind} sampler, {features} features)"
                rows.append((GENERATION_TASK, key, name, value))
    for modality, entry in (metrics.get("reconstruction") or {}).items():
        if isinstance(entry, Mapping):
            name = f"SSIM of {modality} reconstructed from itself"
            rows.append((GENERATION_TASK, "ssim", name, entry.get("ssim")))
    clustering = (metrics.get("latents") or {}).get("clustering") or {}
    for key in ("accuracy", "nmi", "ari"):
        name = f"Latent k-means {key}"
        rows.append((REPRESENTATION_TASK, key, name, clustering.get(key)))
    results = []
    for (task_type, task_name), metric_type, metric_name, value in rows:
        number = _scalar(value)
        if number is None:
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=number,
            )
        )
    return results


def model_card(
    model: MultimodalVAE,
    *,
    metrics: Mapping[str, Any] | None = None,
    data_summary: Mapping[str, Any] | None = None,
    repo_id: str = "",
    license: str | None = DEFAULT_LICENSE,
) -> str:
    """The Hub model card (``README.md``): its metadata, then the model, evaluation, data, use.

    The YAML block holds ``license`` (:data:`DEFAULT_LICENSE` unless given; ``None`` leaves it
    out), ``library_name`` (:data:`multivae.model_folder.LIBRARY_NAME`), ``tags``
    (:func:`multivae.model_folder.model_card_tags`), ``datasets`` (the training dataset's
    name, from ``data_summary``) and, when both ``metrics`` and the dataset are known, a
    ``model-index`` of the scalar results (:func:`eval_results`) named after the repository.
    The Markdown keeps every figure of the evaluation table, the training data, intended use
    and limits. The card is rendered and parsed back by :class:`huggingface_hub.ModelCard`
    here, offline; the Hub checks its metadata again when a push commits it.
    """
    from huggingface_hub import ModelCardData

    body = model_card_body(model)
    if repo_id:
        body = body.replace('"PATH_OR_REPO_ID"', json.dumps(repo_id))
    lines = [body.rstrip(), ""]
    if metrics:
        lines += [
            "## Evaluation",
            "",
            f"On the `{metrics.get('split', 'test')}` split ({metrics.get('samples')} samples); "
            "coherences are judged by classifiers trained on the dataset (their accuracy is "
            "the ceiling a coherence can reach).",
            "",
            "| metric | value |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in _metric_rows(metrics)),
            "",
            "Every figure is in `metrics.json` beside this card.",
            "",
        ]
    if data_summary:
        modalities = ", ".join(
            f"`{m['name']}` {tuple(m['shape'])}" for m in data_summary.get("modalities", [])
        )
        splits = ", ".join(
            f"{split}: {info.get('rows')} samples"
            + (
                " (presence "
                + ", ".join(f"{k} {v:.0%}" for k, v in info.get("presence", {}).items())
                + ")"
                if info.get("presence")
                else ""
            )
            for split, info in data_summary.get("splits", {}).items()
        )
        missingness = data_summary.get("missingness")
        lines += [
            "## Training data",
            "",
            f"Dataset `{data_summary.get('name')}`: modalities {modalities}; "
            f"{data_summary.get('num_classes')} classes. Splits: {splits}.",
            "",
            f"Missingness: `{json.dumps(missingness, sort_keys=True)}`."
            if missingness
            else "No missing modalities.",
            "",
        ]
    lines += [
        "## Intended use",
        "",
        "Research on multimodal representation learning with missing modalities: encoding any "
        "subset of the modalities into the shared latent space, generating (imputing) the "
        "missing modalities, and generating synthetic samples for data augmentation.",
        "",
        "## Limitations",
        "",
        "- Trained only on the data described above: generated samples and imputations "
        "follow that distribution and carry its biases; they are not real observations.",
        "- Imputed values are model samples, not measurements: do not use them for decisions "
        "about individuals (clinical or otherwise) without validation on real data.",
        "- Metrics are estimates on one test split; likelihoods are importance-sampled lower "
        "bounds on the log-likelihood (reported as an NLL upper bound) with the K shown.",
        "",
    ]
    dataset = (data_summary or {}).get("name")
    results = eval_results(metrics, str(dataset)) if metrics and dataset else []
    data = ModelCardData(
        license=license,
        library_name=LIBRARY_NAME,
        tags=model_card_tags(model),
        datasets=[str(dataset)] if dataset else None,
        model_name=(repo_id.split("/")[-1] or model.name) if results else None,
        eval_results=results or None,
    )
    return card_text(data, "\n".join(lines))


def hub_folder(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    data_summary: Mapping[str, Any] | None = None,
    repo_id: str = "",
    license: str | None = DEFAULT_LICENSE,
) -> Path:
    """Write the exact folder that :func:`push_to_hub` uploads, atomically.

    It holds the model's ``config.json`` and ``model.safetensors``, a model card
    (``README.md``, :func:`model_card`: its metadata names ``license``, :data:`DEFAULT_LICENSE`
    unless given, the training data of ``data_summary`` and the results of ``metrics``) and,
    when given, the evaluation's ``metrics.json``. It loads with :func:`multivae.load_model`
    like any model folder.

    Raises:
        ValueError: For ``metrics`` that record the evaluation of another model (by
            ``model_fingerprint``); an evaluation that records no fingerprint (written before
            evaluations recorded one, or of a model in memory) is published unchecked.
    """
    source = Path(model_dir)
    folder = resolve_model_folder(source)
    if metrics is not None:
        _check_evaluation_of(folder, metrics)
    model = load_model_folder(folder)
    with staged_folder(out) as staging:
        for name in HUB_FILES:
            shutil.copy2(source / name, staging / name)
        card = model_card(
            model, metrics=metrics, data_summary=data_summary, repo_id=repo_id, license=license
        )
        (staging / MODEL_CARD_FILE).write_text(card)
        if metrics is not None:
            (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return Path(out)


def _check_evaluation_of(folder: Path, metrics: Mapping[str, Any]) -> None:
    """Refuse an evaluation whose recorded ``model_fingerprint`` is not the folder's."""
    recorded = metrics.get("model_fingerprint")
    if recorded is None:
        return
    expected = model_fingerprint(folder)
    if recorded != expected:
        raise ValueError(
            f"metrics: expected the evaluation of {folder} (fingerprint {expected}), found one "
            f"of {metrics.get('model_path') or 'another model'} (fingerprint {recorded}); "
            "evaluate this model and publish that evaluation"
        )


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = True,
    commit_message: str = "Upload multivae model",
) -> str:
    """Upload a folder written by :func:`hub_folder` to a Hub model repository.

    The repository is created when needed (private by default). The token is ``token``, else
    ``HF_TOKEN``, else a saved ``hf auth login``.

    Returns:
        The repository's URL.

    Raises:
        ValueError: For an empty or malformed ``repo_id``, or a folder that is not a model folder.
        PermissionError: Without a token; nothing is uploaded and the folder stays as it is.
        ConnectionError: When the Hub refuses or cannot be reached (the folder stays too).
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hub repo: expected a repository id 'owner/name', found {repo_id!r}")
    missing = [name for name in (*HUB_FILES, MODEL_CARD_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder}: not a Hub model folder, missing {missing}")
    token = token or get_token()
    if not token:
        raise PermissionError(
            f"no Hugging Face token to push {folder} to {repo_id}: set HF_TOKEN (a token with "
            "write access) or run `hf auth login`, or use a dry run; nothing was uploaded and "
            f"the folder is kept at {folder}"
        )
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            repo_type="model",
        )
    except Exception as error:  # the Hub's HTTP and transport errors, whatever their class
        raise ConnectionError(
            f"pushing {folder} to the Hub repository {repo_id} failed ({error}); the folder is "
            "kept as it is: push it again with multivae.hub.push_to_hub once the Hub is reachable"
        ) from error
    return str(url)
