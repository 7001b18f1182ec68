"""The Kubeflow pipeline: compiled IR, a real local run with KFP's runner, submission."""

import json
import math
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

import multivae
from multivae.config import ConfigError
from multivae.data import MultimodalDataset
from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.summary import summarize
from multivae.models.base import MultimodalVAE
from multivae.samplers import load_sampler
from pipelines.cli import main
from pipelines.compile import compile_pipeline
from pipelines.local import run_local
from pipelines.pipeline import SHARED_MOUNT, SHARED_PVC, STEP_RESOURCES, build_pipeline
from pipelines.settings import SETTINGS, load_settings, read_env_file
from pipelines.submit import submit

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["preprocess", "train", "evaluate", "sample-augmentation", "register"]
SMALL = {
    "dataset_params": {"n_train": 600, "n_val": 100, "n_test": 200},
    "classifier_epochs": 1,
    "training": {"epochs": 2, "batch_size": 32},
    "evaluation": {
        "likelihood_samples": 10,
        "k": 20,
        "n_generated": 100,
        "fit_samples": 300,
        "samplers": ["prior", "gmm"],
    },
    "n_synthetic": 50,
    "hub_repo": "someone/multivae-test",
}


# ------------------------------------------------------------------------------------------------
# Compiled pipeline


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compiled")
    first = compile_pipeline(folder / "a.yaml").read_text()
    second = compile_pipeline(folder / "b.yaml").read_text()
    return first, second


