import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml

from multivae.config import Config, ConfigError, read_json, read_yaml
from multivae.data.errors import DataFormatError
from multivae.data.schema import DatasetSchema
from multivae.factory import create_model
from multivae.integrations.sweep_file import load_sweep
from multivae.metrics.classifiers import ClassifierError, ClassifierSet
from multivae.model_folder import read_model_config
from multivae.models.base import ModalityConfig, ModelConfig
from multivae.names import (
    CLASSIFIERS_CONFIG_FILE,
    CLASSIFIERS_WEIGHTS_FILE,
    MODEL_CONFIG_FILE,
    SAMPLER_CONFIG_FILE,
)
from multivae.nn.architectures import ArchitectureConfig
from multivae.run_config import load_run_config
from multivae.samplers import create_sampler, load_sampler


@dataclass
class Inner(Config):
    size: int
    rate: float = 0.5


@dataclass
class Outer(Config):
    name: str
    inner: Inner
    shape: tuple[int, ...] = (1, 2)
    pair: tuple[int, str] = (0, "a")
    mode: Literal["fast", "slow"] = "fast"
    extra: dict[str, Inner] = field(default_factory=dict)
    optional: float | None = None


def _outer():
    return Outer(
        name="x",
        inner=Inner(3),
        shape=(3, 28, 28),
        extra={"k": Inner(1, 0.1)},
        optional=2.0,
    )


@pytest.mark.parametrize("form", ["json", "yaml"])
def test_round_trip(form, tmp_path):
    config = _outer()
    text = config.to_json() if form == "json" else config.to_yaml()
    back = Outer.from_json(text) if form == "json" else Outer.from_yaml(text)
    assert back == config
    assert isinstance(back.shape, tuple) and isinstance(back.extra["k"], Inner)
    path = config.save(tmp_path / f"c.{'json' if form == 'json' else 'yaml'}")
    assert Outer.load(path) == config
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_unknown_key_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"inner: unknown key 'szie'.*Did you mean 'size'\?"):
        Outer.from_dict({"name": "x", "inner": {"szie": 3}})


def test_an_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ninner: {size: 1}\nmdoe: slow\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: .*'mdoe'.*Did you mean 'mode'"):
        Outer.load(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "x", "inner": {"size": "3"}}, r"inner.size: expected an integer, found '3'"),
        ({"name": "x", "inner": {"size": True}}, r"expected an integer, found True"),
        ({"name": "x", "inner": {"size": 1, "rate": "a"}}, r"expected a number"),
        ({"name": "x", "inner": 3}, r"expected a mapping for Inner"),
        ({"name": "x", "inner": {"size": 1}, "mode": "medium"}, r"expected one of \['fast'"),
        ({"name": "x", "inner": {"size": 1}, "pair": [1]}, r"expected 2 items, found 1"),
        ({"name": "x", "inner": {"size": 1}, "shape": 3}, r"shape: expected a list"),
        ({"name": "x"}, r"missing required keys \['inner'\]"),
        ({"name": "x", "inner": {"size": 1}, "optional": "no"}, r"expected a number"),
    ],
    ids=[
        "string-for-int",
        "bool-for-int",
        "string-for-float",
        "scalar-for-mapping",
        "literal",
        "tuple-length",
        "scalar-for-tuple",
        "missing",
        "optional",
    ],
)
def test_ill_typed_values_are_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict(raw)


def test_integers_are_accepted_as_floats_and_null_for_optional():
    config = Outer.from_dict({"name": "x", "inner": {"size": 1, "rate": 1}, "optional": None})
    assert config.inner.rate == 1.0 and isinstance(config.inner.rate, float)
    assert config.optional is None


def test_model_config_round_trips_with_architectures():
    config = ModelConfig(
        modalities={
            "image": ModalityConfig(
                shape=(3, 28, 28),
                likelihood="laplace",
                encoder=ArchitectureConfig("conv", {"channels": [8, 16]}),
            ),
            "label": ModalityConfig(shape=(), likelihood="categorical", num_categories=10),
        },
        latent_dim=4,
    )
    back = ModelConfig.from_json(config.to_json())
    assert back == config
    assert back.modalities["image"].shape == (3, 28, 28)


def test_yaml_with_a_key_given_twice_is_refused_naming_both_lines():
    with pytest.raises(yaml.YAMLError, match=r"^line 4: key 'c' is given a second time \(first"):
        read_yaml("a: 1\nb:\n  c: 2\n  c: 3\n")
    # Equal keys in different mappings, and YAML merges that a later key overrides, are fine.
    document = read_yaml("a: {x: 1}\nb: {x: 2}\nbase: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")
    assert document["d"] == {"x": 3, "y": 2}
    assert document["b"] == {"x": 2}


