from dataclasses import dataclass, field
from typing import Literal

import pytest

from multivae.config import Config, ConfigError
from multivae.models.base import ModalityConfig, ModelConfig
from multivae.nn.architectures import ArchitectureConfig


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