def test_compiling_twice_gives_the_same_yaml(compiled, tmp_path):
    first, second = compiled
    assert first == second
    # Also across processes: KFP writes mapping defaults in a per-process order otherwise.
    subprocess.run(
        [sys.executable, "-m", "pipelines", "compile", "--out", str(tmp_path / "c.yaml")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "c.yaml").read_text() == first


def _documents(text):
    pipeline, platform = yaml.safe_load_all(text)
    return pipeline, platform


def test_five_steps_in_order_with_typed_parameters_and_artifacts(compiled):
    pipeline, platform = _documents(compiled[0])
    tasks = pipeline["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(STEPS)
    depends = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert depends["preprocess"] == set()
    assert depends["train"] == {"preprocess"}
    assert depends["evaluate"] == {"preprocess", "train"}
    assert depends["sample-augmentation"] == {"preprocess", "train", "evaluate"}
    assert depends["register"] == {"preprocess", "train", "evaluate", "sample-augmentation"}

    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    expected_types = {
        "dataset": "STRING",
        "missing_rate": "NUMBER_DOUBLE",
        "model_name": "STRING",
        "model_config": "STRUCT",
        "training": "STRUCT",
        "sweep": "STRING",
        "sampler": "STRING",
        "hub_repo": "STRING",
        "hub_dry_run": "BOOLEAN",
        "mlflow_uri": "STRING",
        "n_synthetic": "NUMBER_INTEGER",
        "train_mode": "STRING",
    }
    for name, kind in expected_types.items():
        assert parameters[name]["parameterType"] == kind, name
    assert parameters["model_name"]["defaultValue"] == "mopoe"
    assert parameters["missing_rate"]["defaultValue"] == 0.5
    assert parameters["mlflow_uri"]["defaultValue"] == SETTINGS.mlflow_tracking_uri
    assert parameters["hub_repo"]["defaultValue"] == SETTINGS.hf_repo_id

    def artifacts(component, side):
        spec = pipeline["components"][component][side].get("artifacts", {})
        return {name: value["artifactType"]["schemaTitle"] for name, value in spec.items()}

    assert artifacts("comp-preprocess", "outputDefinitions") == {
        "data": "system.Dataset",
        "classifiers": "system.Model",
        "summary": "system.Markdown",
    }
    # The judges are their own artifact, read by the two steps that judge or label.
    for step in ("comp-evaluate", "comp-sample-augmentation"):
        assert artifacts(step, "inputDefinitions") == {
            "model": "system.Model",
            "data": "system.Dataset",
            "classifiers": "system.Model",
        }
    assert artifacts("comp-train", "inputDefinitions") == {"data": "system.Dataset"}
    assert artifacts("comp-train", "outputDefinitions") == {"model": "system.Model"}
    assert artifacts("comp-evaluate", "outputDefinitions") == {
        "metrics": "system.Metrics",
        "report": "system.Artifact",
        "figures": "system.HTML",
    }
    assert artifacts("comp-sample-augmentation", "outputDefinitions") == {
        "synthetic": "system.Dataset",
        "fitted_sampler": "system.Artifact",
    }
    assert artifacts("comp-register", "outputDefinitions") == {
        "hub_model": "system.Model",
        "card": "system.Markdown",
    }
    # Every step runs the project's one image, as named in infra/base/settings.env.
    executors = pipeline["deploymentSpec"]["executors"]
    assert len(executors) == 5
    assert {e["container"]["image"] for e in executors.values()} == {SETTINGS.image}
    assert SETTINGS.image == read_env_file(ROOT / "infra/base/settings.env")["MULTIVAE_IMAGE"]
    # Publishing is never cached; the cluster wiring is in the platform spec.
    assert tasks["register"]["cachingOptions"] == {}
    assert tasks["train"]["cachingOptions"] == {"enableCache": True}
    train_platform = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train"
    ]
    assert train_platform["pvcMount"][0]["mountPath"] == SHARED_MOUNT
    assert train_platform["pvcMount"][0]["constant"] == SHARED_PVC
    assert train_platform["secretAsEnv"][0]["keyToEnv"][0]["envVar"] == "RAY_AUTH_TOKEN"


def test_settings_come_from_the_file_and_the_environment(tmp_path):
    path = tmp_path / "settings.env"
    path.write_text("# comment\nMULTIVAE_IMAGE=registry/x:1\n\nRAY_ADDRESS=http://h:8265\n")
    settings = load_settings(path, environ={})
    assert settings.image == "registry/x:1" and settings.ray_address == "http://h:8265"
    assert load_settings(path, environ={"MULTIVAE_IMAGE": "other:2"}).image == "other:2"
    path.write_text("MULTIVAE_IMAGE registry/x:1\n")
    with pytest.raises(ValueError, match=r"settings.env:1: expected KEY=value"):
        read_env_file(path)
    path.write_text("RAY_ADDRESS=x\n")
    with pytest.raises(ValueError, match="no MULTIVAE_IMAGE"):
        load_settings(path, environ={})


# ------------------------------------------------------------------------------------------------
# The local run


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    result = run_local(dict(SMALL), out)
    return out, result


@pytest.mark.integration
def test_the_whole_pipeline_runs_locally_and_every_artifact_is_valid(local_run):
    _out, result = local_run
    outputs = result["outputs"]
    assert sorted(outputs) == sorted(STEPS)

    data = Path(outputs["preprocess"]["data"])
    summary = summarize(data, validate=True)
    assert all(info["validated"] for info in summary["splits"].values())
    assert summary["splits"]["train"]["rows"] == 600
    assert summary["missingness"]["train"]["rate"] == 0.5
    judges = Path(outputs["preprocess"]["classifiers"])
    assert (judges / "classifiers.json").is_file()
    assert not (data / "classifiers").exists()  # the judges are an artifact of their own

    model = multivae.load_model(Path(outputs["train"]["model"]) / "model")
    assert model.name == "mopoe"

    metrics = json.loads((Path(outputs["evaluate"]["report"]) / "metrics.json").read_text())
    for key in ("likelihood", "coherence", "samplers", "reconstruction", "latents"):
        assert key in metrics, key
    assert metrics["samples"] == 200
    assert set(metrics["samplers"]) == {"prior", "gmm"}
    for value in (
        metrics["likelihood"]["joint"]["mean"],
        metrics["coherence"]["mean"],
        metrics["samplers"]["gmm"]["joint_coherence"],
        metrics["latents"]["clustering"]["nmi"],
    ):
        assert math.isfinite(value)
    figures_page = Path(outputs["evaluate"]["figures"]).read_text()
    assert figures_page.count("data:image/png;base64,") >= 3

    synthetic = Path(outputs["sample-augmentation"]["synthetic"])
    synthetic_summary = summarize(synthetic, validate=True)
    assert synthetic_summary["splits"]["train"]["rows"] == 50
    assert synthetic_summary["num_classes"] == 10  # labelled by the dataset's classifiers
    batch = MultimodalDataset(synthetic, "train").read_all()
    assert all(bool(batch.mask[m].all()) for m in model.modalities)
    # MoPoE without private latents: one GMM over the shared latent, saved for reuse.
    sampler = load_sampler(outputs["sample-augmentation"]["fitted_sampler"])
    assert sampler.kind == "gmm" and sampler.dim == model.config.latent_dim

    hub = Path(outputs["register"]["hub_model"])
    loaded = MultimodalVAE.from_pretrained(hub)
    reference = multivae.load_model(Path(outputs["train"]["model"]) / "model")
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    card = (hub / "README.md").read_text()
    assert "## Evaluation" in card and "## Intended use" in card and "## Limitations" in card
    assert f"{metrics['coherence']['mean']:.4f}" in card
    assert "someone/multivae-test" in card


@pytest.mark.integration
def test_mlflow_holds_one_parent_run_with_a_nested_run_per_step(local_run):
    from mlflow import MlflowClient

    _out, result = local_run
    client = MlflowClient(result["mlflow_uri"])
    experiment = client.get_experiment_by_name("multivae")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["multivae.kind"] == "pipeline"
    assert parent.data.params["model"] == "mopoe"
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert sorted(children) == sorted(STEPS)
    for run in children.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
    train_run = children["train"]
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "val_loss")] == [1, 2]
    evaluate_run = children["evaluate"]
    assert evaluate_run.data.tags["multivae.train_run_id"] == train_run.info.run_id
    assert "coherence.mean" in evaluate_run.data.metrics
    versions = client.search_model_versions("name='multivae'")
    # Registered from the pipeline's run, linked to the training run it comes from.
    assert [v.run_id for v in versions] == [parent.info.run_id]
    assert versions[0].tags["multivae.train_run_id"] == train_run.info.run_id
    assert children["register"].data.tags["multivae.registered_version"] == str(versions[0].version)

    # What MLflow's UI shows: a model-training experiment; the parent run's Dataset, Source
    # and Models columns; every step's source; the evaluation's dataset; system metrics.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    data = Path(result["outputs"]["preprocess"]["data"])
    parent, evaluate_run, train_run = (
        client.get_run(run.info.run_id) for run in (parent, evaluate_run, train_run)
    )
    (dataset,) = parent.inputs.dataset_inputs
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "training")]
    assert dataset.dataset.digest == dataset_fingerprint(data)
    assert json.loads(dataset.dataset.source) == {"uri": data.resolve().as_uri()}
    (evaluated,) = evaluate_run.inputs.dataset_inputs
    assert [(t.key, t.value) for t in evaluated.tags] == [("mlflow.data.context", "evaluation")]
    assert evaluated.dataset.digest == dataset.dataset.digest
    (trained,) = train_run.inputs.dataset_inputs
    assert trained.dataset.digest == dataset.dataset.digest
    model_id = versions[0].tags["multivae.model_id"]
    assert client.get_logged_model(model_id).source_run_id == parent.info.run_id
    assert [m.model_id for m in parent.outputs.model_outputs] == [model_id]
    assert [m.model_id for m in train_run.outputs.model_outputs] == [model_id]
    assert (parent.data.tags["mlflow.source.type"], parent.data.tags["mlflow.source.name"]) == (
        "JOB",
        "pipelines/pipeline.py",
    )
    for step, run in children.items():
        assert run.data.tags["mlflow.source.type"] == "JOB", step
        assert run.data.tags["mlflow.source.name"] == f"components/{step.replace('-', '_')}.py"
        assert run.data.tags["multivae.step"] == step
    assert "system/cpu_utilization_percentage" in train_run.data.metrics
    # The first registered version is the champion.
    assert client.get_registered_model("multivae").aliases == {"champion": versions[0].version}
    assert children["register"].data.tags["multivae.champion"] == "true"


