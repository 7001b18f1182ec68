"""Bad Ray and sweep input: a clear error before any cluster work starts."""

import pytest
import ray

from multivae.config import ConfigError
from multivae.data import DataFormatError
from multivae.data.datasets import prepare_builtin
from multivae.integrations.sweep_file import load_sweep
from multivae.integrations.tune import run_sweep
from multivae.run import run_training
from multivae.run_config import RunConfig


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return prepare_builtin(
        "gaussian-views",
        tmp_path_factory.mktemp("inputs") / "views",
        missing_rate=0.3,
        seed=0,
        n_train=50,
        n_val=20,
        n_test=20,
    )


@pytest.fixture(autouse=True)
def no_cluster_is_started():
    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized(), "the error came after Ray had started"


def write_sweep(tmp_path, data, space, **settings):
    lines = [
        "run:",
        "  model: mopoe",
        f"  data: {data}",
        "  output_dir: unused",
        f"output_dir: {tmp_path / 'sweep'}",
        "space:",
        *(f"  {line}" for line in space),
        *(f"{key}: {value}" for key, value in settings.items()),
    ]
    path = tmp_path / "sweep.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_misspelled_model_option_in_the_space_is_named_with_a_suggestion(views, tmp_path):
    path = write_sweep(tmp_path, views, ["model_config.betta: {uniform: [0.5, 2.0]}"])
    sweep, base = load_sweep(path)
    with pytest.raises(ConfigError, match=r"space\.model_config\.betta.*Did you mean 'beta'"):
        run_sweep(sweep, base)


def test_an_option_that_one_candidate_model_lacks_is_refused(views, tmp_path):
    # MoPoE has subsets; MVAE does not: the sweep may pick MVAE with it.
    path = write_sweep(
        tmp_path,
        views,
        ["model: {choice: [mopoe, mvae]}", "model_config.subsets: {choice: [null]}"],
    )
    sweep, base = load_sweep(path)
    with pytest.raises(ConfigError, match=r"space\.model_config\.subsets = None \(model mvae\)"):
        run_sweep(sweep, base)


def test_an_unknown_run_key_in_the_space_is_refused(views, tmp_path):
    path = write_sweep(tmp_path, views, ["trainig.epochs: {choice: [1, 2]}"])
    sweep, base = load_sweep(path)
    with pytest.raises(ConfigError, match=r"trainig.*Did you mean 'training'"):
        run_sweep(sweep, base)


def test_an_empty_space_is_refused(views, tmp_path):
    path = write_sweep(tmp_path, views, ["{}"])
    path.write_text(path.read_text().replace("space:\n  {}", "space: {}"))
    with pytest.raises(ConfigError, match="space: expected at least one parameter"):
        load_sweep(path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{loguniform: [0.0, 1.0]}", "expected low > 0"),
        ("{uniform: [2.0, 1.0]}", "low < high"),
        ("{normal: [0, 1]}", "unknown distribution 'normal'"),
        ("[1, 2]", r"space\.model_config\.beta: expected a mapping, found \[1, 2\]"),
        ("{uniform: [1.0, 2.0], choice: [1]}", "expected one distribution"),
    ],
)
def test_bad_distributions_are_refused(views, tmp_path, spec, message):
    path = write_sweep(tmp_path, views, [f"model_config.beta: {spec}"])
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_more_workers_than_cpus_is_refused(views, tmp_path):
    config = RunConfig.from_dict(
        {
            "model": "mopoe",
            "data": str(views),
            "output_dir": str(tmp_path / "run"),
            "ray": {"num_workers": 64},
        }
    )
    with pytest.raises(ConfigError, match=r"64 workers need 64 CPU .* on this machine"):
        run_training(config)


def test_a_dataset_that_does_not_exist_is_refused(tmp_path):
    config = RunConfig.from_dict(
        {
            "model": "mopoe",
            "data": str(tmp_path / "nowhere"),
            "output_dir": str(tmp_path / "run"),
            "ray": {"num_workers": 1},
        }
    )
    with pytest.raises(DataFormatError, match="nowhere"):
        run_training(config)


