"""The masked joint encoder: absent modalities do not reach the output, the mask does."""

import pytest
import torch

from multivae.nn.architectures import ArchitectureConfig
from multivae.nn.joint import build_masked_joint_encoder

MLP = ArchitectureConfig("mlp", {"hidden": [8]})


def make():
    torch.manual_seed(0)
    return build_masked_joint_encoder(
        {"a": (MLP, (4,), None), "b": (MLP, (3,), None)}, feature_dim=5, hidden=[6], output_dim=4
    )


def test_an_absent_modality_neither_changes_the_output_nor_gets_a_gradient():
    encoder = make()
    data = {"a": torch.randn(6, 4), "b": torch.randn(6, 3, requires_grad=True)}
    mask = torch.tensor([[True] * 6, [True, False, True, False, True, False]])
    out = encoder(data, mask)
    assert out.shape == (6, 4)
    other = {"a": data["a"], "b": data["b"].detach() + 10.0 * torch.randn(6, 3)}
    changed = encoder(other, mask)
    absent = ~mask[1]
    torch.testing.assert_close(changed[absent], out[absent].detach())
    assert not torch.allclose(changed[~absent], out[~absent])
    out.sum().backward()
    assert torch.equal(data["b"].grad[absent], torch.zeros(3, 3))
    assert data["b"].grad[~absent].abs().sum() > 0


def test_the_mask_tells_an_absent_modality_from_zero_features():
    encoder = make()
    with torch.no_grad():  # b's features are exactly 0 whatever its values
        for parameter in encoder.features["b"].parameters():
            parameter.zero_()
    data = {"a": torch.randn(2, 4), "b": torch.randn(2, 3)}
    present = encoder(data, torch.tensor([[True, True], [True, True]]))
    absent = encoder(data, torch.tensor([[True, True], [False, False]]))
    assert not torch.allclose(present, absent)
    with pytest.raises(ValueError, match="expected a mask of 2 modalities, found 1 rows"):
        encoder(data, torch.ones(1, 2, dtype=torch.bool))
