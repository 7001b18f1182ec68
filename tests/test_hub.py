"""Hub model cards the Hub understands, checked offline, and loading a pinned Hub revision.

The card (``README.md``) is read back with huggingface_hub's own parser (``ModelCard.load``) and
its ``model-index`` with huggingface_hub's own converters. ``ModelCard.validate`` is never
called: in huggingface_hub it POSTs the card to ``{ENDPOINT}/api/validate-yaml``, which needs
the Hub; the tests below replace it with a function that fails, so that writing a card is also
checked never to call it. Downloads are replaced at ``huggingface_hub.snapshot_download``, the
one network call of loading; everything before it is real.
"""

import math
import tomllib
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import ModelCard, RepoCard
from huggingface_hub.errors import RevisionNotFoundError
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

import multivae
from multivae import hub
from multivae.cli import main
from multivae.model_folder import LIBRARY_NAME
from multivae.models.base import Capabilities, MultimodalVAE

ROOT = Path(__file__).resolve().parents[1]
METRICS = {
    "split": "test",
    "samples": 200,
    "coherence": {"mean": 0.4321, "per_size": {"1": 0.31, "2": 0.55}},
    "likelihood": {"k": 100, "joint": {"mean": 1234.5, "std_error": 6.7, "count": 20}},
    "samplers": {
        "prior": {"joint_coherence": 0.2, "fid": {"x": 12.5}},
        "gmm": {"joint_coherence": 0.25, "fid_classifier": {"x": 3.25}},
    },
    "reconstruction": {"x": {"mse": 0.1, "ssim": 0.8, "count": 50}, "y": {"error_rate": 0.2}},
    "latents": {"clustering": {"accuracy": 0.6, "nmi": 0.4, "ari": 0.3}},
    "classifiers": {"test_accuracy": {"x": 0.97}},
}
SUMMARY = {
    "name": "poly-digits",
    "num_classes": 3,
    "modalities": [{"name": "x", "shape": [4]}, {"name": "y", "shape": []}],
    "missingness": None,
    "splits": {"train": {"rows": 100, "presence": {"x": 1.0, "y": 1.0}}},
}
TAGS = [
    "multimodal",
    "variational-autoencoder",
    "pytorch",
    "mvae",
    "missing-modalities",
    "tractable-likelihood",
]
GENERATION = {"type": "any-to-any", "name": "Multimodal generation with missing modalities"}
DATASET = {"name": "poly-digits", "type": "poly-digits", "split": "test"}


@pytest.fixture(autouse=True)
def no_validation(monkeypatch):
    def validate(self, repo_type=None):
        raise AssertionError("ModelCard.validate posts the card to the Hub; never call it here")

    monkeypatch.setattr(RepoCard, "validate", validate)


@pytest.fixture
def model_dir(tiny_mvae, tmp_path):
    return tiny_mvae.save_pretrained(tmp_path / "model")


def published_card(model_dir, out, metrics=METRICS, summary=SUMMARY, **options):
    folder = hub.hub_folder(
        model_dir, out, metrics=metrics, data_summary=summary, repo_id="me/toy", **options
    )
    return ModelCard.load(folder / "README.md")


def metric(type_, name, value):
    return {"type": type_, "value": value, "name": name}