@pytest.mark.integration
def test_a_rerun_takes_unchanged_steps_from_the_cache(local_run):
    out, result = local_run
    again = run_local(dict(SMALL), out)
    for step in ("preprocess", "train", "evaluate", "sample-augmentation"):
        assert again["outputs"][step] == result["outputs"][step], step
    assert again["outputs"]["register"] != result["outputs"]["register"]
    assert again["seconds"] < result["seconds"]


# ------------------------------------------------------------------------------------------------
# Bad parameters


@pytest.mark.integration
def test_a_bad_parameter_fails_at_the_first_step(tmp_path):
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "kfp"),
        raise_on_error=True,
    )
    with (
        pytest.warns(RuntimeWarning, match="custom or non-Python base image"),
        pytest.raises(RuntimeError, match="preprocess"),
    ):
        build_pipeline("local")(model_name="mopeo", mlflow_uri=f"sqlite:///{tmp_path / 'm.db'}")
    steps_run = {p.name for p in (tmp_path / "kfp").glob("*/*") if p.is_dir()}
    assert steps_run == {"preprocess"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_name": "mopeo"}, r"unknown model 'mopeo'.*Did you mean 'mopoe'"),
        ({"missing_rate": 1.0}, r"missing_rate: expected a number in \[0, 1\), found 1.0"),
        ({"missing_rate": -0.1}, r"missing_rate: expected a number in \[0, 1\)"),
        ({"dataset": "poly-digit"}, r"dataset: expected a built-in dataset"),
        ({"model_config": {"latent_dimm": 3}}, r"model_config: mopoe has no option"),
        ({"training": {"epoch": 3}}, r"training: .*epoch"),
        ({"sweep": "space: {lr: {normal: [0, 1]}}"}, r"sweep: .*unknown distribution 'normal'"),
        ({"sampler": "vae"}, r"sampler: expected one of"),
        ({"train_mode": "cloud"}, r"train_mode: expected one of"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter_named(tmp_path, overrides, message):
    from pipelines.arguments import check_arguments

    with pytest.raises(ConfigError, match=message):
        check_arguments({"mlflow_uri": "sqlite:///unused.db", **overrides})


def test_the_command_line_names_a_missing_sweep_file(tmp_path, capsys):
    status = main(["run-local", "--out", str(tmp_path), "--sweep", str(tmp_path / "none.yaml")])
    assert status == 2
    expected = f"--sweep {tmp_path / 'none.yaml'}: expected a sweep file (YAML), found nothing"
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "kfp").exists()
    status = main(["run-local", "--out", str(tmp_path), "--set", "modle_name=mvae"])
    assert status == 2
    assert "unknown pipeline parameter 'modle_name'" in capsys.readouterr().err


def test_set_names_pipeline_parameters_when_a_sweep_is_given(tmp_path):
    """``--set`` is checked against the pipeline's parameters, not the sweep file's fields."""
    from pipelines.arguments import pipeline_arguments
    from pipelines.cli import build_parser

    sweep = str(Path("examples/sweep-gaussian-views.yaml").resolve())

    def parsed(*sets: str) -> dict:
        argv = ["run-local", "--out", str(tmp_path), "--sweep", sweep]
        for entry in sets:
            argv += ["--set", entry]
        return pipeline_arguments(build_parser().parse_args(argv))

    assert parsed("dataset=poly-digits")["dataset"] == "poly-digits"
    # ``metric`` is a field of the sweep file, not a pipeline parameter.
    with pytest.raises(ValueError, match="unknown pipeline parameter 'metric'"):
        parsed("metric=1")


# ------------------------------------------------------------------------------------------------
# Submission


class _FakeKFP(BaseHTTPRequestHandler):
    """The KFP v2beta1 REST endpoints a submission touches; records every request."""

    seen: ClassVar[list] = []

    def _reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.seen.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, None))
        if self.path.endswith("/healthz"):
            return self._reply({"multi_user": False})
        return self._reply({"experiments": [], "total_size": 0})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path.endswith("/experiments"):
            return self._reply({"experiment_id": "exp-7", "display_name": body["display_name"]})
        return self._reply({"run_id": "run-42", "experiment_id": body["experiment_id"]})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_kfp():
    _FakeKFP.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _FakeKFP.seen
    server.shutdown()
    server.server_close()


