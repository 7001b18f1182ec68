"""The masked autoregressive flow against hand computations: masks, Jacobians, densities."""

import math

import pytest
import torch

from multivae.config import ConfigError
from multivae.nn.flows import MADE, MAF, FlowConfig, FlowPosterior, MAFOptions, build_flow


def make_flow(dim: int, blocks: int = 2, hidden=(6, 6), seed: int = 0, gain: float = 1.0) -> MAF:
    """A MAF whose output layers are scaled by ``gain``: a visibly non-linear map."""
    torch.manual_seed(seed)
    flow = MAF(dim, MAFOptions(blocks=blocks, hidden=tuple(hidden)))
    with torch.no_grad():
        for block in flow.blocks:
            block.output.weight.mul_(gain)
            block.output.bias.mul_(gain)
    return flow


def test_the_masks_follow_the_degrees_by_hand():
    # D = 3, one hidden layer of 4: hidden degrees 1 + (k mod 2) = 1, 2, 1, 2.
    masks = MADE(3, [4]).masks(torch.device("cpu"))
    hidden = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    # Outputs (shift, then log-scale) of degrees 1, 2, 3 see hidden units of lower degree.
    output_rows = [[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]
    output = torch.tensor(output_rows * 2, dtype=torch.bool)
    assert torch.equal(masks[0], hidden)
    assert torch.equal(masks[1], output)
    # Without hidden layers, output i sees the inputs before i.
    direct = MADE(3, []).masks(torch.device("cpu"))
    lower = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert torch.equal(direct[0], torch.cat([lower, lower]))


def test_one_block_is_autoregressive_with_the_scales_on_the_diagonal():
    flow = make_flow(4, blocks=1, gain=3.0)
    z = torch.randn(4)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v)[0], z)
    assert torch.equal(jacobian.triu(1), torch.zeros(4, 4))
    _, log_scale = flow.blocks[0](z)
    torch.testing.assert_close(jacobian.diagonal(), torch.exp(-log_scale))
    # The first dimension's shift and scale are constants.
    shift, log_scale_other = flow.blocks[0](torch.randn(4))
    torch.testing.assert_close(log_scale_other[0], log_scale[0])
    torch.testing.assert_close(shift[0], flow.blocks[0](z)[0][0])


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_the_log_determinant_is_that_of_the_jacobian(dim):
    flow = make_flow(dim, blocks=3, gain=3.0).double()
    z = torch.randn(6, dim, dtype=torch.float64)
    u, log_det = flow(z)
    for row in range(6):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v)[0], z[row])
        torch.testing.assert_close(log_det[row], torch.linalg.slogdet(jacobian).logabsdet)
    back, inverse_log_det = flow.inverse(u)
    torch.testing.assert_close(back, z)
    torch.testing.assert_close(inverse_log_det, -log_det)


def test_the_inverse_undoes_the_forward_pass_for_any_leading_shape():
    flow = make_flow(4, blocks=2, gain=2.0)
    u = torch.randn(3, 5, 4)
    z, _ = flow.inverse(u)
    assert z.shape == (3, 5, 4)
    torch.testing.assert_close(flow(z)[0], u, rtol=1e-5, atol=1e-5)


def test_sampling_and_the_density_agree():
    """Draws from the flow posterior and quadrature of its density give the same moments."""
    flow = make_flow(2, blocks=2, hidden=(16,), gain=3.0, seed=1)
    mean, logvar = torch.tensor([[0.3, -0.5]]), torch.tensor([[-0.4, 0.2]])
    posterior = FlowPosterior(flow, mean, logvar)
    torch.manual_seed(0)
    with torch.no_grad():
        draws = posterior.rsample(200_000)[:, 0].double()
    low, high = draws.min(0).values - 1.0, draws.max(0).values + 1.0
    axes = [torch.linspace(float(low[d]), float(high[d]), 600) for d in range(2)]
    grid = torch.cartesian_prod(*axes)
    cell = float((axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0]))
    with torch.no_grad():
        density = posterior.log_prob(grid.unsqueeze(1))[:, 0].double().exp() * cell
    assert abs(float(density.sum()) - 1.0) < 2e-3
    grid = grid.double()
    quadrature_mean = (density.unsqueeze(-1) * grid).sum(0)
    quadrature_second = (density.unsqueeze(-1) * grid**2).sum(0)
    # Five standard errors of the sample moments (200,000 independent draws).
    n = draws.shape[0]
    tolerance_mean = 5 * draws.std(0) / math.sqrt(n)
    tolerance_second = 5 * (draws**2).std(0) / math.sqrt(n)
    assert ((draws.mean(0) - quadrature_mean).abs() < tolerance_mean + 1e-3).all()
    assert ((draws.pow(2).mean(0) - quadrature_second).abs() < tolerance_second + 1e-3).all()