def test_json_with_a_key_given_twice_is_refused():
    with pytest.raises(json.JSONDecodeError, match=r"^key 'c' is given twice in one object$"):
        read_json('{"a": 1, "b": {"c": 1, "c": 2}}')
    assert read_json(b'{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}')["b"][1] == {"a": 3}


def _repeat_first_key(path):
    """Rewrite a JSON file so that its top object gives its first key twice."""
    document = json.loads(path.read_text())
    key, value = next(iter(document.items()))
    path.write_text("{" + json.dumps(key) + ": " + json.dumps(value) + ", " + path.read_text()[1:])
    return key


def _text_file(name, text, key, read):
    """A case of a file written as ``text``, read by ``read(path)``."""

    def build(tmp_path):
        path = tmp_path / name
        path.write_text(text)
        return path, key, lambda: read(path)

    return build


_run_yaml = _text_file("run.yaml", "model: mvae\ndata: x\nmodel: mopoe\n", "model", load_run_config)
_run_json = _text_file(
    "run.json", '{"model": "mvae", "data": "x", "model": "mopoe"}', "model", load_run_config
)
_sweep = _text_file(
    "sweep.yaml", "run: {model: mvae}\nnum_samples: 2\nnum_samples: 3\n", "num_samples", load_sweep
)


def _sweep_base_run(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: mvae\nmodel: mopoe\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"run: {base}\noutput_dir: out\nspace: {{model_config.beta: {{uniform: [0, 1]}}}}\n"
    )
    return base, "model", lambda: load_sweep(path)


def _model_folder(tmp_path):
    model = create_model(
        "mvae",
        ModelConfig(
            modalities={"a": ModalityConfig(shape=(2,)), "b": ModalityConfig(shape=(3,))},
            latent_dim=2,
        ).to_dict(),
    )
    folder = model.save_pretrained(tmp_path / "model")
    path = folder / MODEL_CONFIG_FILE
    return path, _repeat_first_key(path), lambda: read_model_config(folder)


def _sampler_folder(tmp_path):
    sampler = create_sampler("gmm", n_components=2)
    sampler.fit(torch.randn(20, 2))
    folder = sampler.save(tmp_path / "sampler")
    path = folder / SAMPLER_CONFIG_FILE
    return path, _repeat_first_key(path), lambda: load_sampler(folder)


def _classifier_folder(tmp_path):
    folder = tmp_path / "classifiers"
    folder.mkdir()
    path = folder / CLASSIFIERS_CONFIG_FILE
    path.write_text('{"format_version": 1, "num_classes": 2, "num_classes": 3, "modalities": {}}')
    (folder / CLASSIFIERS_WEIGHTS_FILE).write_bytes(b"")
    return path, "num_classes", lambda: ClassifierSet.load(folder)


READERS = {
    "run config (YAML)": _run_yaml,
    "run config (JSON)": _run_json,
    "sweep file": _sweep,
    "sweep's base run file": _sweep_base_run,
    "model folder's config.json": _model_folder,
    "fitted sampler's config": _sampler_folder,
    "classifiers' config": _classifier_folder,
}


@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_a_key_given_twice_naming_the_file_and_the_key(reader, tmp_path):
    path, key, read = READERS[reader](tmp_path)
    with pytest.raises((ConfigError, ClassifierError)) as error:
        read()
    message = str(error.value)
    assert str(path) in message
    assert f"key {key!r} is given" in message


def test_dataset_metadata_with_a_key_given_twice_is_refused():
    with pytest.raises(DataFormatError, match="key 'format_version' is given twice"):
        DatasetSchema.from_json('{"format_version": 1, "format_version": 1}', where="x.parquet")


# Item 2 of the strict reading: unknown keys of the files read without a config class, the line
# of the key at fault, empty values.


