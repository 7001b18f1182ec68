"""Synthetic datasets and imputation: format, provenance, determinism and bad input."""

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from kit.data import builtin

import multivae
from multivae.augment import (
    PROVENANCE_KEY,
    impute_command,
    impute_dataset,
    sample_command,
    sample_dataset,
    schema_from_model,
)
from multivae.config import ConfigError
from multivae.data import (
    Batch,
    DataFormatError,
    DatasetSchema,
    ModalitySpec,
    MultimodalDataset,
    SplitWriter,
    read_schema,
)
from multivae.data.schema import METADATA_KEY, imputed_column, presence_column
from multivae.data.summary import summarize
from multivae.models.base import ModelConfig
from multivae.samplers import create_sampler, encode_latents


@pytest.fixture(scope="module")
def views(kit_folder):
    return builtin(
        kit_folder,
        "gaussian-views",
        missing_rate=0.4,
        seed=0,
        n_train=200,
        n_val=50,
        n_test=50,
    )


@pytest.fixture(scope="module")
def digits(kit_folder):
    return builtin(
        kit_folder,
        "poly-digits",
        missing_rate=0.5,
        seed=0,
        num_modalities=2,
        n_train=64,
        n_val=16,
        n_test=16,
    )


def tiny_model(name, data, **options):
    torch.manual_seed(0)
    config = ModelConfig.from_schema(read_schema(data)).to_dict() | {"latent_dim": 4} | options
    return multivae.create_model(name, config).eval()


@pytest.fixture(scope="module")
def mopoe(views):
    # Private latents exercise the imputation of a missing modality's private part.
    return tiny_model("mopoe", views, private_dim=2)


def read(root, split="train"):
    dataset = MultimodalDataset(root, split)
    return dataset, dataset.read_all()


def provenance(root, split="train"):
    return read_schema(root, split).extra[PROVENANCE_KEY]


def same_data(a, b):
    return set(a.data) == set(b.data) and all(
        torch.equal(a.data[name], b.data[name]) for name in a.data
    )


# ------------------------------------------------------------------------------------------------
# Synthetic datasets


@pytest.mark.parametrize("kind", ["prior", "gmm"])
def test_sampled_dataset_is_valid_seeded_and_records_provenance(tmp_path, views, mopoe, kind):
    options = {"n_components": 2} if kind == "gmm" else None
    fit_data = views if kind == "gmm" else None

    def sample(out, seed):
        return sample_dataset(
            mopoe,
            70,
            tmp_path / out,
            sampler=kind,
            fit_data=fit_data,
            seed=seed,
            batch_size=32,
            sampler_options=options,
            progress=False,
        )

    first = sample("a", 3)
    summary = summarize(first, validate=True)
    assert summary["splits"]["train"]["validated"]
    assert summary["splits"]["train"]["presence"] == {name: 1.0 for name in mopoe.modalities}
    dataset, batch = read(first)
    assert len(dataset) == 70 and dataset.read_imputed() is None
    assert all(bool(batch.mask[name].all()) for name in mopoe.modalities)
    for name in mopoe.modalities:
        assert tuple(batch.data[name].shape) == (70, *mopoe.config.modalities[name].shape)
        assert batch.data[name].dtype == torch.float32
    assert batch.label is None and dataset.schema.num_classes is None
    assert torch.equal(batch.sample_id, torch.arange(70))

    record = provenance(first)
    assert record["operation"] == "sample" and record["model"] == "mopoe"
    assert record["sampler"]["kind"] == kind
    assert record["seed"] == 3 and record["n"] == 70
    assert record["multivae_version"] == multivae_version()
    assert re.match(r"\d{4}-\d\d-\d\dT", record["created"])
    if kind == "gmm":
        assert record["sampler"]["options"]["n_components"] == 2
        assert record["sampler"]["fit_data"] == str(views)
        assert dataset.schema.modalities == read_schema(views).modalities

    again = sample("b", 3)
    other = sample("c", 4)
    assert same_data(batch, read(again)[1])
    assert not same_data(batch, read(other)[1])