@pytest.mark.parametrize("name", ["sweep-gaussian-views", "sweep-poly-digits"])
def test_the_example_sweeps_pass_the_checks(name, tmp_path, monkeypatch):
    from pathlib import Path

    from multivae.integrations.sweep_file import check_sweep

    monkeypatch.setenv("MULTIVAE_CACHE", str(tmp_path / "cache"))
    sweep, base = load_sweep(Path(__file__).resolve().parents[2] / "examples" / f"{name}.yaml")
    check_sweep(sweep, base)
    assert sweep.num_samples > 1 and sweep.scheduler is not None


def test_no_report_of_a_run_uses_a_key_ray_tune_reserves(tmp_path):
    import ray.tune.result as tune_result

    from multivae.integrations import ray_worker
    from multivae.training import TrainingResult

    # Every key Tune fills in or acts on is in the project's list (a Ray upgrade adding one
    # fails here).
    tune_keys = set(tune_result.AUTO_RESULT_KEYS) | {
        tune_result.DONE,
        tune_result.SHOULD_CHECKPOINT,
        tune_result.TRIAL_ID,
        tune_result.EXPERIMENT_TAG,
        tune_result.TIMESTEPS_THIS_ITER,
        tune_result.EPISODES_THIS_ITER,
    }
    assert tune_keys <= ray_worker.TUNE_RESERVED_KEYS
    assert ray_worker.FINAL_REPORT_KEY not in tune_keys

    # The final report of a run, as the worker's callback builds it, reaches ray.train.report
    # without a reserved key; a reserved key is refused before Ray is called.
    for name in ("checkpoint.pt", "metrics.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model").mkdir()
    result = TrainingResult(
        history=[{"epoch": 2, "stage": "main", "train_loss": 1.5, "epoch_time": 0.1}],
        monitor="train_loss",
        best_epoch=2,
        best_loss=1.5,
        epochs_run=2,
        wall_time=0.2,
        early_stopped=[],
        stopped_by_callback=False,
        output_dir=tmp_path,
        checkpoint_path=tmp_path / "checkpoint.pt",
        model_dir=tmp_path / "model",
        metrics_path=tmp_path / "metrics.json",
    )
    reported = []
    original = ray_worker._report

    def checked(metrics, files):
        # The real check, then the capture instead of ray.train.report (no Train session).
        if set(metrics) & ray_worker.TUNE_RESERVED_KEYS:
            original(metrics, files)
        reported.append(dict(metrics))

    ray_worker._report = checked
    try:
        ray_worker.RayReportCallback().on_train_end(result)
    finally:
        ray_worker._report = original
    (final,) = reported
    assert final[ray_worker.FINAL_REPORT_KEY] is True
    assert not set(final) & ray_worker.TUNE_RESERVED_KEYS
    with pytest.raises(ValueError, match=r"keys \['done'\] are reserved by Ray Tune"):
        ray_worker._report({"train_loss": 1.0, "done": True}, {})


def test_the_sweep_plan_sizes_concurrency_from_the_cluster(views, tmp_path):
    from multivae.integrations.sweep_file import TRAIN_DRIVER_CPUS
    from multivae.integrations.sweep_plan import plan_sweep

    path = write_sweep(
        tmp_path,
        views,
        ["model_config.latent_dim: {choice: [2, 4]}"],
        train_workers=2,
        max_concurrent_trials=3,
    )
    sweep, base = load_sweep(path)
    # A Train trial's driver reserves little: 0.25 (driver) + 2 x 1 (workers) + 1 (headroom).
    assert TRAIN_DRIVER_CPUS == 0.25
    plan = plan_sweep(sweep, base, {"CPU": 9.0})
    assert plan.trial == {"CPU": 3.25} and plan.concurrency == 2
    assert plan_sweep(sweep, base, {"CPU": 100.0}).concurrency == 3  # max_concurrent_trials
    assert "2 trial(s) at once, each 3.25 CPUs" in plan.describe()
    with pytest.raises(
        ConfigError,
        match=r"a trial needs 3.25 CPU \(driver 0.25 \+ 2 train_workers x 1 cpus_per_worker "
        r"\+ 1 for its dataset's read tasks\), the Ray cluster has 3\.",
    ):
        plan_sweep(sweep, base, {"CPU": 3.0})
    # Without Train workers the driver trains: no headroom, 1 CPU a trial.
    single = load_sweep(write_sweep(tmp_path, views, ["model_config.latent_dim: {choice: [2]}"]))
    assert plan_sweep(*single, {"CPU": 3.0}).trial == {"CPU": 1.0}
    assert plan_sweep(*single, {"CPU": 3.0}).concurrency == min(3, single[0].max_concurrent_trials)