def test_the_card_metadata_round_trips_through_huggingface_hubs_parser(model_dir, tmp_path):
    card = published_card(model_dir, tmp_path / "hub")
    metadata = card.data.to_dict()
    assert metadata == {
        "license": "apache-2.0",
        "library_name": LIBRARY_NAME,
        "tags": TAGS,
        "datasets": ["poly-digits"],
        "model-index": [
            {
                "name": "toy",
                "results": [
                    {
                        "task": GENERATION,
                        "dataset": DATASET,
                        "metrics": [
                            metric("coherence", "Cross-modal coherence from 1 modality", 0.31),
                            metric("coherence", "Cross-modal coherence from 2 modalities", 0.55),
                            metric("coherence", "Cross-modal coherence, mean", 0.4321),
                            metric("nll", "Joint NLL (nats, K=100, 20 test samples)", 1234.5),
                            metric("coherence", "Joint coherence (prior sampler)", 0.2),
                            metric("fid", "FID of x (prior sampler, Inception features)", 12.5),
                            metric("coherence", "Joint coherence (gmm sampler)", 0.25),
                            metric(
                                "fid_classifier",
                                "FID of x (gmm sampler, classifier features)",
                                3.25,
                            ),
                            metric("ssim", "SSIM of x reconstructed from itself", 0.8),
                        ],
                    },
                    {
                        "task": {
                            "type": "feature-extraction",
                            "name": "Latent representation (k-means on test latents)",
                        },
                        "dataset": DATASET,
                        "metrics": [
                            metric("accuracy", "Latent k-means accuracy", 0.6),
                            metric("nmi", "Latent k-means nmi", 0.4),
                            metric("ari", "Latent k-means ari", 0.3),
                        ],
                    },
                ],
            }
        ],
    }
    # huggingface_hub's own converters: model-index -> EvalResults -> the same model-index.
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "toy" and card.data.model_name == "toy"
    assert results == hub.eval_results(METRICS, "poly-digits") == card.data.eval_results
    assert eval_results_to_model_index(name, results) == metadata["model-index"]
    # Rendering the parsed card gives the written file back: nothing was lost or reordered.
    written = (tmp_path / "hub" / "README.md").read_text()
    assert str(ModelCard(written)) == written
    # The Markdown body keeps the card's content.
    assert card.text.startswith("\n# mvae (MVAE)\n")
    assert 'multivae.load_model("me/toy")' in card.text
    assert "| judging classifier accuracy (x) | 0.9700 |" in card.text
    assert "## Training data" in card.text and "## Limitations" in card.text


def test_non_finite_and_not_applicable_metrics_are_left_out(model_dir, tmp_path):
    metrics = {
        **METRICS,
        "coherence": {"mean": math.nan, "per_size": {"1": 0.31, "2": math.inf}},
        "likelihood": {"k": 100, "joint": {"not_applicable": "a conditional model..."}},
        "samplers": {"not_applicable": "cvae generates only given conditioning data"},
        "reconstruction": {"x": {"not_applicable": "..."}, "y": {"error_rate": 0.2}},
        "latents": {"clustering": {"accuracy": 0.6, "nmi": -math.inf, "ari": True}},
    }
    card = published_card(model_dir, tmp_path / "hub", metrics=metrics)
    names = [r.metric_name for r in card.data.eval_results]
    assert names == ["Cross-modal coherence from 1 modality", "Latent k-means accuracy"]
    values = [r.metric_value for r in card.data.eval_results]
    assert values == [0.31, 0.6]
    # The judges' accuracy is the classifiers', not the model's: never a result of the model.
    assert all(r.metric_value != 0.97 for r in card.data.eval_results)
    # metrics.json itself keeps every figure, the non-finite ones included.
    assert "NaN" in (tmp_path / "hub" / "metrics.json").read_text()


def test_without_a_known_dataset_or_metrics_there_is_no_model_index(model_dir, tmp_path):
    card = published_card(model_dir, tmp_path / "no-data", summary=None)
    assert "model-index" not in card.data.to_dict() and "datasets" not in card.data.to_dict()
    assert "## Evaluation" in card.text  # the table stays in the Markdown
    card = published_card(model_dir, tmp_path / "no-metrics", metrics=None)
    assert set(card.data.to_dict()) == {"license", "library_name", "tags", "datasets"}


