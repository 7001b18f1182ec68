"""The register step: the Hub folder and its card, the push (Hub mocked at its API), MLflow."""

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import multivae
from multivae import hub
from multivae.models.base import MultimodalVAE
from multivae.names import REGISTER_RECORD_ARTIFACT
from multivae.workflow import register_step, step_run
from multivae.workflow.tracking import step_source_tags, tag_step_run

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


def test_runs_of_the_pipeline_and_its_steps_carry_their_source(tmp_path):
    from multivae.integrations.mlflow import start_parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_parent_run(uri, "multivae", "pipeline", tags=step_source_tags())
    with step_run(uri, parent, "sample-augmentation") as (client, step):
        pass
    training = start_parent_run(uri, "multivae", "train")  # as MLflowCallback makes it
    assert client.get_run(training).data.tags["mlflow.source.type"] == "LOCAL"
    tag_step_run(uri, training, "train")
    expected = {
        parent: ("JOB", "pipelines/pipeline.py", None),
        step: ("JOB", "components/sample_augmentation.py", "sample-augmentation"),
        training: ("JOB", "components/train.py", "train"),
    }
    for run_id, (kind, name, step_name) in expected.items():
        tags = client.get_run(run_id).data.tags
        assert (tags["mlflow.source.type"], tags["mlflow.source.name"]) == (kind, name)
        assert tags.get("multivae.step") == step_name
        assert tags["mlflow.user"]


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
    assert client.get_run(parent).info.status == "FINISHED"

    # The model is the pipeline's: logged and registered from its run (MLflow's Models column
    # of the pipeline's row), linked to the training run it comes from, an input of the
    # register step's run.
    assert version.run_id == parent
    assert version.tags["multivae.train_run_id"] == train_run
    model_id = version.tags["multivae.model_id"]
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == parent
    assert logged.tags["multivae.train_run_id"] == train_run
    for run_id in (parent, train_run):
        run = client.get_run(run_id)
        assert [m.model_id for m in run.outputs.model_outputs] == [model_id]
        assert run.data.tags["multivae.registered_model"] == "toy-model"
        assert run.data.tags["multivae.registered_version"] == "1"
    register_run = client.get_run(runs_named(client, parent, "register")[0])
    assert [m.model_id for m in register_run.inputs.model_inputs] == [model_id]
    # Every step's run names its source: the step's component, run as a job.
    for run in (register_run, client.get_run(train_run)):
        step = run.info.run_name
        assert run.data.tags["multivae.step"] == step
        assert run.data.tags["mlflow.source.type"] == "JOB"
        assert run.data.tags["mlflow.source.name"] == f"components/{step}.py"
        assert run.data.tags["mlflow.user"]

    # The first version is the champion; the decision is in the step's output.
    assert aliases(client, "toy-model") == {"champion": "1"}
    champion = record["champion"]
    assert champion["promoted"] is True and champion["previous_version"] is None
    assert (champion["metric"], champion["value"]) == ("coherence.mean", 0.4321)
    assert champion["higher_is_better"] is True
    assert register_run.data.tags["multivae.champion"] == "true"
    (tmp_path / "record").mkdir()
    saved = client.download_artifacts(
        register_run.info.run_id, REGISTER_RECORD_ARTIFACT, str(tmp_path / "record")
    )
    assert json.loads(Path(saved).read_text())["champion"] == champion

    # Another pipeline run, whose model is less coherent: the alias stays.
    def register_again(metrics):
        uri_, parent_, train_ = pipeline_run(tmp_path)
        return register_step(
            model_dir,
            metrics,
            SUMMARY,
            tmp_path / f"hub-{parent_}",
            registered_name="toy-model",
            tracking_uri=uri_,
            parent_run_id=parent_,
            train_run_id=train_,
        )

    worse = register_again({**METRICS, "coherence": {"mean": 0.3}})
    assert worse["registered_version"] == "2"
    assert worse["champion"]["promoted"] is False
    assert worse["champion"]["previous_version"] == "1"
    assert "0.3 does not beat 0.4321 of version 1" in worse["champion"]["reason"]
    assert aliases(client, "toy-model") == {"champion": "1"}
    # One without coherence is ranked on its joint NLL, lower better; the champion has none.
    nll_only = register_again({k: v for k, v in METRICS.items() if k != "coherence"})
    assert nll_only["champion"]["metric"] == "likelihood.joint.mean"
    assert nll_only["champion"]["higher_is_better"] is False
    assert nll_only["champion"]["promoted"] is False
    assert aliases(client, "toy-model") == {"champion": "1"}


def aliases(client, name):
    """The aliases of a registered model (the SQL registry gives int versions)."""
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def runs_named(client, parent, name):
    experiment = client.get_run(parent).info.experiment_id
    return [
        r.info.run_id
        for r in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
        if r.info.run_name == name
    ]


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
