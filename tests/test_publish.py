"""The register step: the Hub folder and its card, the push (Hub mocked at its API), MLflow."""

import json

import pytest
import torch
from mlflow import MlflowClient

import multivae
from multivae import hub
from multivae.models.base import MultimodalVAE
from multivae.workflow import register_step, step_run

METRICS = {
    "split": "test",
    "samples": 200,
    "coherence": {"mean": 0.4321, "per_size": {"1": 0.31, "2": 0.55}},
    "likelihood": {"k": 100, "joint": {"mean": 1234.5, "std_error": 6.7, "count": 20}},
    "samplers": {"gmm": {"joint_coherence": 0.25}},
    "classifiers": {"test_accuracy": {"x": 0.97}},
}
SUMMARY = {
    "name": "toy",
    "num_classes": 3,
    "modalities": [{"name": "x", "shape": [4]}, {"name": "y", "shape": []}],
    "missingness": {"train": {"scheme": "mcar", "rate": 0.3}},
    "splits": {"train": {"rows": 100, "presence": {"x": 1.0, "y": 0.7}}},
}


@pytest.fixture
def model_dir(tiny_mvae, tmp_path):
    return tiny_mvae.save_pretrained(tmp_path / "model")


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login either


def pipeline_run(tmp_path):
    from multivae.integrations.mlflow import start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_parent_run(uri, "multivae", "pipeline")
    with step_run(uri, parent, "train") as (_, train_run):
        pass
    return uri, parent, train_run


def test_the_hub_folder_loads_and_its_card_reports_metrics_data_use_and_limits(model_dir, tmp_path):
    folder = hub.hub_folder(
        model_dir, tmp_path / "hub", metrics=METRICS, data_summary=SUMMARY, repo_id="me/toy"
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "metrics.json",
        "model.safetensors",
    ]
    loaded = MultimodalVAE.from_pretrained(folder)
    reference = multivae.load_model(model_dir)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: multivae-platform\n")
    assert "| coherence from 1 modality | 0.3100 |" in card
    assert "| coherence from 2 modalities | 0.5500 |" in card
    assert "| joint NLL (nats, K=100, 20 test samples) | 1234.50 ± 6.70 |" in card
    assert "| joint coherence (gmm sampler) | 0.2500 |" in card
    assert "Dataset `toy`" in card and "presence x 100%, y 70%" in card
    assert '"rate": 0.3' in card
    assert "## Intended use" in card and "## Limitations" in card
    assert 'multivae.load_model("me/toy")' in card
    assert json.loads((folder / "metrics.json").read_text()) == METRICS


def test_pushing_without_a_token_fails_clearly_and_loses_nothing(model_dir, tmp_path, no_token):
    uri, parent, train_run = pipeline_run(tmp_path)
    out = tmp_path / "hub"
    with pytest.raises(PermissionError, match=r"no Hugging Face token to push .* to me/toy"):
        register_step(
            model_dir,
            METRICS,
            SUMMARY,
            out,
            hub_repo="me/toy",
            dry_run=False,
            tracking_uri=uri,
            parent_run_id=parent,
            train_run_id=train_run,
        )
    # The folder that would have been pushed is complete and loads.
    assert multivae.load_model(out).name == "mvae"
    client = MlflowClient(uri)
    register_run = next(
        r
        for r in client.search_runs([client.get_run(parent).info.experiment_id])
        if r.info.run_name == "register"
    )
    assert register_run.info.status == "FAILED"
    assert client.get_run(parent).info.status == "FAILED"
    assert client.search_model_versions("name='multivae'") == []


def test_a_dry_run_writes_the_folder_and_registers_in_mlflow(model_dir, tmp_path, no_token):
    uri, parent, train_run = pipeline_run(tmp_path)
    record = register_step(
        model_dir,
        METRICS,
        SUMMARY,
        tmp_path / "hub",
        hub_repo="me/toy",
        dry_run=True,
        registered_name="toy-model",
        tracking_uri=uri,
        parent_run_id=parent,
        train_run_id=train_run,
    )
    assert record["pushed"] is False and record["repo_url"] is None
    assert record["registered_model"] == "toy-model" and record["registered_version"] == "1"
    client = MlflowClient(uri)
    (version,) = client.search_model_versions("name='toy-model'")
    assert version.run_id == train_run
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_push_creates_the_repo_and_uploads_the_folder(model_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **options):
        calls.append(("create_repo", repo_id, options, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **options):
        calls.append(("upload_folder", options["repo_id"], options, self.token))
        # Everything the Hub would receive is in the folder at upload time.
        assert multivae.load_model(options["folder_path"]).name == "mvae"

    # The Hub cannot be reached from here: its two HTTP calls are replaced, the rest is real.
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_test_not_a_real_token")
    folder = hub.hub_folder(model_dir, tmp_path / "hub", metrics=METRICS, repo_id="me/toy")
    url = hub.push_to_hub(folder, "me/toy")
    assert url == "https://huggingface.co/me/toy"
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][2] == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert calls[1][2]["folder_path"] == str(folder)
    assert {c[3] for c in calls} == {"hf_test_not_a_real_token"}
    with pytest.raises(ValueError, match="expected a repository id 'owner/name'"):
        hub.push_to_hub(folder, "toy")
    with pytest.raises(ValueError, match="not a Hub model folder"):
        hub.push_to_hub(tmp_path, "me/toy")


def test_an_unreachable_hub_fails_clearly_and_keeps_the_folder(model_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    def create_repo(self, repo_id, **options):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setenv("HF_TOKEN", "hf_test_not_a_real_token")
    folder = hub.hub_folder(model_dir, tmp_path / "hub", repo_id="me/toy")
    with pytest.raises(ConnectionError, match=r"to the Hub repository me/toy failed .*Network"):
        hub.push_to_hub(folder, "me/toy")
    assert multivae.load_model(folder).name == "mvae"