def multivae_version():
    from importlib.metadata import version

    return version("multivae-platform")


def test_sampled_images_are_clamped_to_the_declared_range(tmp_path, digits):
    model = tiny_model("mvae", digits)
    decoder = model.decoders["m0"]
    with torch.no_grad():
        # Push the Laplace means of m0 above 1 so that clamping has work to do.
        list(decoder.parameters())[-1].add_(3.0)
    raw = model.sample(8)["m0"]
    assert float(raw.max()) > 1.0
    out = sample_dataset(model, 20, tmp_path / "s", fit_data=digits, batch_size=8, progress=False)
    assert summarize(out, validate=True)["splits"]["train"]["validated"]
    dataset, batch = read(out)
    for spec in dataset.schema.modalities:
        values = batch.data[spec.name]
        assert spec.value_range == (0.0, 1.0) and values.dtype == torch.float32
        assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert float(batch.data["m0"].max()) == 1.0
    assert tuple(batch.data["m1"].shape) == (20, 3, 28, 28)


def test_sampling_without_the_training_data_builds_the_schema_from_the_model(tmp_path, mopoe):
    out = sample_dataset(mopoe, 5, tmp_path / "s", split="val", progress=True)
    assert sorted(p.name for p in out.iterdir()) == [".multivae-output.json", "val"]
    schema = read_schema(out)
    assert schema.modalities == schema_from_model(mopoe).modalities
    assert schema.extra[PROVENANCE_KEY]["model_path"] is None
    spec = schema["view0"]
    assert (spec.shape, spec.dtype, spec.likelihood, spec.value_range) == (
        tuple(mopoe.config.modalities["view0"].shape),
        "float32",
        "normal",
        None,
    )
    bernoulli = ModelConfig.from_schema(
        DatasetSchema((ModalitySpec("b", (3,), "float32", "tabular", (0, 1), "bernoulli"),))
    )
    model = multivae.create_model("mvae", bernoulli.to_dict() | {"latent_dim": 2})
    assert schema_from_model(model)["b"].value_range == (0.0, 1.0)


def test_saved_sampler_through_the_command(tmp_path, views, mopoe):
    model_dir = mopoe.save_pretrained(tmp_path / "model")
    sampler = create_sampler("gmm", n_components=2).fit(
        encode_latents(mopoe, MultimodalDataset(views, "train").read_all())
    )
    sampler_dir = sampler.save(tmp_path / "sampler")
    out = sample_command(model_dir, 25, tmp_path / "s", None, views, 7, sampler_dir, progress=False)
    record = provenance(out)
    assert record["model_path"] == str(model_dir)
    assert record["sampler"]["kind"] == "gmm" and record["sampler"]["fitted"] == "given"
    direct = sample_dataset(
        mopoe, 25, tmp_path / "d", sampler=sampler, fit_data=views, seed=7, progress=False
    )
    assert same_data(read(out)[1], read(direct)[1])
    with pytest.raises(ValueError, match=r"holds a 'gmm' sampler, but sampler kind 'maf'"):
        sample_command(model_dir, 5, tmp_path / "x", "maf", None, 0, sampler_dir)


