import pytest
import torch
from torch import nn

from multivae.config import ConfigError
from multivae.nn.architectures import (
    ArchitectureConfig,
    build_decoder,
    build_encoder,
    default_architectures,
)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_conv_encoder_and_decoder_round_the_image_shape(size):
    shape = (3, size, size)
    encoder = build_encoder(ArchitectureConfig("conv"), shape, 10)
    decoder = build_decoder(ArchitectureConfig("conv"), 5, shape)
    assert encoder(torch.rand(2, *shape)).shape == (2, 10)
    assert decoder(torch.randn(2, 5)).shape == (2, *shape)


def test_mlp_defaults_follow_the_reference_sizes():
    encoder = build_encoder(ArchitectureConfig("mlp"), (7,), 4)
    decoder = build_decoder(ArchitectureConfig("mlp"), 4, (7,))
    encoder_layers = [m.out_features for m in encoder.modules() if isinstance(m, nn.Linear)]
    decoder_layers = [m.out_features for m in decoder.modules() if isinstance(m, nn.Linear)]
    assert encoder_layers == [512, 512, 4]
    assert decoder_layers == [512, 7]
    assert decoder(torch.randn(3, 4)).shape == (3, 7)


def test_configurable_hidden_sizes_and_categorical_modalities():
    encoder = build_encoder(ArchitectureConfig("embedding", {"hidden": [16]}), (), 6, 10)
    assert encoder(torch.tensor([0, 9, 3])).shape == (3, 6)
    decoder = build_decoder(ArchitectureConfig("mlp", {"hidden": [8, 8]}), 2, (), 10)
    assert decoder(torch.randn(3, 2)).shape == (3, 10)


def test_default_architectures_by_kind_and_shape():
    assert default_architectures((3, 28, 28), "image")[0].name == "conv"
    assert default_architectures((1, 20, 20), "image")[0].name == "mlp"
    assert default_architectures((), "categorical")[0].name == "embedding"
    assert default_architectures((12,), "tabular")[1].name == "mlp"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: build_encoder(ArchitectureConfig("cnv"), (3, 28, 28), 4), "Did you mean 'conv'"),
        (
            lambda: build_encoder(ArchitectureConfig("mlp", {"hiden": [3]}), (4,), 2),
            "encoder 'mlp'.*hiden",
        ),
        (lambda: build_encoder(ArchitectureConfig("conv"), (3, 30, 30), 4), "found \\(3, 30, 30"),
        (lambda: build_decoder(ArchitectureConfig("conv"), 4, (3, 28, 28), None), None),
        (lambda: build_encoder(ArchitectureConfig("mlp"), (), 4, 10), "use 'embedding'"),
        (lambda: build_encoder(ArchitectureConfig("embedding"), (4,), 4), "needs a categorical"),
    ],
    ids=["misspelled", "unknown-kwarg", "bad-size", "fine", "mlp-for-classes", "embedding-real"],
)
def test_bad_architectures_are_refused_clearly(build, message):
    if message is None:
        build()
        return
    with pytest.raises(ConfigError, match=message):
        build()
