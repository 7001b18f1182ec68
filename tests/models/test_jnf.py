"""JNF against hand-computed values: both stages' losses, HMC's target, the stages' freezing."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import multivae
from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import ModalityConfig
from multivae.models.jnf import (
    JNF,
    HMCSettings,
    JNFConfig,
    JNFPosterior,
    hamiltonian_monte_carlo,
)
from multivae.nn.architectures import ArchitectureConfig
from multivae.nn.flows import MAF, FlowConfig, FlowPosterior, MAFOptions
from multivae.nn.priors import StandardNormalPrior
from multivae.training import Trainer, TrainingConfig

MLP = ArchitectureConfig("mlp", {"hidden": [8]})
SIZES = {"a": 3, "b": 2, "c": 4}
WEIGHTS = {"a": 1.0, "b": 0.5, "c": 2.0}
NAMES = list(SIZES)
LATENT = 2
N = 5
SMALL_FLOW = FlowConfig("maf", {"blocks": 2, "hidden": [8]})
MASKS = {
    "complete": {name: [True] * N for name in NAMES},
    # Row 0 complete, row 1 lacks a, row 2 has only a, row 3 has a and c, row 4 nothing.
    "missing": {
        "a": [True, False, True, True, False],
        "b": [True, True, False, False, False],
        "c": [True, True, False, True, False],
    },
}


def make_model(sizes=SIZES, seed=0, **options) -> JNF:
    torch.manual_seed(seed)
    modalities = {
        name: ModalityConfig(shape=(size,), weight=WEIGHTS.get(name, 1.0), encoder=MLP, decoder=MLP)
        for name, size in sizes.items()
    }
    options = {"flow": SMALL_FLOW, "joint_feature_dim": 4, "joint_hidden": (8,), **options}
    model = multivae.create_model(
        "jnf", JNFConfig(modalities=modalities, latent_dim=LATENT, **options)
    )
    assert isinstance(model, JNF)
    return model


def make_batch(mask="missing", sizes=SIZES, seed=1, rows=N) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    present = {name: torch.tensor(MASKS[mask][name])[:rows] for name in sizes}
    data = {
        name: torch.randn(rows, size, generator=generator) * present[name].unsqueeze(-1)
        for name, size in sizes.items()
    }
    return Batch(data=data, mask=present)


def make_identity(flow: MAF) -> None:
    """Every MADE outputs 0: the flow is the identity."""
    with torch.no_grad():
        for block in flow.blocks:
            block.output.weight.zero_()
            block.output.bias.zero_()


def joint_by_hand(model: JNF, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.stack([batch.mask[m] for m in model.modalities])
    mean, logvar = model.joint_encoder(batch.data, mask).chunk(2, dim=-1)
    return mean, logvar.clamp(-20.0, 20.0)


@pytest.mark.parametrize("mask", ["complete", "missing"])
def test_stage_joint_loss_is_the_beta_elbo_by_hand(mask):
    model = make_model(beta=0.5, warmup=4.0)
    model.progress = 1.0  # a quarter of the warm-up: the KL weighs 0.25 * beta
    batch = make_batch(mask)
    mean, logvar = joint_by_hand(model, batch)
    torch.manual_seed(7)
    noise = torch.randn(N, LATENT)  # the objective's one draw
    z = mean + torch.exp(0.5 * logvar) * noise
    losses, reconstructions, kls = [], [], []
    for n in range(N):
        observed = [m for m in NAMES if batch.mask[m][n]]
        reconstruction = sum(
            WEIGHTS[m]
            * Normal(model.decoders[m](z[n : n + 1])[0], 1.0).log_prob(batch.data[m][n]).sum()
            for m in observed
        )
        q = Normal(mean[n], torch.exp(0.5 * logvar[n]))
        kl = kl_divergence(q, Normal(torch.zeros(LATENT), torch.ones(LATENT))).sum()
        if not observed:
            reconstruction, kl = torch.zeros(()), torch.zeros(())
        reconstructions.append(reconstruction)
        kls.append(kl)
        losses.append(-reconstruction + 0.25 * 0.5 * kl)
    torch.manual_seed(7)
    output = model(batch)
    torch.testing.assert_close(output.loss, torch.stack(losses).mean())
    torch.testing.assert_close(
        output.metrics["reconstruction"], torch.stack(reconstructions).mean()
    )
    torch.testing.assert_close(output.metrics["kl"], torch.stack(kls).mean())
    assert float(output.metrics["kl_weight"]) == 0.25
    assert output.usable == (N if mask == "complete" else N - 1)


@pytest.mark.parametrize("mask", ["complete", "missing"])
def test_stage_flows_loss_with_identity_flows_is_the_gaussian_kl_estimate_by_hand(mask):
    """The spec's hand test: with identity flows the stage-2 term is -log N(z; mu_m, var_m)."""
    model = make_model()
    for name in NAMES:
        make_identity(model.flow(name))
    model.set_stage("flows")
    batch = make_batch(mask)
    mean, logvar = joint_by_hand(model, batch)
    torch.manual_seed(3)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(N, LATENT)
    q_joint = Normal(mean, torch.exp(0.5 * logvar))
    losses = []
    for n in range(N):
        loss = torch.zeros(())
        for m in NAMES:
            if not batch.mask[m][n]:
                continue
            expert_mean, expert_logvar = model.encoders[m](batch.data[m][n : n + 1])[0].chunk(2)
            q_m = Normal(expert_mean, torch.exp(0.5 * expert_logvar))
            loss = loss + q_joint.log_prob(z)[n].sum() - q_m.log_prob(z[n]).sum()
        losses.append(loss)
    torch.manual_seed(3)
    output = model(batch)
    torch.testing.assert_close(output.loss, torch.stack(losses).mean())
    torch.testing.assert_close(output.metrics["kl_experts"], torch.stack(losses).mean())