def test_submit_sends_the_compiled_pipeline_and_parameters_to_the_endpoint(fake_kfp, compiled):
    host, seen = fake_kfp
    arguments = {"model_name": "mvae", "missing_rate": 0.3, "training": {"epochs": 4}}
    result = submit(arguments, host=host, token="token-abc", run_name="nightly")
    assert result.run_id == "run-42"
    posts = [(path, headers, body) for method, path, headers, body in seen if method == "POST"]
    assert [path for path, _, _ in posts] == ["/apis/v2beta1/experiments", "/apis/v2beta1/runs"]
    assert posts[0][2]["display_name"] == "multivae"
    _path, headers, run = posts[1]
    assert headers["authorization"] == "Bearer token-abc"
    assert run["experiment_id"] == "exp-7"
    assert run["display_name"] == "nightly"
    assert run["service_account"] == "multivae-pipeline"
    assert run["runtime_config"]["parameters"] == arguments
    pipeline, platform = _documents(compiled[0])
    assert run["pipeline_spec"]["pipeline_spec"] == pipeline
    assert run["pipeline_spec"]["platform_spec"] == platform


def test_submit_refuses_bad_parameters_before_any_request(fake_kfp):
    host, seen = fake_kfp
    with pytest.raises(ConfigError, match="missing_rate"):
        submit({"missing_rate": 2.0}, host=host)
    assert seen == []