def test_a_fitted_kind_also_fits_the_private_spaces_and_is_saved_for_reuse(tmp_path, views, mopoe):
    from multivae.samplers import JointSampler, load_sampler

    model_dir = mopoe.save_pretrained(tmp_path / "model")
    options = {"n_components": 2}
    out = sample_command(
        model_dir,
        30,
        tmp_path / "fitted",
        "gmm",
        views,
        5,
        sampler_options=options,
        progress=False,
        save_sampler=tmp_path / "sampler",
    )
    record = provenance(out)
    assert record["sampler"]["fitted"] == "fit_data"
    assert record["sampler"]["options"]["private"] == sorted(mopoe.modalities)
    assert record["sampler"]["saved_to"] == str(tmp_path / "sampler")
    saved = load_sampler(tmp_path / "sampler")
    assert isinstance(saved, JointSampler)
    assert set(saved.private_samplers) == set(mopoe.modalities)
    assert all(s.dim == mopoe.config.private_dim for s in saved.private_samplers.values())

    # Drawing again from the saved sampler with the same seed gives the same dataset.
    again = sample_command(model_dir, 30, tmp_path / "again", None, None, 5, tmp_path / "sampler")
    assert same_data(read(out)[1], read(again)[1])
    with pytest.raises(ValueError, match="the prior has nothing to save"):
        sample_command(model_dir, 5, tmp_path / "x", "prior", None, 0, save_sampler=tmp_path / "p")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------
# Imputation


@pytest.fixture(scope="module")
def imputed(tmp_path_factory, views, mopoe):
    return impute_dataset(
        mopoe, views, tmp_path_factory.mktemp("imputed") / "i", batch_size=64, progress=False
    )


def test_imputation_keeps_observed_cells_and_marks_the_rest(views, imputed, mopoe):
    assert sorted(p.name for p in imputed.iterdir()) == [
        ".multivae-output.json",
        "test",
        "train",
        "val",
    ]
    summary = summarize(imputed, validate=True)
    for split in ("train", "val", "test"):
        assert summary["splits"][split]["validated"]
        source, before = read(views, split)
        dataset, after = read(imputed, split)
        flags = dataset.read_imputed()
        assert dataset.schema.imputed and not source.schema.imputed
        assert torch.equal(after.label, before.label)
        assert torch.equal(after.sample_id, before.sample_id)
        missing = 0
        for name in mopoe.modalities:
            present = before.mask[name].numpy()
            missing += int((~present).sum())
            assert bool(after.mask[name].all())
            np.testing.assert_array_equal(flags[name], ~present)
            old = before.data[name].numpy()[present]
            new = after.data[name].numpy()[present]
            assert np.array_equal(old.view(np.uint32), new.view(np.uint32))
            filled = after.data[name].numpy()[~present]
            assert np.isfinite(filled).all() and (np.abs(filled).sum(axis=1) > 0).all()
        # The generator leaves the test split complete: nothing to impute there.
        assert (missing > 0) == (split != "test")
    record = provenance(imputed)
    assert record["operation"] == "impute" and record["source"] == str(views)
    assert record["method"] == "mean" and record["model"] == "mopoe"
    assert read_schema(imputed).missingness == read_schema(views).missingness


def test_imputed_values_are_the_posterior_given_exactly_the_observed_modalities(
    views, imputed, mopoe
):
    _, before = read(views, "val")
    _, after = read(imputed, "val")
    names = mopoe.modalities
    patterns = {}
    for row in range(len(before)):
        pattern = tuple(bool(before.mask[name][row]) for name in names)
        if not all(pattern):
            patterns.setdefault(pattern, []).append(row)
    assert len(patterns) >= 2
    generator = torch.Generator().manual_seed(0)
    for pattern, rows in patterns.items():
        rows = rows[:3]
        observed = [name for name, seen in zip(names, pattern, strict=True) if seen]
        # The missing cells hold noise and claim to be present: only cond keeps them out.
        batch = Batch(
            data={
                name: torch.where(
                    before.mask[name][rows, None],
                    before.data[name][rows],
                    torch.randn(before.data[name][rows].shape, generator=generator),
                )
                for name in names
            },
            mask={name: torch.ones(len(rows), dtype=torch.bool) for name in names},
        )
        with torch.no_grad():
            z = mopoe.posterior(batch, cond=observed).mean
            private = torch.zeros(len(rows), mopoe.config.private_dim)
            for name in names:
                if name in observed:
                    continue
                params = mopoe.decode(torch.cat([z, private], -1), [name])[name]
                expected = mopoe.likelihood(name).mean(params)
                torch.testing.assert_close(after.data[name][rows], expected, atol=1e-5, rtol=1e-5)