def test_the_stage_flows_loss_estimates_the_sum_of_kls_to_the_flow_posteriors():
    """One row repeated 40,000 times: the batch mean is the expectation, a sum of KLs.

    With identity flows each KL is between Gaussians, in closed form.
    """
    model = make_model()
    for name in NAMES:
        make_identity(model.flow(name))
    model.set_stage("flows")
    one = make_batch("complete", rows=1)
    rows = 40_000
    batch = Batch(
        data={m: v.expand(rows, -1) for m, v in one.data.items()},
        mask={m: v.expand(rows) for m, v in one.mask.items()},
    )
    mean, logvar = joint_by_hand(model, one)
    q_joint = Normal(mean[0], torch.exp(0.5 * logvar[0]))
    expected = 0.0
    for m in NAMES:
        expert_mean, expert_logvar = model.encoders[m](one.data[m])[0].chunk(2)
        q_m = Normal(expert_mean, torch.exp(0.5 * expert_logvar))
        expected += float(kl_divergence(q_joint, q_m).sum().detach())
    torch.manual_seed(0)
    with torch.no_grad():
        per_sample = model.objective(batch).loss
    error = float(per_sample.std()) / math.sqrt(rows)
    assert abs(float(per_sample.mean()) - expected) < 5 * error


def test_each_stage_trains_only_its_modules():
    model = make_model()
    batch = make_batch("complete")
    model.set_stage("joint")
    model.train()
    model(batch).loss.backward()
    trained_in_joint = ("joint_encoder.", "decoders.")
    for name, parameter in model.named_parameters():
        if name.startswith(trained_in_joint):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None and not parameter.requires_grad, name
    assert not model.encoders.training and not model.flows.training
    model.zero_grad(set_to_none=True)
    model.set_stage("flows")
    model.train()
    model(batch).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("encoders.", "flows.")):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None and not parameter.requires_grad, name
    assert not model.joint_encoder.training and not model.decoders.training
    assert model.encoders.training and model.flows.training


def test_stage_flows_sends_no_gradient_through_z_even_without_freezing():
    model = make_model()
    model.stage = "flows"  # the objective only; every parameter still requires a gradient
    model(make_batch("complete")).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("joint_encoder.", "decoders.")):
            assert parameter.grad is None, name