def _executor_resources(pipeline):
    """Step name -> the resources of its executor, and step name -> its retry policy."""
    tasks = pipeline["root"]["dag"]["tasks"]
    executors = pipeline["deploymentSpec"]["executors"]
    components = pipeline["components"]
    resources = {
        name: executors[components[task["componentRef"]["name"]]["executorLabel"]]["container"].get(
            "resources"
        )
        for name, task in tasks.items()
    }
    return resources, {name: task.get("retryPolicy") for name, task in tasks.items()}


def test_every_step_declares_requests_limits_and_retries_on_a_cluster(compiled, tmp_path):
    pipeline, _ = _documents(compiled[0])
    resources, retries = _executor_resources(pipeline)
    assert set(resources) == set(STEPS) == set(STEP_RESOURCES)
    for step, expected in STEP_RESOURCES.items():
        declared = resources[step]
        assert declared["resourceCpuRequest"] == expected.cpu_request, step
        assert declared["resourceCpuLimit"] == expected.cpu_limit, step
        assert declared["resourceMemoryRequest"] == expected.memory_request, step
        assert declared["resourceMemoryLimit"] == expected.memory_limit, step
        assert "accelerator" not in declared, step
        if expected.retries:
            assert retries[step]["maxRetryCount"] == expected.retries, step
            assert retries[step]["backoffDuration"] == "30s", step
        else:
            assert retries[step] is None, step
    # Publishing has effects outside the step: never retried.
    assert retries["register"] is None and STEP_RESOURCES["register"].retries == 0

    with_gpu, _ = _documents(compile_pipeline(tmp_path / "gpu.yaml", train_gpus=2).read_text())
    gpu_resources, _ = _executor_resources(with_gpu)
    assert gpu_resources["train"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert gpu_resources["train"]["accelerator"]["resourceCount"] == "2"
    assert all("accelerator" not in r for step, r in gpu_resources.items() if step != "train")
    assert main(["compile", "--out", str(tmp_path / "cli.yaml"), "--train-gpus", "1"]) == 0
    cli_resources, _ = _executor_resources(_documents((tmp_path / "cli.yaml").read_text())[0])
    assert cli_resources["train"]["accelerator"]["resourceCount"] == "1"

    # The local runner gets plain components: no cluster resources, and no GPUs to ask for.
    (local,) = yaml.safe_load_all(compile_pipeline(tmp_path / "local.yaml", "local").read_text())
    local_resources, local_retries = _executor_resources(local)
    assert not any(local_resources.values()) and not any(local_retries.values())
    with pytest.raises(ValueError, match="train_gpus: expected 0, or a positive count"):
        build_pipeline("local", train_gpus=1)
    with pytest.raises(ValueError, match="found -1"):
        build_pipeline("kubernetes", train_gpus=-1)


def test_the_compiled_pipeline_runs_the_image_the_manifests_and_dockerfile_name(compiled):
    sys.path.insert(0, str(ROOT / "tests" / "infra"))
    from kustomize_render import containers, render_overlay
    from test_image import dockerfile_arg_defaults

    pipeline, _ = _documents(compiled[0])
    (image,) = {e["container"]["image"] for e in pipeline["deploymentSpec"]["executors"].values()}
    assert image == dockerfile_arg_defaults()["MULTIVAE_IMAGE"]
    for overlay in ("local", "gpu"):
        ours = {
            container["image"]
            for obj in render_overlay(overlay)
            for _, container in containers(obj)
            if "multivae" in container["image"].rsplit("/", 1)[-1]
        }
        assert ours == {image}, overlay


@pytest.mark.integration
def test_a_failed_step_is_reported_with_its_own_error(tmp_path, capsys):
    # A train step that cannot reach its Ray cluster: KFP says only "Inner task failed".
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    status = main(
        [
            "run-local",
            "--out",
            str(tmp_path / "runs"),
            "--train-mode",
            "ray-job",
            "--set",
            f"ray_address=http://127.0.0.1:{closed}",
            "--set",
            'dataset_params={"n_train": 60, "n_val": 20, "n_test": 20}',
            "--set",
            "classifier_epochs=1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert err[-1].startswith(
        "python -m pipelines run-local: error: the pipeline failed: step 'train' failed: "
        f"ConnectionError: Failed to connect to Ray at address: http://127.0.0.1:{closed}"
    ), err[-1]
    assert "Inner task failed" not in err[-1]