def test_the_sweep_plan_counts_gpus_and_custom_resources_of_the_workers(views, tmp_path):
    from multivae.integrations.sweep_plan import plan_sweep

    path = write_sweep(
        tmp_path,
        views,
        ["model_config.latent_dim: {choice: [2, 4]}"],
        train_workers=2,
        max_concurrent_trials=4,
        trial_resources="{cpu: 0.5}",
    )
    text = path.read_text().replace(
        "  output_dir: unused\n",
        "  output_dir: unused\n  ray: {cpus_per_worker: 2, gpus_per_worker: 0.5, "
        "resources_per_worker: {trainer: 1}}\n",
    )
    path.write_text(text)
    sweep, base = load_sweep(path)
    # 0.5 + 2 x 2 + 1 CPUs, 2 x 0.5 GPUs and 2 x 1 trainer per trial.
    cluster = {"CPU": 100.0, "GPU": 2.0, "trainer": 3.0}
    plan = plan_sweep(sweep, base, cluster)
    assert plan.trial == {"CPU": 5.5, "GPU": 1.0, "trainer": 2.0}
    assert plan.concurrency == 1  # the custom resource holds one trial, the GPUs two
    assert plan_sweep(sweep, base, {**cluster, "trainer": 8.0}).concurrency == 2
    with pytest.raises(
        ConfigError,
        match=r"a trial needs 2 trainer, the Ray cluster has 0; 1 GPU, the Ray cluster has 0\.",
    ):
        plan_sweep(sweep, base, {"CPU": 100.0})


@pytest.mark.parametrize(
    ("ray_section", "message"),
    [
        ({"max_failures": -1}, r"ray\.max_failures: expected >= 0 \(a bounded number\), found -1"),
        ({"controller_failure_limit": -1}, r"ray\.controller_failure_limit: expected >= 0"),
        ({"worker_start_timeout_s": 0}, r"ray\.worker_start_timeout_s: expected > 0 seconds"),
        (
            {"resources_per_worker": {"trainer": -1}},
            r"resources_per_worker\.trainer: expected >= 0",
        ),
    ],
)
def test_unbounded_or_negative_failure_settings_are_refused(ray_section, message):
    from multivae.run_config import RayConfig

    with pytest.raises(ConfigError, match=message):
        RayConfig.from_dict(ray_section)


def test_sweep_settings_are_checked(views, tmp_path):
    for settings, message in [
        ({"train_workers": -1}, r"train_workers: expected >= 0, found -1"),
        ({"verbose": 3}, r"verbose: expected 0, 1 or 2, found 3"),
        ({"trial_resources": "{cpu: -1}"}, r"trial_resources\.cpu: expected a number >= 0"),
    ]:
        path = write_sweep(tmp_path, views, ["model_config.latent_dim: {choice: [2]}"], **settings)
        with pytest.raises(ConfigError, match=message):
            load_sweep(path)
    # The driver's default: 1 CPU when it trains, little when Train workers do.
    sweep, _ = load_sweep(write_sweep(tmp_path, views, ["model_config.latent_dim: {choice: [2]}"]))
    assert sweep.driver_resources() == {"cpu": 1.0}
    trains = write_sweep(
        tmp_path, views, ["model_config.latent_dim: {choice: [2]}"], train_workers=2
    )
    assert load_sweep(trains)[0].driver_resources() == {"cpu": 0.25}