def test_sampled_imputation_is_seeded(tmp_path, views, mopoe):
    def impute(out, seed):
        impute_dataset(
            mopoe, views, tmp_path / out, splits=["val"], seed=seed, method="sample", progress=False
        )
        return read(tmp_path / out, "val")[1]

    first, again, other = impute("a", 1), impute("b", 1), impute("c", 2)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".multivae-output.json", "val"]
    assert same_data(first, again)
    _, source = read(views, "val")
    differs = False
    for name in mopoe.modalities:
        present = source.mask[name]
        assert torch.equal(first.data[name][present], other.data[name][present])
        differs |= not torch.equal(first.data[name][~present], other.data[name][~present])
    assert differs
    assert provenance(tmp_path / "a", "val")["method"] == "sample"


def test_pyarrow_reads_the_imputation_columns(imputed, views, mopoe):
    table = pq.read_table(imputed / "train")
    source = pq.read_table(views / "train")
    for name in mopoe.modalities:
        column = table.column(imputed_column(name))
        assert str(column.type) == "bool"
        assert column.to_pylist() == [not v for v in source.column(presence_column(name))]
    assert set(table.column_names) - set(source.column_names) == {
        imputed_column(name) for name in mopoe.modalities
    }
    description = json.loads(table.schema.metadata[METADATA_KEY])
    assert description["imputed"] is True
    assert "imputed" not in json.loads(source.schema.metadata[METADATA_KEY])


@pytest.mark.integration
def test_ray_data_reads_the_imputed_dataset(imputed, mopoe):
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rows = ray.data.read_parquet(str(imputed / "val")).take_all()
    finally:
        ray.shutdown()
    assert len(rows) == 50
    dataset, batch = read(imputed, "val")
    flags = dataset.read_imputed()
    by_id = {int(row["sample_id"]): row for row in rows}
    for index, sample_id in enumerate(batch.sample_id.tolist()):
        row = by_id[sample_id]
        for name in mopoe.modalities:
            assert bool(row[imputed_column(name)]) == bool(flags[name][index])
            np.testing.assert_array_equal(row[name], batch.data[name][index].numpy())


def test_imputing_an_imputed_dataset_keeps_the_flags(tmp_path, imputed, mopoe):
    again = impute_dataset(mopoe, imputed, tmp_path / "again", splits=["val"], progress=False)
    first, _ = read(imputed, "val")
    second, batch = read(again, "val")
    assert any(flags.any() for flags in second.read_imputed().values())
    assert all(
        np.array_equal(a, b)
        for a, b in zip(first.read_imputed().values(), second.read_imputed().values(), strict=True)
    )
    assert same_data(read(imputed, "val")[1], batch)
    assert provenance(again, "val")["source_provenance"]["operation"] == "impute"


# ------------------------------------------------------------------------------------------------
# The format's imputation columns


def imputed_schema(imputed=True):
    spec = ModalitySpec("a", (2,), "float32", "tabular")
    return DatasetSchema(
        (spec, ModalitySpec("b", (), "int64", "categorical", num_categories=3)), imputed=imputed
    )