def test_a_modality_absent_from_the_batch_gets_zero_gradient_in_stage_flows():
    model = make_model()
    model.set_stage("flows")
    batch = make_batch("missing")
    absent = Batch(
        data={**batch.data, "b": torch.zeros(N, SIZES["b"])},
        mask={**batch.mask, "b": torch.zeros(N, dtype=torch.bool)},
    )
    model(absent).loss.backward()
    for module in (model.encoders["b"], model.flows["b"]):
        for parameter in module.parameters():
            assert parameter.grad is not None and torch.equal(
                parameter.grad, torch.zeros_like(parameter)
            )
    assert any(p.grad.abs().sum() > 0 for p in model.flows["a"].parameters())
    # Absent cells' values do not matter.
    noisy = Batch(data={**absent.data, "b": torch.randn(N, SIZES["b"])}, mask=absent.mask)
    torch.manual_seed(0)
    first = model(absent).loss
    torch.manual_seed(0)
    assert torch.equal(model(noisy).loss, first)


@pytest.mark.parametrize("stage", JNF.stages)
def test_complete_only_scores_complete_samples_alone(stage):
    model = make_model(complete_only=True)
    model.set_stage(stage)
    reference = make_model()  # the same weights, every sample scored
    reference.set_stage(stage)
    batch = make_batch("missing")
    torch.manual_seed(0)
    objective = model.objective(batch)
    torch.manual_seed(0)
    everything = reference.objective(batch)
    complete = torch.tensor([True, False, False, False, False])
    assert torch.equal(objective.usable, complete)
    torch.testing.assert_close(objective.loss[complete], everything.loss[complete])
    assert torch.equal(objective.loss[~complete], torch.zeros(N - 1))
    incomplete = Batch(data=batch.data, mask={**batch.mask, "b": torch.zeros(N, dtype=torch.bool)})
    output = model(incomplete)
    assert output.usable == 0 and output.loss == 0


def test_the_loop_skips_batches_without_a_complete_sample(tmp_path):
    model = make_model(complete_only=True)
    batches = [make_batch("complete", seed=2), make_batch("missing", seed=3)]
    batches[1].mask["a"][0] = False  # no complete row left
    config = TrainingConfig(epochs=1, progress_bar=False, device="cpu", checkpoint_every=0)
    result = Trainer(model, config, tmp_path / "run").fit(batches, batches[:1])
    assert [record["stage"] for record in result.history] == ["joint", "flows"]
    assert [record["skipped_steps"] for record in result.history] == [1, 1]


def test_the_loop_freezes_each_stage_and_starts_stage_flows_from_the_best_joint_weights(tmp_path):
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = []

    class Snapshot:
        def on_train_begin(self, trainer):
            pass

        def on_epoch_end(self, epoch, record):
            snapshots.append((record, {k: v.clone() for k, v in model.state_dict().items()}))

        def on_epoch_saved(self, epoch, record, path):
            pass

        def on_train_end(self, result):
            pass

        def on_train_error(self, error):
            pass

    batches = [make_batch("complete", seed=s) for s in range(2)] + [make_batch("missing")]
    config = TrainingConfig(epochs=3, progress_bar=False, device="cpu", checkpoint_every=0)
    Trainer(model, config, tmp_path / "run", callbacks=[Snapshot()]).fit(batches, batches[:1])

    def part(state, prefixes):
        return {k: v for k, v in state.items() if k.startswith(prefixes)}

    unimodal, joint = ("encoders.", "flows."), ("joint_encoder.", "decoders.")
    stage_joint = [(r, s) for r, s in snapshots if r["stage"] == "joint"]
    stage_flows = [s for r, s in snapshots if r["stage"] == "flows"]
    for _, state in stage_joint:
        assert all(torch.equal(v, initial[k]) for k, v in part(state, unimodal).items())
    best = min(stage_joint, key=lambda entry: entry[0]["val_loss"])[1]
    for state in stage_flows:
        assert all(torch.equal(v, best[k]) for k, v in part(state, joint).items())
    assert not all(torch.equal(v, initial[k]) for k, v in part(stage_flows[-1], unimodal).items())