def test_a_ray_resume_that_would_change_the_run_is_refused_before_any_worker(views, tmp_path):
    from multivae.integrations.ray_train import prepare_ray_run

    run = {
        "model": "mvae",
        "data": str(views),
        "output_dir": str(tmp_path / "run"),
        "model_config": {"latent_dim": 2},
        "training": {"epochs": 1, "progress_bar": False},
        "mlflow": {"enabled": False},
    }
    run_training(RunConfig.from_dict(run))  # a local run's checkpoint, continued on Ray
    on_ray = {**run, "ray": {"num_workers": 1}, "training": {"epochs": 2, "progress_bar": False}}
    assert prepare_ray_run(RunConfig.from_dict(on_ray), resume=True).identity["data"]
    changed = {**on_ray, "training": {"epochs": 2, "progress_bar": False, "batch_size": 8}}
    with pytest.raises(ConfigError, match=r"resuming would change the run: training\.batch_size"):
        prepare_ray_run(RunConfig.from_dict(changed), resume=True)
    assert not ray.is_initialized()


class ParquetShard:
    """A worker's dataset shard as Ray Data hands it over: NumPy batches of the Parquet columns
    (read here with pyarrow, as Ray Data's Parquet reader does), so no Ray is needed."""

    def __init__(self, folder):
        import pyarrow.parquet as pq

        self.table = pq.read_table(folder)

    def iter_batches(self, batch_size, batch_format, prefetch_batches, **options):
        assert batch_format == "numpy"
        for batch in self.table.to_batches(max_chunksize=batch_size):
            columns = {}
            for name in batch.schema.names:
                column = batch.column(name)
                if hasattr(column, "to_numpy_ndarray"):
                    columns[name] = column.to_numpy_ndarray()
                else:
                    columns[name] = column.to_numpy(zero_copy_only=False)
            yield columns


def test_the_ray_data_path_refuses_the_rows_the_local_reader_refuses_with_its_message(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from multivae.data import MultimodalDataset, read_schema
    from multivae.integrations.ray_data import RayShardBatches

    data = prepare_builtin("gaussian-views", tmp_path / "data", n_train=64, n_val=16, n_test=16)
    # A NaN written behind the writer's back (it refuses them), schema metadata kept.
    (train,) = (data / "train").glob("*.parquet")
    table = pq.read_table(train)
    index = table.schema.get_field_index("view0")
    values = table.column("view0").combine_chunks().to_numpy_ndarray().copy()
    values[37, 2] = np.nan
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(values)
    pq.write_table(table.set_column(index, table.schema.field(index), column), train)

    with pytest.raises(DataFormatError) as local:
        MultimodalDataset(data, "train").read_all()
    schema = read_schema(data)
    good = RayShardBatches(ParquetShard(data / "val"), schema.modality_names, 16, 1, schema=schema)
    assert [len(batch) for batch in good] == [16]  # good rows pass, as batches
    shard = RayShardBatches(
        ParquetShard(data / "train"),
        schema.modality_names,
        16,
        4,
        schema=schema,
        where=str(data / "train"),
    )
    with pytest.raises(DataFormatError) as on_ray:
        list(shard)
    assert on_ray.value.problem == local.value.problem == "expected finite values, found NaN"
    assert on_ray.value.column == local.value.column == "view0"
    assert str(on_ray.value).startswith(f"{data / 'train'}, sample_id 37, column 'view0'")


def test_a_sweep_that_cannot_fit_is_refused_before_ray_starts(views, tmp_path):
    path = write_sweep(tmp_path, views, ["model_config.latent_dim: {choice: [2]}"], train_workers=1)
    # Train workers that ask for a resource a local Ray instance would not have.
    path.write_text(
        path.read_text().replace(
            "  output_dir: unused\n",
            "  output_dir: unused\n  ray: {resources_per_worker: {trainer: 1}}\n",
        )
    )
    sweep, base = load_sweep(path)
    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match=r"a trial needs 1 trainer, the Ray cluster has 0"):
        run_sweep(sweep, base)
    assert not ray.is_initialized()  # Ray was never started
    assert not (tmp_path / "sweep").exists()
