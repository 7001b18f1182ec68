"""The battery of bad inputs and faults, through the command line as a user meets them.

Each case builds its situation in a fresh folder and runs one ``multivae`` command. Its outcome
is one of three classes, asserted exactly:

* ``refused``: exit status 2, one line on stderr naming what was expected and where (the
  ``says`` fragments), no traceback, and every file that was there before unchanged;
* ``accepted``: exit status 0, the command did its work.

``benchmarks/RESULTS.md`` reports the counts of this battery (``python -m pytest
tests/reliability -q`` prints them as the number of cases); add a case for every new command.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from kit.cli import SECRET, run_config, snapshot

from multivae.cli import main
from pipelines.cli import main as pipelines_main


@dataclass
class Case:
    """One bad input or fault: how to build it, the command, and the outcome expected."""

    name: str
    build: Callable[[Path, dict[str, Path]], list[str]]
    outcome: str  # "refused" or "accepted"
    says: tuple[str, ...] = ()
    hides: tuple[str, ...] = field(default=(SECRET,))
    program: str = "multivae"  # or "pipelines" (python -m pipelines)
    hub: str | None = None  # the Hub endpoint: "closed" (nothing listens) or "sNNN" (status)


def copy_dataset(shared: dict[str, Path], tmp: Path) -> Path:
    target = tmp / "copy"
    shutil.copytree(shared["data"], target)
    return target


def rewrite(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def set_column(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, table.schema.field(index), pa.array(values))


# ----------------------------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------------------------


def prepare_into_user_files(tmp, shared):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep")
    return ["prepare-data", "gaussian-views", "--out", str(tmp / "mine"), "--overwrite"]


def prepare_over_its_own_output(tmp, shared):
    shutil.copytree(shared["data"], tmp / "d")
    return ["prepare-data", "gaussian-views", "--out", str(tmp / "d"), "--param", "n_train=8"]


def prepare_over_its_own_output_with_overwrite(tmp, shared):
    shutil.copytree(shared["data"], tmp / "d")
    return [
        "prepare-data",
        "gaussian-views",
        "--out",
        str(tmp / "d"),
        "--overwrite",
        "--param",
        "n_train=8",
    ]


def prepare_inside_a_dataset(tmp, shared):
    data = copy_dataset(shared, tmp)
    return ["prepare-data", "gaussian-views", "--out", str(data / "train" / "more")]


def prepare_with_a_word_for_a_size(tmp, shared):
    return ["prepare-data", "gaussian-views", "--out", str(tmp / "d"), "--param", "n_train=abc"]


def prepare_with_a_negative_size(tmp, shared):
    return ["prepare-data", "gaussian-views", "--out", str(tmp / "d"), "--param", "n_train=-5"]


def prepare_with_an_unknown_parameter(tmp, shared):
    return ["prepare-data", "gaussian-views", "--out", str(tmp / "d"), "--param", "n_trian=5"]


def inspect_a_file(tmp, shared):
    (tmp / "f.txt").write_text("x")
    return ["inspect", str(tmp / "f.txt")]


def inspect_nothing(tmp, shared):
    return ["inspect", str(tmp / "absent")]


def validate_a_split_file_copied_twice(tmp, shared):
    data = copy_dataset(shared, tmp)
    (part,) = (data / "train").glob("*.parquet")
    shutil.copy(part, data / "train" / "part-00009.parquet")
    return ["inspect", str(data), "--validate"]


def validate_a_sample_in_two_splits(tmp, shared):
    data = copy_dataset(shared, tmp)
    (val,) = (data / "val").glob("*.parquet")
    rewrite(val, lambda t: set_column(t, "sample_id", np.zeros(t.num_rows, dtype=np.int64) + 3))
    return ["inspect", str(data), "--validate"]


def validate_splits_with_different_shapes(tmp, shared):
    data = copy_dataset(shared, tmp)
    other = tmp / "other"
    assert (
        main(
            [
                "prepare-data",
                "gaussian-views",
                "--out",
                str(other),
                "--param",
                "view_dim=9",
                "--param",
                "n_train=8",
                "--param",
                "n_val=4",
                "--param",
                "n_test=4",
            ]
        )
        == 0
    )
    shutil.rmtree(data / "val")
    shutil.copytree(other / "val", data / "val")
    return ["inspect", str(data), "--validate"]


def inspect_negative_labels(tmp, shared):
    data = copy_dataset(shared, tmp)
    (train,) = (data / "train").glob("*.parquet")

    def negative(table):
        labels = table.column("label").to_numpy().copy()
        labels[2] = -1
        return set_column(table, "label", labels)

    rewrite(train, negative)
    return ["inspect", str(data)]


def with_an_empty_split(tmp, shared):
    data = copy_dataset(shared, tmp)
    (val,) = (data / "val").glob("*.parquet")
    rewrite(val, lambda t: t.slice(0, 0))
    return data


def validate_an_empty_split(tmp, shared):
    return ["inspect", str(with_an_empty_split(tmp, shared)), "--validate"]


def train_on_an_empty_split(tmp, shared):
    return ["train", "--config", str(run_config(tmp / "run", with_an_empty_split(tmp, shared)))]


def with_null_presence_flags(tmp, shared):
    data = copy_dataset(shared, tmp)
    (train,) = (data / "train").glob("*.parquet")

    def null_flag(table):
        index = table.schema.get_field_index("view0__present")
        flags = table.column(index).to_pylist()
        flags[3] = None
        return table.set_column(index, pa.field("view0__present", pa.bool_()), pa.array(flags))

    rewrite(train, null_flag)
    return data


def inspect_null_presence_flags(tmp, shared):
    return ["inspect", str(with_null_presence_flags(tmp, shared))]


def train_on_null_presence_flags(tmp, shared):
    data = with_null_presence_flags(tmp, shared)
    return ["train", "--config", str(run_config(tmp / "run", data))]


def train_with_a_folder_as_config(tmp, shared):
    (tmp / "configs").mkdir()
    return ["train", "--config", str(tmp / "configs")]


def train_with_a_missing_config(tmp, shared):
    return ["train", "--config", str(tmp / "absent.yaml")]


def train_with_a_misspelled_model(tmp, shared):
    config = run_config(tmp / "run", shared["data"])
    return ["train", "--config", str(config), "--set", "model=mvea"]


def train_again_over_a_finished_run(tmp, shared):
    shutil.copytree(shared["run"], tmp / "run")
    config = run_config(tmp / "run", shared["data"])
    return ["train", "--config", str(config)]


def train_over_a_model_without_its_checkpoint(tmp, shared):
    shutil.copytree(shared["run"], tmp / "run")
    (tmp / "run" / "checkpoint.pt").unlink()  # a model folder a new run would replace
    config = run_config(tmp / "run", shared["data"])
    return ["train", "--config", str(config)]


def resume_with_another_learning_rate(tmp, shared):
    shutil.copytree(shared["run"], tmp / "run")
    config = run_config(tmp / "run", shared["data"])
    return [
        "train",
        "--config",
        str(config),
        "--resume",
        "--set",
        "training.optimizer.kwargs.lr=0.5",
    ]


def resume_with_another_seed(tmp, shared):
    shutil.copytree(shared["run"], tmp / "run")
    config = run_config(tmp / "run", shared["data"])
    return ["train", "--config", str(config), "--resume", "--set", "training.seed=9"]


def resume_with_more_epochs(tmp, shared):
    shutil.copytree(shared["run"], tmp / "run")
    config = run_config(tmp / "run", shared["data"])
    return ["train", "--config", str(config), "--resume", "--set", "training.epochs=2"]


def resume_on_other_data(tmp, shared):
    shutil.copytree(shared["run"], tmp / "run")
    data = copy_dataset(shared, tmp)
    (train,) = (data / "train").glob("*.parquet")
    rewrite(train, lambda t: t.slice(0, t.num_rows - 1))
    config = run_config(tmp / "run", data)
    return ["train", "--config", str(config), "--resume"]


def train_on_a_dataset_with_duplicate_ids(tmp, shared):
    data = copy_dataset(shared, tmp)
    (part,) = (data / "train").glob("*.parquet")
    shutil.copy(part, data / "train" / "part-00009.parquet")
    return ["train", "--config", str(run_config(tmp / "run", data))]


def train_with_credentials_in_a_uri(tmp, shared):
    config = run_config(tmp / "run", shared["data"])
    # A data location given as a URL with a password: the error names it, redacted.
    return ["train", "--config", str(config), "--set", f"data=https://alice:{SECRET}@files/x"]


def sample_into_a_dataset(tmp, shared):
    data = copy_dataset(shared, tmp)
    return ["sample", "--model", str(shared["model"]), "--n", "4", "--out", str(data / "val")]


def sample_over_another_dataset(tmp, shared):
    data = copy_dataset(shared, tmp)
    (data / ".multivae-output.json").unlink()  # a dataset this command did not write
    return ["sample", "--model", str(shared["model"]), "--n", "4", "--out", str(data)]


def sample_over_its_own_output(tmp, shared):
    first = ["sample", "--model", str(shared["model"]), "--n", "4", "--out", str(tmp / "s")]
    assert main(first) == 0
    return first


def sample_from_a_mistyped_model_path(tmp, shared):
    return ["sample", "--model", str(tmp / "no" / "model"), "--n", "4", "--out", str(tmp / "s")]


def sample_from_truncated_weights(tmp, shared):
    shutil.copytree(shared["model"], tmp / "model")
    weights = tmp / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["sample", "--model", str(tmp / "model"), "--n", "4", "--out", str(tmp / "s")]


def sample_from_nan_weights(tmp, shared):
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(shared["model"], tmp / "model")
    weights = tmp / "model" / "model.safetensors"
    state = load_file(str(weights))
    first = sorted(key for key, value in state.items() if value.is_floating_point())[0]
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(weights))
    return ["sample", "--model", str(tmp / "model"), "--n", "4", "--out", str(tmp / "s")]


def sample_from_a_hub_repository(tmp, shared):
    return ["sample", "--model", "someone/some-model", "--n", "4", "--out", str(tmp / "s")]


def impute_onto_its_source(tmp, shared):
    data = copy_dataset(shared, tmp)
    return ["impute", "--model", str(shared["model"]), "--data", str(data), "--out", str(data)]


def impute_into_user_files(tmp, shared):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep")
    return [
        "impute",
        "--model",
        str(shared["model"]),
        "--data",
        str(shared["data"]),
        "--out",
        str(tmp / "mine"),
    ]


def classifiers_inside_the_dataset(tmp, shared):
    data = copy_dataset(shared, tmp)
    return ["train-classifiers", str(data), "--epochs", "1", "--out", str(data / "classifiers")]


def classifiers_over_their_earlier_set(tmp, shared):
    data = copy_dataset(shared, tmp)
    shutil.copytree(shared["classifiers"], tmp / "copy-classifiers")
    return ["train-classifiers", str(data), "--epochs", "1"]


def classifiers_over_their_earlier_set_with_overwrite(tmp, shared):
    return [*classifiers_over_their_earlier_set(tmp, shared), "--overwrite"]


def evaluate_with_the_classifiers_of_other_data(tmp, shared):
    other = tmp / "other"
    prepare = ["prepare-data", "gaussian-views", "--out", str(other), "--seed", "1"]
    sizes = ["--param", "n_train=16", "--param", "n_val=4", "--param", "n_test=4"]
    assert main([*prepare, *sizes]) == 0
    shutil.copytree(shared["classifiers"], tmp / "other-classifiers")
    model = str(shared["model"])
    return ["evaluate", "--model", model, "--data", str(other), "--out", str(tmp / "report")]


def evaluate_into(tmp, shared, files):
    """``multivae evaluate`` into ``tmp/report``, made beforehand with ``files``."""
    report = tmp / "report"
    report.mkdir()
    for name, text in files.items():
        (report / name).write_text(text)
    model, data = str(shared["model"]), str(shared["data"])
    return ["evaluate", "--model", model, "--data", data, "--out", str(report)]


def evaluate_into_user_files(tmp, shared):
    return evaluate_into(tmp, shared, {"notes.txt": "keep"})


def evaluate_over_an_earlier_evaluation(tmp, shared):
    marker = {"kind": "evaluation", "command": "multivae evaluate", "created": "earlier"}
    return evaluate_into(
        tmp, shared, {"metrics.json": "{}", ".multivae-output.json": json.dumps(marker)}
    )


def tune_with_negative_workers(tmp, shared):
    sweep = {
        "run": {"model": "mvae", "data": str(shared["data"]), "output_dir": "unused"},
        "output_dir": str(tmp / "sweep"),
        "space": {"model_config.latent_dim": {"choice": [2]}},
        "train_workers": -1,
    }
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return ["tune", "--sweep", str(tmp / "sweep.yaml")]


def tune_with_an_unknown_space_key(tmp, shared):
    sweep = {
        "run": {"model": "mvae", "data": str(shared["data"]), "output_dir": "unused"},
        "output_dir": str(tmp / "sweep"),
        "space": {"model_config.betta": {"uniform": [0.5, 1.5]}},
    }
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return ["tune", "--sweep", str(tmp / "sweep.yaml")]


def submit_to(host):
    return ["submit", "--host", host, "--token", SECRET]


def submit_where_nothing_listens(tmp, shared):
    return submit_to(f"http://{shared['endpoints']['closed']}")


def submit_to_a_host_that_does_not_resolve(tmp, shared):
    return submit_to("http://kfp.invalid:8888")


def submit_to_a_server_that_is_not_kfp(tmp, shared):
    return submit_to(f"{shared['endpoints']['http']}/s404")


def submit_with_a_refused_token(tmp, shared):
    return submit_to(f"{shared['endpoints']['http']}/s401")


def submit_to_a_server_that_creates_no_run(tmp, shared):
    return submit_to(f"{shared['endpoints']['http']}/s200")


def run_pipeline_into_user_files(tmp, shared):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep")
    return ["run-local", "--out", str(tmp / "mine")]


def run_pipeline_with_a_sweep(tmp, space):
    (tmp / "sweep.yaml").write_text(yaml.safe_dump({"space": space, "num_samples": 2}))
    return ["run-local", "--out", str(tmp / "runs"), "--sweep", str(tmp / "sweep.yaml")]


def run_pipeline_sweeping_a_misspelled_option(tmp, shared):
    return run_pipeline_with_a_sweep(tmp, {"model_config.betta": {"uniform": [0.5, 1.5]}})


def run_pipeline_sweeping_an_unknown_model(tmp, shared):
    return run_pipeline_with_a_sweep(tmp, {"model": {"choice": ["mvae", "mopoee"]}})


def train_tracked_where_no_mlflow_answers(tmp, shared):
    config = run_config(tmp / "run", shared["data"])
    uri = f"http://alice:{SECRET}@{shared['endpoints']['closed']}"
    return ["train", "--config", str(config), "--set", "mlflow.enabled=true",
            "--set", f"mlflow.tracking_uri={uri}"]  # fmt: skip


def train_on_ray_where_no_cluster_listens(tmp, shared):
    config = run_config(tmp / "run", shared["data"])
    address = shared["endpoints"]["closed"]
    return ["train", "--config", str(config), "--ray", "--set", f"ray.address={address}"]


def sweep_file(tmp, shared, **settings):
    sweep = {
        "run": {"model": "mvae", "data": str(shared["data"]), "output_dir": "unused",
                "mlflow": settings.pop("mlflow", {"enabled": False})},
        "output_dir": str(tmp / "sweep"),
        "space": {"model_config.latent_dim": {"choice": [2]}},
        **settings,
    }  # fmt: skip
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return ["tune", "--sweep", str(tmp / "sweep.yaml")]


def tune_tracked_where_no_mlflow_answers(tmp, shared):
    uri = f"http://{shared['endpoints']['closed']}"
    return sweep_file(tmp, shared, mlflow={"tracking_uri": uri})


def tune_on_ray_where_no_cluster_listens(tmp, shared):
    return sweep_file(tmp, shared, address=f"ray://{shared['endpoints']['closed']}")


CASES = [
    Case("prepare-data into a folder of user files", prepare_into_user_files, "refused",
         ("did not write", "nothing there is replaced")),
    Case("prepare-data over its own earlier output", prepare_over_its_own_output, "refused",
         ("holds an earlier dataset", "--overwrite")),
    Case("prepare-data --overwrite over its own output", prepare_over_its_own_output_with_overwrite,
         "accepted"),
    Case("prepare-data inside a dataset", prepare_inside_a_dataset, "refused",
         ("inside the dataset", "outputs never land inside")),
    Case("prepare-data --param n_train=abc", prepare_with_a_word_for_a_size, "refused",
         ("parameter n_train: expected an integer, found 'abc'",)),
    Case("prepare-data --param n_train=-5", prepare_with_a_negative_size, "refused",
         ("parameter n_train: expected an integer >= 1, found -5",)),
    Case("prepare-data --param n_trian=5", prepare_with_an_unknown_parameter, "refused",
         ("unknown parameter 'n_trian'", "Did you mean 'n_train'")),
    Case("inspect a file", inspect_a_file, "refused", ("expected a dataset folder, found a file",)),
    Case("inspect a missing folder", inspect_nothing, "refused",
         ("expected a dataset folder, found nothing there",)),
    Case("inspect --validate, a split file copied twice", validate_a_split_file_copied_twice,
         "refused", ("part-00009.parquet", "column 'sample_id'", "expected unique sample_id")),
    Case("inspect --validate, a sample in two splits", validate_a_sample_in_two_splits, "refused",
         ("val/part-00000.parquet", "expected unique sample_id")),
    Case("inspect --validate, splits of different shapes", validate_splits_with_different_shapes,
         "refused", ("val/part-00000.parquet", "view0 (8,) float32", "view0 (9,) float32")),
    Case("inspect, a negative label", inspect_negative_labels, "refused",
         ("column 'label'", "expected labels in [0, 3], found -1")),
    Case("inspect --validate, an empty split", validate_an_empty_split, "refused",
         ("copy/val: expected at least one row in each split, found 0",)),
    Case("train on an empty split", train_on_an_empty_split, "refused",
         ("copy/val: expected at least one row in each split",)),
    Case("inspect, null presence flags", inspect_null_presence_flags, "refused",
         ("copy/train, column 'view0__present': found 1 null cells",)),
    Case("train on null presence flags", train_on_null_presence_flags, "refused",
         ("column 'view0__present': found 1 null cells",)),
    Case("train --config FOLDER", train_with_a_folder_as_config, "refused",
         ("expected a run config file (YAML or JSON), found a folder",)),
    Case("train --config MISSING", train_with_a_missing_config, "refused",
         ("expected a run config file (YAML or JSON), found nothing",)),
    Case("train, a misspelled model", train_with_a_misspelled_model, "refused",
         ("unknown model 'mvea'", "Did you mean 'mvae'")),
    Case("train over a finished run", train_again_over_a_finished_run, "refused",
         ("checkpoint.pt exists", "--resume")),
    Case("train over a model without its checkpoint", train_over_a_model_without_its_checkpoint,
         "refused", ("already holds ['model', 'metrics.json'] without a checkpoint",)),
    Case("train --resume with another learning rate", resume_with_another_learning_rate, "refused",
         ("resuming would change the run", "training.optimizer.kwargs.lr: 0.001 -> 0.5")),
    Case("train --resume with another seed", resume_with_another_seed, "refused",
         ("training.seed: 0 -> 9",)),
    Case("train --resume with more epochs", resume_with_more_epochs, "accepted"),
    Case("train --resume on other data", resume_on_other_data, "refused",
         ("resuming would change the run: data:",)),
    Case("train on a dataset with duplicate sample ids", train_on_a_dataset_with_duplicate_ids,
         "refused", ("expected unique sample_id",)),
    Case("train, a password in a URI it names", train_with_credentials_in_a_uri, "refused",
         ("alice:***@files", "expected a dataset folder")),
    Case("sample into a dataset's split folder", sample_into_a_dataset, "refused",
         ("inside the dataset",)),
    Case("sample over a dataset it did not write", sample_over_another_dataset, "refused",
         ("did not write",)),
    Case("sample over its own earlier output", sample_over_its_own_output, "refused",
         ("holds an earlier dataset (multivae sample", "--overwrite")),
    Case("sample from a mistyped model path", sample_from_a_mistyped_model_path, "refused",
         ("expected a model folder or a Hub repository id",)),
    Case("sample from truncated weights", sample_from_truncated_weights, "refused",
         ("model.safetensors: expected a safetensors file of weights", "truncated or corrupt")),
    Case("sample from NaN weights", sample_from_nan_weights, "refused",
         ("model.safetensors: tensor", "holds NaN or infinite values")),
    Case("sample from a Hub that cannot be reached", sample_from_a_hub_repository, "refused",
         ("someone/some-model: could not reach the Hub (http://127.0.0.1",
          "not in the local cache"), hub="closed"),
    Case("sample from a Hub that does not give the repository", sample_from_a_hub_repository,
         "refused", ("the Hub did not give the repository", "404 Not Found"), hub="s404"),
    Case("sample from a Hub that wants credentials", sample_from_a_hub_repository, "refused",
         ("answered Client error '401 Unauthorized'",), hub="s401"),
    Case("impute onto its source", impute_onto_its_source, "refused",
         ("the output folder is the source dataset",)),
    Case("impute into a folder of user files", impute_into_user_files, "refused",
         ("did not write",)),
    Case("train-classifiers into the dataset", classifiers_inside_the_dataset, "refused",
         ("inside the dataset", "outputs never land inside")),
    Case("train-classifiers over its earlier set", classifiers_over_their_earlier_set, "refused",
         ("copy-classifiers: holds an earlier classifiers", "--overwrite")),
    Case("train-classifiers --overwrite over its earlier set",
         classifiers_over_their_earlier_set_with_overwrite, "accepted"),
    Case("evaluate with the classifiers of other data", evaluate_with_the_classifiers_of_other_data,
         "refused", ("other-classifiers: expected the classifiers of", "trained on other data")),
    Case("evaluate into a folder of user files", evaluate_into_user_files, "refused",
         ("holds files multivae evaluate did not write",)),
    Case("evaluate over an earlier evaluation", evaluate_over_an_earlier_evaluation, "refused",
         ("holds an earlier evaluation", "--overwrite")),
    Case("train, an MLflow server that does not answer", train_tracked_where_no_mlflow_answers,
         "refused", ("mlflow.tracking_uri: could not reach the MLflow tracking server at "
                     "http://alice:***@127.0.0.1", "nothing listens there")),
    Case("train --ray, a Ray address where nothing listens", train_on_ray_where_no_cluster_listens,
         "refused", ("ray.address: could not reach a Ray cluster at 127.0.0.1",)),
    Case("tune, an MLflow server that does not answer", tune_tracked_where_no_mlflow_answers,
         "refused", ("run.mlflow.tracking_uri: could not reach the MLflow tracking server",)),
    Case("tune, a Ray address where nothing listens", tune_on_ray_where_no_cluster_listens,
         "refused", ("could not reach a Ray cluster at ray://127.0.0.1",
                     "nothing listens there")),
    Case("pipelines submit, a host where nothing listens", submit_where_nothing_listens,
         "refused", ("could not reach the KFP API at http://127.0.0.1", "nothing listens there"),
         program="pipelines"),
    Case("pipelines submit, a host name that does not resolve",
         submit_to_a_host_that_does_not_resolve, "refused",
         ("could not reach the KFP API at http://kfp.invalid:8888",), program="pipelines"),
    Case("pipelines submit, a server that is not KFP (404)", submit_to_a_server_that_is_not_kfp,
         "refused", ("answered HTTP 404", "expected the KFP API endpoint"), program="pipelines"),
    Case("pipelines submit, a token refused (401)", submit_with_a_refused_token, "refused",
         ("answered HTTP 401", "the token was refused"), program="pipelines"),
    Case("pipelines submit, a server that creates no run", submit_to_a_server_that_creates_no_run,
         "refused", ("answered without a run id",), program="pipelines"),
    Case("pipelines run-local into a folder of user files", run_pipeline_into_user_files,
         "refused", ("holds files python -m pipelines run-local did not write",),
         program="pipelines"),
    Case("pipelines run-local, a sweep of a misspelled model option",
         run_pipeline_sweeping_a_misspelled_option, "refused",
         ("sweep: space.model_config.betta = 0.5 (model mopoe): mopoe has no option 'betta'",
          "Did you mean 'beta'"), program="pipelines"),
    Case("pipelines run-local, a sweep of an unknown model", run_pipeline_sweeping_an_unknown_model,
         "refused", ("sweep: space.model = 'mopoee'", "Did you mean 'mopoe'"),
         program="pipelines"),
    Case("tune, train_workers -1", tune_with_negative_workers, "refused",
         ("train_workers: expected >= 0, found -1",)),
    Case("tune, a misspelled model option", tune_with_an_unknown_space_key, "refused",
         ("space.model_config.betta", "Did you mean 'beta'")),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case, shared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MULTIVAE_CACHE", str(tmp_path / "cache"))
    if case.hub is not None:
        from huggingface_hub import constants

        urls = shared["endpoints"]
        closed = f"http://{urls['closed']}"
        endpoint = closed if case.hub == "closed" else f"{urls['http']}/{case.hub}"
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    work = tmp_path / "work"
    work.mkdir()
    argv = case.build(work, shared)
    capsys.readouterr()
    before, shared_before = snapshot(work), snapshot(shared["data"].parent)
    status = (pipelines_main if case.program == "pipelines" else main)(argv)
    err = capsys.readouterr().err
    assert snapshot(shared["data"].parent) == shared_before  # the shared data is never touched
    for secret in case.hides:
        assert secret not in err
    if case.outcome == "refused":
        assert status == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        program = "python -m pipelines" if case.program == "pipelines" else "multivae"
        assert len(lines) == 1 and lines[0].startswith(f"{program} {argv[0]}: error: "), err
        assert "Traceback" not in err
        for fragment in case.says:
            assert fragment in err, err
        assert snapshot(work) == before  # nothing that was there changed, nothing half-written
        assert not [p for p in work.rglob(".*tmp-*")], "a staging folder was left behind"
    else:
        assert case.outcome == "accepted"
        assert status == 0, err


def test_the_battery_counts_are_reported():
    refused = sum(case.outcome == "refused" for case in CASES)
    accepted = sum(case.outcome == "accepted" for case in CASES)
    results = (Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md").read_text()
    assert f"{len(CASES)} cases: {refused} refused with a clear one-line error" in results, (
        "benchmarks/RESULTS.md must report the battery's current counts"
    )
    assert f"{accepted} rightly accepted" in results
    json.dumps([case.name for case in CASES])  # names are plain text