def three_experts(means, variances, divide_prior, settings):
    """A posterior over one row with three identity-flow experts (no joint encoder)."""
    flows = []
    for _ in means:
        flow = MAF(LATENT, MAFOptions(blocks=2, hidden=(8,)))
        make_identity(flow)
        flows.append(flow)
    mean = torch.tensor(means).reshape(3, 1, LATENT)
    logvar = torch.tensor(variances).log().reshape(3, 1, LATENT)
    mask = torch.ones(3, 1, dtype=torch.bool)
    return JNFPosterior(
        flows,
        mean,
        logvar,
        mask,
        None,
        StandardNormalPrior(LATENT),
        divide_prior,
        settings,
        1,
        ["a", "b", "c"],
    )


MEANS = [[0.5, -1.0], [-0.3, 0.2], [1.0, 0.4]]
VARIANCES = [[0.5, 0.8], [0.4, 0.5], [0.8, 1.0]]


@pytest.mark.parametrize("divide_prior", ["exact", "once"])
def test_hmc_with_identity_flows_samples_the_product_divided_by_the_prior(divide_prior):
    """The spec's hand test: three Gaussian experts divided by N(0, I) twice (``exact``).

    The target is Gaussian with precision ``sum_m 1/var_m - c`` and mean ``(sum_m mu_m/var_m) /
    precision``, ``c = 2`` (``exact``) or 1 (``once``). 10,000 independent chains, long enough
    to mix (trajectories of 0.5, about the target's standard deviation, 60 steps): their sample
    mean and variance are within five standard errors of the closed form and, for ``exact``, far
    from the ``once`` rule's.
    """
    chains = 10_000
    settings = HMCSettings(steps=60, leapfrog_steps=10, step_size=0.05)
    posterior = three_experts(MEANS, VARIANCES, divide_prior, settings)
    torch.manual_seed(0)
    with torch.no_grad():
        z = posterior.rsample(chains)[:, 0].double()
    precisions = 1.0 / torch.tensor(VARIANCES, dtype=torch.float64)
    weighted = (precisions * torch.tensor(MEANS, dtype=torch.float64)).sum(0)

    def closed_form(removed):
        precision = precisions.sum(0) - removed
        return weighted / precision, 1.0 / precision

    mean, variance = closed_form(2.0 if divide_prior == "exact" else 1.0)
    mean_error = (variance / chains).sqrt()
    variance_error = variance * math.sqrt(2.0 / (chains - 1))
    assert ((z.mean(0) - mean).abs() < 5 * mean_error).all(), (z.mean(0), mean)
    assert ((z.var(0) - variance).abs() < 5 * variance_error).all(), (z.var(0), variance)
    if divide_prior == "exact":
        _, once_variance = closed_form(1.0)
        assert ((z.var(0) - once_variance).abs() > 10 * variance_error).all()


def test_hmc_stays_finite_on_an_improper_target_and_rejects_non_finite_proposals():
    # Precisions sum to 0.75 < 2: the exact target grows in the tails.
    posterior = three_experts(MEANS, [[4.0, 4.0]] * 3, "exact", HMCSettings(20, 10, 0.5))
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.isfinite(posterior.rsample(50)).all()

    def target(z):  # chain 1's target is NaN everywhere it can go
        value = -0.5 * z.square().sum(-1)
        return torch.where(torch.arange(3) == 1, torch.full_like(value, math.nan), value)

    start = torch.randn(3, 2)
    end = hamiltonian_monte_carlo(target, start, HMCSettings(5, 3, 0.3))
    assert torch.equal(end[1], start[1])
    assert not torch.equal(end[0], start[0])


def test_hmc_runs_under_no_grad_and_leaves_no_parameter_gradient():
    model = make_model(hmc_steps=3, hmc_leapfrog_steps=2).eval()
    batch = make_batch("complete")
    with torch.no_grad():
        z = model.encode(batch, ["a", "b"], n_samples=2)
    assert z.shape == (2, N, LATENT) and not z.requires_grad
    assert all(parameter.grad is None for parameter in model.parameters())