@pytest.mark.parametrize(
    ("imputed_flags", "schema_flag", "message"),
    [
        ({"a": [True, False], "b": [False, False]}, True, "presence flag is false"),
        (None, True, "missing imputation flags"),
        ({"a": [False, False]}, True, "missing imputation column"),
        ({"a": [0, 0], "b": [0, 0]}, True, "boolean imputation flags"),
        ({"a": [False, False], "b": [False, False]}, False, "does not declare them"),
    ],
    ids=["absent-imputed", "none", "one-missing", "not-bool", "undeclared"],
)
def test_the_writer_checks_imputation_flags(tmp_path, imputed_flags, schema_flag, message):
    flags = None
    if imputed_flags is not None:
        flags = {
            name: np.array(values, dtype=bool if isinstance(values[0], bool) else np.int64)
            for name, values in imputed_flags.items()
        }
    data = {"a": np.zeros((2, 2), np.float32), "b": np.array([1, 2])}
    present = {"a": np.array([False, True]), "b": np.array([True, True])}
    with (
        pytest.raises(DataFormatError, match=message),
        SplitWriter(tmp_path, "train", imputed_schema(schema_flag)) as writer,
    ):
        writer.write(data, present, imputed=flags)
    assert not (tmp_path / "train").exists()


def test_imputed_schema_round_trips_and_old_descriptions_read_as_not_imputed():
    schema = imputed_schema()
    assert DatasetSchema.from_json(schema.to_json("train")) == schema
    plain = imputed_schema(imputed=False)
    assert "imputed" not in json.loads(plain.to_json())
    assert not DatasetSchema.from_json(plain.to_json()).imputed
    raw = json.loads(schema.to_json())
    raw["imputed"] = "yes"
    with pytest.raises(DataFormatError, match="expected 'imputed' to be true or false"):
        DatasetSchema.from_json(json.dumps(raw), where="somewhere")
    names = schema.arrow_schema("train").names
    assert names.index(imputed_column("a")) == names.index(presence_column("a")) + 1


# ------------------------------------------------------------------------------------------------
# Bad input


def test_a_model_of_other_modalities_is_refused(tmp_path, views, digits, mopoe):
    other = tiny_model("mvae", digits)
    model_dir = other.save_pretrained(tmp_path / "model")
    expected = re.escape("['m0', 'm1']") + ".*" + re.escape("['view0', 'view1']")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(views))}: .*{expected}"):
        impute_command(model_dir, views, tmp_path / "out")
    with pytest.raises(ValueError, match=rf"{re.escape(str(model_dir))}.*{expected}"):
        sample_command(model_dir, 5, tmp_path / "out", "gmm", views)
    with pytest.raises(ValueError, match=expected):
        impute_dataset(other, views, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_other_shapes_are_refused(tmp_path, views):
    schema = read_schema(views)
    wider = DatasetSchema(
        tuple(ModalitySpec(s.name, (s.shape[0] + 1,), s.dtype, s.kind) for s in schema.modalities)
    )
    model = multivae.create_model(
        "mvae", ModelConfig.from_schema(wider).to_dict() | {"latent_dim": 2}
    )
    with pytest.raises(ValueError, match=r"view0: expected \(\d+,\), found \(\d+,\)"):
        sample_dataset(model, 5, tmp_path / "out", fit_data=views, progress=False)


def test_bad_sampling_requests_are_refused(tmp_path, views, mopoe):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"sampler kind 'gmm' must be fitted.*give fit_data"):
        sample_dataset(mopoe, 5, out, sampler="gmm", progress=False)
    with pytest.raises(ValueError, match="is not fitted and no fit_data"):
        sample_dataset(mopoe, 5, out, sampler=create_sampler("gmm"), progress=False)
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"expected an integer n >= 1, found {n!r}"):
            sample_dataset(mopoe, n, out, progress=False)
    with pytest.raises(ConfigError, match=r"unknown sampler kind 'gmn'.*Did you mean 'gmm'"):
        sample_dataset(mopoe, 5, out, sampler="gmn", fit_data=views, progress=False)
    with pytest.raises(ValueError, match="the prior takes no sampler_options"):
        sample_dataset(mopoe, 5, out, sampler_options={"seed": 1}, progress=False)
    wrong_dim = create_sampler("prior").fit(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="dimension 7, but the model 'mopoe' has latent_dim 4"):
        sample_dataset(mopoe, 5, out, sampler=wrong_dim, progress=False)
    with pytest.raises(DataFormatError, match="unknown split 'training'"):
        sample_dataset(mopoe, 5, out, split="training", progress=False)
    assert not out.exists()