def test_the_posterior_mean_is_the_image_of_the_base_mean():
    flow = make_flow(3, gain=2.0)
    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    posterior = FlowPosterior(flow, mean, logvar)
    torch.testing.assert_close(flow(posterior.mean)[0], mean, rtol=1e-5, atol=1e-5)


def test_a_flow_computes_in_float32_under_autocast():
    flow = make_flow(3, gain=2.0)
    z = torch.randn(5, 3)
    u, log_det = flow(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u_auto, log_det_auto = flow(z)
        z_auto, _ = flow.inverse(u)
    assert u_auto.dtype == log_det_auto.dtype == z_auto.dtype == torch.float32
    torch.testing.assert_close(u_auto, u)
    torch.testing.assert_close(log_det_auto, log_det)


def test_the_weights_are_the_whole_state_and_rebuild_the_flow_exactly():
    spec = FlowConfig("maf", {"blocks": 2, "hidden": [5]})
    flow = build_flow(spec, 3)
    assert all(key.endswith(("weight", "bias")) for key in flow.state_dict())
    other = build_flow(FlowConfig.from_dict(spec.to_dict()), 3)
    other.load_state_dict(flow.state_dict())
    z = torch.randn(4, 3)
    assert torch.equal(other(z)[0], flow(z)[0])
    assert torch.equal(other.inverse(z)[0], flow.inverse(z)[0])


def test_the_defaults_are_pythaes():
    flow = build_flow(FlowConfig(), 4)
    assert isinstance(flow, MAF)
    assert len(flow.blocks) == 2
    assert [layer.out_features for layer in flow.blocks[0].hidden_layers] == [128, 128, 128]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "maff"}, "unknown flow 'maff'; registered: \\['maf'\\]. Did you mean 'maf'"),
        ({"kwargs": {"blocs": 2}}, "unknown key 'blocs' for MAFOptions.*Did you mean 'blocks'"),
        ({"kwargs": {"blocks": 0}}, "blocks must be >= 1, found 0"),
        ({"kwargs": {"hidden": [8, 0]}}, "hidden sizes must be >= 1, found \\[8, 0\\]"),
        ({"kwargs": {"blocks": "two"}}, "flow.kwargs.blocks: expected an integer, found 'two'"),
    ],
)
def test_bad_flow_configs_are_refused(raw, message):
    with pytest.raises(ConfigError, match=message):
        FlowConfig.from_dict(raw)
    with pytest.raises(ConfigError, match=message):
        FlowConfig(**raw)


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_mades_that_output_zero_make_the_identity(blocks):
    flow = make_flow(3, blocks=blocks)
    with torch.no_grad():
        for block in flow.blocks:
            block.output.weight.zero_()
            block.output.bias.zero_()
    z = torch.randn(4, 3)
    for map_ in (flow, flow.inverse, flow.detached_forward()):
        out, log_det = map_(z)
        assert torch.equal(out, z)
        assert torch.equal(log_det, torch.zeros(4))


def test_the_detached_forward_pass_is_the_forward_pass_without_weight_gradients():
    flow = make_flow(3, gain=2.0)
    z = torch.randn(4, 3, requires_grad=True)
    u, log_det = flow.detached_forward()(z)
    expected_u, expected_log_det = flow(z)
    assert torch.equal(u, expected_u) and torch.equal(log_det, expected_log_det)
    (gradient,) = torch.autograd.grad(u.sum() + log_det.sum(), z)
    (expected,) = torch.autograd.grad(expected_u.sum() + expected_log_det.sum(), z)
    assert torch.equal(gradient, expected)
    assert all(parameter.grad is None for parameter in flow.parameters())