def test_the_posterior_picks_each_rows_inference_by_what_it_has():
    model = make_model(hmc_steps=2, hmc_leapfrog_steps=2).eval()
    batch = make_batch("missing")  # complete, {b, c}, {a}, {a, c}, nothing
    joint = model.joint_posterior(batch, torch.stack([batch.mask[m] for m in NAMES]))
    experts = {}
    for m in NAMES:
        mean, logvar = model.encoders[m](batch.data[m]).chunk(2, dim=-1)
        experts[m] = (mean.detach(), logvar.detach())
    posterior = model.posterior(batch)
    torch.manual_seed(5)
    with torch.no_grad():
        z = posterior.rsample(2)
        mean = posterior.mean
    torch.manual_seed(5)
    noise = torch.randn(2, N, LATENT)  # the first draw, shared by every kind of row
    with torch.no_grad():
        expected_joint = joint.mean + torch.exp(0.5 * joint.logvar) * noise
        a_mean, a_logvar = experts["a"]
        expected_a = model.flow("a").inverse(a_mean + torch.exp(0.5 * a_logvar) * noise)[0]
        torch.testing.assert_close(z[:, 0], expected_joint[:, 0])
        torch.testing.assert_close(z[:, 2], expected_a[:, 2])
        torch.testing.assert_close(z[:, 4], noise[:, 4])
        torch.testing.assert_close(mean[0], joint.mean[0])
        torch.testing.assert_close(mean[2], model.flow("a").inverse(a_mean)[0][2])
        torch.testing.assert_close(mean[4], torch.zeros(LATENT))
    assert posterior.hmc_rows.tolist() == [False, True, False, True, False]
    assert torch.isfinite(z).all() and torch.isfinite(mean).all()


def test_a_single_modality_posterior_is_the_flow_posterior_with_its_density():
    model = make_model().eval()
    batch = make_batch("missing")
    mean, logvar = model.encoders["a"](batch.data["a"]).chunk(2, dim=-1)
    flow_posterior = FlowPosterior(model.flow("a"), mean, logvar.clamp(-20.0, 20.0))
    z = torch.randn(3, N, LATENT)
    with torch.no_grad():
        found = model.posterior(batch, ["a"]).log_prob(z)
        expected = flow_posterior.log_prob(z)
        prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    present = batch.mask["a"]
    torch.testing.assert_close(found[:, present], expected[:, present])
    torch.testing.assert_close(found[:, ~present], prior[:, ~present])


def test_the_hmc_posterior_has_no_density():
    model = make_model().eval()
    posterior = model.posterior(make_batch("missing"), ["a", "c"])
    with pytest.raises(NotImplementedError, match="sampled by Hamiltonian Monte Carlo"):
        posterior.log_prob(torch.zeros(N, LATENT))
    # Every modality of a three-modality model: incomplete rows need HMC.
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        model.posterior(make_batch("missing")).log_prob(torch.zeros(N, LATENT))
    # Two modalities: a complete row has the joint encoder, an incomplete one a flow posterior.
    two = make_model(sizes={"a": 3, "b": 2}).eval()
    batch = make_batch("missing", sizes={"a": 3, "b": 2})
    assert torch.isfinite(two.posterior(batch).log_prob(torch.zeros(N, LATENT))).all()


def test_the_mean_of_an_hmc_posterior_is_deterministic_and_leaves_the_global_generator():
    model = make_model(hmc_steps=5, hmc_leapfrog_steps=3).eval()
    batch = make_batch("complete")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with torch.no_grad():
        first = model.posterior(batch, ["a", "b"]).mean
        second = model.posterior(batch, ["a", "b"]).mean
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)