def test_readers_without_a_config_class_refuse_an_unknown_key(tmp_path):
    config = ModelConfig(modalities={"a": ModalityConfig(shape=(2,))}, latent_dim=2)
    folder = create_model("mvae", config.to_dict()).save_pretrained(tmp_path / "model")
    path = folder / MODEL_CONFIG_FILE
    path.write_text(path.read_text().replace("{", '{"modle": "mvae", ', 1))
    with pytest.raises(ConfigError, match=r"config.json: unknown key 'modle'.*mean 'model'"):
        read_model_config(folder)
    sampler = create_sampler("gmm", n_components=2).fit(torch.randn(20, 2))
    folder = sampler.save(tmp_path / "sampler")
    path = folder / SAMPLER_CONFIG_FILE
    path.write_text(path.read_text().replace("{", '{"dims": 2, ', 1))
    with pytest.raises(ConfigError, match=r"sampler.json: unknown key 'dims'.*Did you mean 'dim'"):
        load_sampler(folder)
    with pytest.raises(DataFormatError, match=r"x.parquet.*unknown key 'nam'"):
        DatasetSchema.from_json('{"format_version": 1, "nam": "d", "modalities": []}', "x.parquet")


RUN = """model: mvae
data: /data/views
training:
  epochs: 3
  optimizer:
    name: Adam
    kwargs: {lr: 1.0e-3}
output_dir: /runs/x
"""


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("epochs: 3", "epochs: three"), 4, "training.epochs: expected an integer, found 'three'"),
        (("    name: Adam", "    nme: Adam"), 6, "unknown key 'nme' for OptimizerConfig"),
        (("output_dir: /runs/x", "output_dir: ''"), 8, "output_dir: expected a value, found an"),
        (("model: mvae", "model: '  '"), 1, "model: expected a value, found an empty text"),
        (("data: /data/views", "data: [1]"), 2, "data: expected a string, found [1]"),
    ],
)
def test_a_run_config_error_names_the_file_and_the_line_of_the_key(tmp_path, change, line, message):
    path = tmp_path / "run.yaml"
    path.write_text(RUN.replace(*change))
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    assert str(error.value).startswith(f"{path}, line {line}: ")
    assert message in str(error.value)


def test_a_key_given_by_set_has_no_line_in_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(RUN)
    with pytest.raises(ConfigError) as error:
        load_run_config(path, ["training.epochs=three"])
    assert str(error.value).startswith(f"{path}: training.epochs: expected an integer")


def test_a_sweep_file_error_names_its_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    run = "run: {model: mvae, data: d, output_dir: o}\noutput_dir: o\n"
    path.write_text(f"{run}space: {{}}\nnum_samples: 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 3: space: expected at least one"):
        load_sweep(path)
    path.write_text(f"{run}space: {{a: {{choice: [1]}}}}\nnum_sample: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 4: .*unknown key 'num_sample'"):
        load_sweep(path)


# Item 4: a relative path means the same in every process: made absolute once, when read.


def test_relative_paths_of_a_run_config_are_made_absolute_against_the_working_directory(
    tmp_path, monkeypatch
):
    from multivae.run_config import absolute_location

    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "run.yaml"
    path.write_text(
        "model: mvae\ndata: data/views\noutput_dir: runs/x\n"
        "ray: {storage_path: s3://bucket/ray}\n"
        "mlflow: {tracking_uri: sqlite:///mlflow.db}\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_run_config("configs/run.yaml", ["training.epochs=2"])
    assert config.data == str(
        tmp_path / "data" / "views"
    )  # the working directory's, not the file's
    assert config.output_dir == str(tmp_path / "runs" / "x")
    assert config.ray is not None and config.ray.storage_path == "s3://bucket/ray"  # a URI stays
    assert config.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_location("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_location("http://host:5000") == "http://host:5000"
    assert absolute_location("~/d") == str(Path.home() / "d")


def test_a_sweep_resolves_its_run_file_and_paths_against_the_working_directory(
    tmp_path, monkeypatch
):
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "base.yaml").write_text("model: mvae\ndata: views\noutput_dir: unused\n")
    sweep = tmp_path / "sweeps" / "sweep.yaml"
    sweep.write_text(
        "run: base.yaml\noutput_dir: out\nspace: {model_config.beta: {uniform: [0, 1]}}\n"
    )
    monkeypatch.chdir(tmp_path)
    config, base = load_sweep("sweeps/sweep.yaml", ["run.training.epochs=3"])
    assert base["data"] == str(tmp_path / "views")
    assert base["training"] == {"epochs": 3}  # an override of the base run is kept
    assert config.output_dir == str(tmp_path / "out") and config.run == base
    # From another directory, the file beside the sweep is not found, and the error says where
    # relative paths point and which file was probably meant.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "sweeps" / "base.yaml").write_text("model: mvae\n")
    beside = tmp_path / "sweeps" / "base.yaml"
    with pytest.raises(FileNotFoundError, match=f"working directory: did you mean run: {beside}"):
        load_sweep("../sweeps/sweep.yaml")
