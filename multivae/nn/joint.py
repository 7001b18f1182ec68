"""A joint encoder over incomplete samples: it takes the values and the presence mask.

``q(z | X_O)`` for any presence pattern ``O``: each modality's feature network runs on its
values, its features are zeroed where the modality is absent (value and gradient), and the
presence bits are appended, so the head knows which modalities it saw: an absent modality and
a present one whose features happen to be zero are told apart. TELBO and JNF train their joint
encoders on incomplete data with it (MultiVae's joint encoders see zero-filled values as data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from multivae.nn.architectures import ArchitectureConfig, MLPEncoder, build_encoder


class MaskedJointEncoder(nn.Module):
    """``(values, mask) -> head(ReLU([f_1(x_1) m_1, ..., f_M(x_M) m_M, m]))``.

    Args:
        features: Modality name -> network mapping ``(N, *shape)`` to ``(N, feature_dim)``, in
            the model's modality order.
        feature_dim: Size of each modality's features.
        hidden: Hidden sizes of the head.
        output_dim: Size of the output (e.g. mean and log-variance, ``2 D``).
    """

    def __init__(
        self,
        features: Mapping[str, nn.Module],
        feature_dim: int,
        hidden: Sequence[int],
        output_dim: int,
    ) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, found {feature_dim}")
        self.features = nn.ModuleDict(dict(features))
        count = len(self.features)
        # The feature networks end with a linear layer; the ReLU keeps the head from composing
        # with it into one linear map.
        self.head = nn.Sequential(
            nn.ReLU(), MLPEncoder((count * feature_dim + count,), output_dim, hidden)
        )

    def forward(self, data: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """The head's output ``(N, output_dim)`` given the values and the ``(M, N)`` presence.

        Rows of ``mask`` follow the order of ``features``.
        """
        if mask.shape[0] != len(self.features):
            raise ValueError(
                f"expected a mask of {len(self.features)} modalities, found {mask.shape[0]} rows"
            )
        parts = []
        for row, (name, network) in zip(mask, self.features.items(), strict=True):
            out = network(data[name])
            parts.append(torch.where(row.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype)))
        flags = mask.t().to(parts[0].dtype)
        result: torch.Tensor = self.head(torch.cat([*parts, flags], dim=-1))
        return result


def build_masked_joint_encoder(
    modalities: Mapping[str, tuple[ArchitectureConfig, tuple[int, ...], int | None]],
    feature_dim: int,
    hidden: Sequence[int],
    output_dim: int,
) -> MaskedJointEncoder:
    """A :class:`MaskedJointEncoder` whose feature networks are built from architecture specs.

    Args:
        modalities: Modality name -> (encoder spec, shape, number of categories or ``None``),
            in the model's modality order.
        feature_dim: Size of each modality's features.
        hidden: Hidden sizes of the head.
        output_dim: Size of the output.
    """
    features = {
        name: build_encoder(spec, shape, feature_dim, categories)
        for name, (spec, shape, categories) in modalities.items()
    }
    return MaskedJointEncoder(features, feature_dim, hidden, output_dim)