def test_bad_destinations_and_splits_are_refused(tmp_path, views, mopoe):
    with pytest.raises(ValueError, match="the output folder is the source dataset"):
        impute_dataset(mopoe, views, views, progress=False)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"holds files multivae sample did not write"):
            sample_dataset(mopoe, 5, occupied, progress=False, overwrite=overwrite)
    assert (occupied / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown imputation method 'median'"):
        impute_dataset(mopoe, views, tmp_path / "o", method="median", progress=False)
    with pytest.raises(TypeError, match="found the string 'train'"):
        impute_dataset(mopoe, views, tmp_path / "o", splits="train", progress=False)
    only_train = tmp_path / "only-train"
    sample_dataset(mopoe, 5, only_train, progress=False)
    # An earlier output of the same command: replaced only with overwrite, never by another kind.
    with pytest.raises(FileExistsError, match=r"holds an earlier dataset \(multivae sample"):
        sample_dataset(mopoe, 5, only_train, progress=False)
    sample_dataset(mopoe, 6, only_train, progress=False, overwrite=True)
    assert len(MultimodalDataset(only_train, "train")) == 6
    with pytest.raises(FileExistsError, match=r"inside the dataset"):
        sample_dataset(mopoe, 5, only_train / "train" / "more", progress=False)
    with pytest.raises(ValueError, match=r"no splits \['val'\]; the dataset has \['train'\]"):
        impute_dataset(mopoe, only_train, tmp_path / "o", splits=["val"], progress=False)
    assert not (tmp_path / "o").exists()


def test_classifiers_label_the_samples(tmp_path, views, mopoe):
    from multivae.metrics.classifiers import ClassifierSet, ModalityClassifier

    schema = read_schema(views)
    torch.manual_seed(0)
    classifiers = ClassifierSet(
        {"view0": ModalityClassifier.for_spec(schema["view0"], schema.num_classes)},
        schema.num_classes,
    )
    out = sample_dataset(
        mopoe, 30, tmp_path / "s", fit_data=views, label_with=classifiers, progress=False
    )
    dataset, batch = read(out)
    assert dataset.schema.num_classes == schema.num_classes
    expected = classifiers.predict("view0", batch.data["view0"])
    assert torch.equal(batch.label, expected)
    assert provenance(out)["labels"]["classifier_of"] == "view0"
    view1_only = ClassifierSet(
        {"view1": ModalityClassifier.for_spec(schema["view1"], schema.num_classes)},
        schema.num_classes,
    )
    with pytest.raises(ValueError, match=r"no classifier for modalities \['view0'\]"):
        sample_dataset(mopoe, 5, tmp_path / "x", label_with=view1_only, progress=False)


def test_a_given_sampler_must_fit_the_model(tmp_path, views, mopoe):
    from multivae.samplers import JointSampler, fit_joint_sampler

    joint = fit_joint_sampler(mopoe, read(views)[1], "gmm", n_components=2)
    assert isinstance(joint, JointSampler)
    stranger = JointSampler(
        joint.shared, {"elsewhere": next(iter(joint.private_samplers.values()))}
    )
    with pytest.raises(ValueError, match=r"private samplers for \['elsewhere'\]"):
        sample_dataset(mopoe, 5, tmp_path / "a", sampler=stranger, progress=False)
    wrong = create_sampler("gmm", n_components=2).fit(torch.randn(50, 7))
    with pytest.raises(ValueError, match="fitted on latents of dimension 7"):
        sample_dataset(mopoe, 5, tmp_path / "b", sampler=wrong, progress=False)
    with pytest.raises(ValueError, match="already built 'gmm' sampler"):
        sample_dataset(mopoe, 5, tmp_path / "c", sampler=joint, sampler_options={"n_components": 3})