def test_the_license_defaults_to_the_librarys_and_is_the_publishers_choice(model_dir, tmp_path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert hub.DEFAULT_LICENSE == project["license"]["text"].lower() == "apache-2.0"
    # The library name is the distribution's, the one `pip install` takes.
    assert project["name"] == LIBRARY_NAME
    card = published_card(model_dir, tmp_path / "cc", license="cc-by-nc-4.0")
    assert card.data.license == "cc-by-nc-4.0"
    card = published_card(model_dir, tmp_path / "none", license=None)
    assert "license" not in card.data.to_dict()


def test_tags_name_the_model_and_what_its_configuration_can_do(tiny_mvae, monkeypatch, tmp_path):
    card = ModelCard.load(tiny_mvae.save_pretrained(tmp_path / "m") / "README.md")
    assert card.data.to_dict() == {"library_name": LIBRARY_NAME, "tags": TAGS}
    declared = Capabilities(missing_modalities=False, clustering=True, conditional=True)
    monkeypatch.setattr(type(tiny_mvae), "declared_capabilities", declared)
    tags = ModelCard(hub.model_card(tiny_mvae)).data.tags
    assert "mvae" in tags and "clustering" in tags and "conditional" in tags
    assert "missing-modalities" not in tags
    # The configured model answers, not the class: its own private latents and stages.
    assert "private-latents" not in tags and "multi-stage" not in tags
    monkeypatch.setattr(
        type(tiny_mvae), "capabilities", property(lambda m: replace(declared, multi_stage=True))
    )
    assert "multi-stage" in ModelCard(hub.model_card(tiny_mvae)).data.tags


@pytest.fixture
def downloads(model_dir, monkeypatch, tmp_path):
    """Stand in for the Hub's download: record what is asked, answer with a saved folder."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append({"repo_id": repo_id, "revision": revision, "allow": allow_patterns})
        if revision == "v9":
            url = f"https://huggingface.co/api/models/{repo_id}/revision/v9"
            response = httpx2.Response(404, request=httpx2.Request("GET", url))
            raise RevisionNotFoundError("404 Client Error: Revision Not Found", response=response)
        return str(model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)  # "owner/repo" is no folder here
    return calls


def test_a_revision_reaches_the_download(downloads, tiny_mvae):
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert multivae.load_model("owner/repo", revision="v1.0").config == tiny_mvae.config
    MultimodalVAE.from_pretrained("owner/repo", revision=commit)
    multivae.get_model_class("mvae").from_pretrained("owner/repo")
    assert [(c["repo_id"], c["revision"]) for c in downloads] == [
        ("owner/repo", "v1.0"),
        ("owner/repo", commit),
        ("owner/repo", None),
    ]
    assert {tuple(c["allow"]) for c in downloads} == {
        ("config.json", "model.safetensors", "README.md")
    }
    with pytest.raises(FileNotFoundError, match=r"owner/repo: the Hub repository has no revision"):
        multivae.load_model("owner/repo", revision="v9")


@pytest.mark.parametrize(
    "command",
    [
        ["sample", "--n", "2", "--out", "out"],
        ["impute", "--data", "data", "--out", "out"],
        ["evaluate", "--data", "data", "--out", "out"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_that_loads_a_model_passes_its_revision(downloads, command, capsys):
    status = main([command[0], "--model", "owner/repo", "--revision", "v9", *command[1:]])
    assert status == 2
    assert downloads == [
        {
            "repo_id": "owner/repo",
            "revision": "v9",
            "allow": ["config.json", "model.safetensors", "README.md"],
        }
    ]
    err = capsys.readouterr().err
    expected = "error: owner/repo: the Hub repository has no revision 'v9'"
    assert f"multivae {command[0]}: {expected}" in err


def test_a_revision_with_a_local_folder_is_refused(model_dir, downloads, tmp_path):
    with pytest.raises(ValueError, match=r"a local model folder, given revision 'main'; a revis"):
        multivae.load_model(model_dir, revision="main")
    with pytest.raises(ValueError, match="a local model folder"):
        MultimodalVAE.from_pretrained(model_dir, revision="main")
    with pytest.raises(ValueError, match=r"expected a revision .*found an empty text ''"):
        multivae.load_model("owner/repo", revision="")
    from multivae.metrics import evaluate

    model = multivae.load_model(model_dir)
    with pytest.raises(ValueError, match="given with a loaded model"):
        evaluate(model, tmp_path / "data", tmp_path / "out", revision="main")
    assert downloads == []  # refused before any download
    assert multivae.load_model(model_dir).config == model.config  # no revision: loads