def test_the_joint_nll_proposal_is_the_masked_joint_encoder():
    model = make_model().eval()
    batch = make_batch("missing")
    torch.manual_seed(0)
    with torch.no_grad():
        z, log_psi = model.joint_proposal(batch, ["a", "b"], 4)
    mask = torch.stack([batch.mask["a"], batch.mask["b"], torch.zeros(N, dtype=torch.bool)])
    mean, logvar = joint_by_hand(
        model, Batch(data=batch.data, mask=dict(zip(NAMES, mask, strict=True)))
    )
    expected = Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_psi, expected.detach())
    nll = model.nll(batch, k=50)
    assert torch.isfinite(nll).all() and nll[4] == 0


def test_save_and_load_restore_the_flows_exactly(tmp_path):
    model = make_model(hmc_steps=4, hmc_leapfrog_steps=3)
    with torch.no_grad():
        for parameter in model.flows.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    model.eval()
    loaded = multivae.load_model(model.save_pretrained(tmp_path / "jnf"))
    assert loaded.config == model.config
    keys = model.state_dict().keys()
    assert any(key.startswith("flows.a.blocks.1.") for key in keys)
    assert loaded.state_dict().keys() == keys
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    batch = make_batch("missing")
    for cond in (["a"], ["a", "c"], None):
        torch.manual_seed(1)
        expected = model.predict(batch, cond=cond)
        torch.manual_seed(1)
        found = loaded.predict(batch, cond=cond)
        assert all(torch.equal(found[m], expected[m]) for m in NAMES), cond


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beta": -1.0}, "jnf: beta must be a finite number >= 0, found -1.0"),
        ({"warmup": -2.0}, "jnf: warmup must be a finite number >= 0, found -2.0"),
        ({"joint_feature_dim": 0}, "jnf: joint_feature_dim must be >= 1, found 0"),
        ({"joint_hidden": (8, 0)}, "jnf: joint_hidden sizes must be >= 1, found \\[8, 0\\]"),
        ({"joint_encoders": {"z": MLP}}, "joint_encoders names unknown modalities \\['z'\\]"),
        ({"hmc_steps": 0}, "jnf: hmc_steps must be >= 1, found 0"),
        ({"hmc_leapfrog_steps": 0}, "jnf: hmc_leapfrog_steps must be >= 1, found 0"),
        ({"hmc_mean_chains": 0}, "jnf: hmc_mean_chains must be >= 1, found 0"),
        ({"hmc_step_size": 0.0}, "jnf: hmc_step_size must be a finite number > 0, found 0.0"),
        ({"hmc_step_size": math.inf}, "hmc_step_size must be a finite number > 0, found inf"),
        ({"divide_prior": "twice"}, "divide_prior: expected one of \\['exact', 'once'\\]"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(options, message):
    with pytest.raises(ConfigError, match=message):
        make_model(**options)


def test_flow_options_are_checked_from_plain_config_data():
    raw = make_model().config.to_dict()
    raw["flow"] = {"name": "maf", "kwargs": {"blocks": 0}}
    with pytest.raises(ConfigError, match="blocks must be >= 1, found 0"):
        JNFConfig.from_dict(raw)
    raw["flow"] = {"name": "realnvp"}
    with pytest.raises(ConfigError, match="unknown flow 'realnvp'"):
        JNFConfig.from_dict(raw)


def test_hmc_runs_on_the_meta_device_and_in_float32_under_autocast():
    model = make_model(hmc_steps=2, hmc_leapfrog_steps=2, hmc_mean_chains=2).eval()
    batch = make_batch("missing")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        posterior = model.posterior(batch, ["a", "c"])
        z = posterior.rsample(3)
        assert z.dtype == posterior.mean.dtype == torch.float32
    assert torch.isfinite(z).all()
    meta = model.to("meta")
    with torch.no_grad():
        posterior = meta.posterior(batch.to("meta"), ["a", "c"])
        assert posterior.rsample(3).device.type == "meta"
        assert posterior.mean.shape == (N, LATENT)


def test_stage_flows_keeps_its_float32_gradients_under_bf16_autocast():
    model = make_model()
    model.set_stage("flows")
    batch = make_batch("missing")

    def gradients(autocast):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(batch).loss
        assert loss.dtype == torch.float32
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    full, half = gradients(False), gradients(True)
    assert torch.nn.functional.cosine_similarity(full, half, dim=0) > 0.99
