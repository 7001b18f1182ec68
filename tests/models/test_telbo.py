"""TELBO against hand-computed values: its two stages, the paper's schedule, masks and training.

The stage-2 term is each observed modality's own ELBO, ``gamma_m log p(x_m | z_m) - KL(q(z|x_m)
|| N(0, I))`` with ``KL = 0.5 sum_d (mu^2 + sigma^2 - 1 - log sigma^2)`` of the unimodal
encoder's own mean and variance. MultiVae's stage-2 KL uses the joint log-variance in place of
``log sigma^2``; the tests below would catch it.
"""

from dataclasses import replace

import pytest
import torch
from kit.models import N, tiny_batch, tiny_config, vector_batch
from torch.distributions import Normal, kl_divergence

import multivae
from multivae.config import ConfigError
from multivae.models.telbo import TELBO, TELBOConfig
from multivae.training import Callback, Trainer, TrainingConfig, load_checkpoint
from multivae.training.checkpoint import CHECKPOINT_FILE

SIZES = {"a": 4, "b": 3, "c": 5}  # the shapes of kit.models' "vectors" set
NAMES = list(SIZES)
LATENT = 2
COMPLETE = {name: [True] * N for name in NAMES}
# Row 0 is complete, 1 lacks a, 2 has only a, 3 lacks c, 4 has nothing, 5 has only c.
MISSING = {
    "a": [True, False, True, True, False, False],
    "b": [True, True, False, True, False, False],
    "c": [True, True, False, False, False, True],
}
TIMINGS = ("epoch_time", "samples_per_s")


def make_model(seed=0, weights=None, learn_scale=False, **options) -> TELBO:
    """The kit's tiny TELBO over the vectors set, with modality weights and options."""
    config = tiny_config("telbo")
    modalities = {
        name: replace(spec, weight=(weights or {}).get(name, spec.weight), learn_scale=learn_scale)
        for name, spec in config.modalities.items()
    }
    torch.manual_seed(seed)
    model = TELBO(replace(config, modalities=modalities, **options))
    if learn_scale:
        with torch.no_grad():  # scales away from 1, so that a wrong scale shows
            for i, name in enumerate(NAMES):
                model.likelihood(name).log_scale.fill_(0.1 * (i + 1))
    return model


def make_batch(present=MISSING, seed=1):
    return vector_batch(SIZES, present, seed)


def gaussian(params):
    mean, logvar = params.chunk(2, dim=-1)
    return mean, logvar.clamp(-20.0, 20.0)


def log_likelihood(model, name, z, x):
    scale = model.likelihood(name).log_scale.exp()
    return Normal(model.decoders[name](z.unsqueeze(0))[0], scale).log_prob(x).sum()


def closed_form_kl(mean, logvar):
    """``KL(N(mean, exp(logvar)) || N(0, I))``, written out."""
    return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).sum()


def hand_joint(model, batch, noise, usable):
    """Per row: ``J`` (reconstruction, KL) from the joint encoder, or zeros where not usable."""
    presence = torch.stack([batch.mask[m] for m in NAMES])
    mean, logvar = gaussian(model.joint_encoder(batch.data, presence))
    reconstruction, kl = [], []
    for n in range(N):
        if not usable[n]:
            reconstruction.append(torch.zeros(()))
            kl.append(torch.zeros(()))
            continue
        std = (0.5 * logvar[n]).exp()
        z = mean[n] + std * noise[n]
        reconstruction.append(
            sum(
                model.config.modalities[m].weight * log_likelihood(model, m, z, batch.data[m][n])
                for m in NAMES
                if batch.mask[m][n]
            )
        )
        kl.append(kl_divergence(Normal(mean[n], std), Normal(0.0, 1.0)).sum())
    return torch.stack(reconstruction), torch.stack(kl)


def hand_unimodal(model, batch, noise, gammas):
    """Per row: the sums over its observed modalities of ``U_m``'s reconstruction and KL."""
    reconstruction, kl = torch.zeros(N), torch.zeros(N)
    for i, m in enumerate(NAMES):
        mean, logvar = gaussian(model.encoders[m](batch.data[m]))
        for n in range(N):
            if not batch.mask[m][n]:
                continue
            z = mean[n] + (0.5 * logvar[n]).exp() * noise[i, n]
            reconstruction[n] += gammas[m] * log_likelihood(model, m, z, batch.data[m][n])
            kl[n] += closed_form_kl(mean[n], logvar[n])
    return reconstruction, kl


WEIGHTS = {"a": 2.0}
GAMMAS = {"a": 2.0, "b": 5.0, "c": 1.0}  # b from unimodal_weights, a and c from the weights


@pytest.mark.parametrize("present", [COMPLETE, MISSING], ids=["complete", "missing"])
def test_stage_joint_is_the_elbo_of_the_observed_modalities_under_the_joint_encoder(present):
    model = make_model(weights=WEIGHTS, learn_scale=True, unimodal_weights={"b": 5.0})
    batch = make_batch(present)
    torch.manual_seed(7)
    objective = model.objective(batch)
    torch.manual_seed(7)
    noise = torch.randn(N, LATENT)
    observed = torch.stack([batch.mask[m] for m in NAMES]).any(0)
    with torch.no_grad():
        reconstruction, kl = hand_joint(model, batch, noise, observed)
    torch.testing.assert_close(objective.loss, kl - reconstruction)
    torch.testing.assert_close(objective.parts["reconstruction"], reconstruction)
    assert torch.equal(objective.usable, observed)
    assert objective.loss[~observed].eq(0).all()


@pytest.mark.parametrize("present", [COMPLETE, MISSING], ids=["complete", "missing"])
def test_stage_unimodal_is_the_sum_of_the_observed_modalities_own_elbos(present):
    model = make_model(weights=WEIGHTS, learn_scale=True, unimodal_weights={"b": 5.0})
    model.set_stage("unimodal")
    batch = make_batch(present)
    torch.manual_seed(7)
    objective = model.objective(batch)
    torch.manual_seed(7)
    noise = torch.randn(1, len(NAMES), N, LATENT)[0]
    with torch.no_grad():
        reconstruction, kl = hand_unimodal(model, batch, noise, GAMMAS)
    torch.testing.assert_close(objective.parts["reconstruction"], reconstruction)
    torch.testing.assert_close(objective.parts["kl"], kl)
    torch.testing.assert_close(objective.loss, kl - reconstruction)


def standard_normal_encoders(model):
    """Every unimodal encoder outputs mean 0 and log-variance 0 exactly."""
    with torch.no_grad():
        for encoder in model.encoders.values():
            last = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.zero_()
            last.bias.zero_()


def test_stage_unimodal_kl_is_exactly_zero_for_a_standard_normal_posterior_whatever_the_joint():
    model = make_model()
    standard_normal_encoders(model)
    model.set_stage("unimodal")
    batch = make_batch(COMPLETE)
    with torch.no_grad():  # a joint posterior far from N(0, I): log-variance 3 and above
        head = model.joint_encoder.head[-1].network[-1]
        head.bias[LATENT:] += 3.0
    presence = torch.stack([batch.mask[m] for m in NAMES])
    _, joint_logvar = gaussian(model.joint_encoder(batch.data, presence))
    assert (joint_logvar > 2.0).all()
    torch.manual_seed(3)
    objective = model.objective(batch)
    assert torch.equal(objective.parts["kl"], torch.zeros(N))
    # The reference's term, 0.5 sum(mu_m^2 + exp(logvar_m) - 1 - joint logvar), is not 0 here.
    reference = 0.5 * (0.0 + 1.0 - 1.0 - joint_logvar).sum(-1)
    assert (reference.abs() > 1.0).all()

    # The joint posterior does not enter the stage at all: another one, the same loss, and the
    # joint encoder never runs.
    calls = []
    model.joint_encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        for parameter in model.joint_encoder.parameters():
            parameter.normal_()
    torch.manual_seed(3)
    assert torch.equal(model.objective(batch).loss, objective.loss)
    assert calls == []


def test_stage_unimodal_trains_only_the_unimodal_encoders():
    model = make_model(learn_scale=True)
    batch = make_batch()
    frozen = ("joint_encoder", "decoders", "likelihoods")
    model.set_stage("unimodal")
    model.train()
    assert model.training and model.encoders.training
    assert not any(getattr(model, name).training for name in frozen)
    model(batch).loss.backward()
    for name in frozen:
        for parameter_name, parameter in getattr(model, name).named_parameters():
            assert not parameter.requires_grad, (name, parameter_name)
            assert parameter.grad is None, (name, parameter_name)
    for parameter_name, parameter in model.encoders.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name
    trained = {id(p) for p in model.stage_parameters("unimodal")}
    assert trained == {id(p) for p in model.encoders.parameters()}

    # Stage joint is the other way round: together the stages train every parameter once.
    model.set_stage("joint")
    model.train()
    assert not model.encoders.training and model.joint_encoder.training
    model.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    joint = {id(p) for p in model.stage_parameters("joint")}
    assert joint.isdisjoint(trained) and joint | trained == {id(p) for p in model.parameters()}
    for name in frozen:
        for parameter_name, parameter in getattr(model, name).named_parameters():
            assert parameter.grad is not None, (name, parameter_name)


def test_a_new_model_is_in_its_first_stage_with_every_parameter_trainable():
    # Trainable until the loop enters a stage: a DistributedDataParallel wrapper made before
    # then registers every parameter, which some stage trains.
    model = make_model()
    assert model.stage == "joint" and model.stages == ("joint", "unimodal")
    assert model.capabilities.multi_stage
    assert all(p.requires_grad for p in model.parameters())
    model.set_stage("joint")
    assert not any(p.requires_grad for p in model.encoders.parameters())
    assert TELBO.restore_best_between_stages


def test_complete_only_scores_the_joint_elbo_of_complete_samples_only():
    model = make_model(complete_only=True)
    batch = make_batch()
    torch.manual_seed(7)
    objective = model.objective(batch)
    complete = torch.tensor([True] + [False] * (N - 1))
    assert torch.equal(objective.usable, complete)
    assert objective.loss[~complete].eq(0).all() and objective.loss[0] != 0
    none_complete = make_batch({**MISSING, "a": [False] * N})
    output = model(none_complete)
    assert output.usable == 0 and output.loss == 0

    # The unimodal stage trains every observed modality, as without complete_only.
    plain = make_model()
    for candidate in (model, plain):
        candidate.set_stage("unimodal")
    torch.manual_seed(7)
    found = model(none_complete)
    torch.manual_seed(7)
    assert torch.equal(found.loss, plain(none_complete).loss)
    assert found.usable == 4  # rows 0, 1, 3 and 5 have an observed modality


def stop_gradient_terms(model, batch, seed, joint_usable):
    """The paper's per-row loss by hand, and its joint part alone (what trains the decoders)."""
    torch.manual_seed(seed)
    joint_noise = torch.randn(N, LATENT)
    unimodal_noise = torch.randn(1, len(NAMES), N, LATENT)[0]
    gammas = {m: model.config.modalities[m].weight for m in NAMES}
    joint_reconstruction, joint_kl = hand_joint(model, batch, joint_noise, joint_usable)
    reconstruction, kl = hand_unimodal(model, batch, unimodal_noise, gammas)
    presence = torch.stack([batch.mask[m] for m in NAMES])
    terms = (presence.sum(0) + joint_usable.long()).clamp(min=1)
    joint = (joint_kl - joint_reconstruction) / terms
    return joint + (kl - reconstruction) / terms, joint


@pytest.mark.parametrize("complete_only", [False, True])
def test_stop_gradient_averages_the_available_elbos_per_sample(complete_only):
    model = make_model(weights=WEIGHTS, schedule="stop_gradient", complete_only=complete_only)
    assert model.stages == ("main",) and model.stage == "main"
    assert not model.capabilities.multi_stage
    assert all(p.requires_grad for p in model.parameters())
    batch = make_batch()
    presence = torch.stack([batch.mask[m] for m in NAMES])
    usable = presence.all(0) if complete_only else presence.any(0)
    torch.manual_seed(7)
    objective = model.objective(batch)
    with torch.no_grad():
        expected, _ = stop_gradient_terms(model, batch, 7, usable)
    torch.testing.assert_close(objective.loss, expected)
    assert torch.equal(objective.usable, presence.any(0))
    torch.testing.assert_close(
        objective.loss, objective.parts["kl"] - objective.parts["reconstruction"]
    )


def test_stop_gradient_trains_decoders_and_scales_from_the_joint_elbo_alone():
    model = make_model(schedule="stop_gradient", learn_scale=True)
    batch = make_batch()
    torch.manual_seed(7)
    model(batch).loss.backward()
    found = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    observed = torch.stack([batch.mask[m] for m in NAMES]).any(0)
    _, joint = stop_gradient_terms(model, batch, 7, observed)
    joint.mean().backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("decoders.", "likelihoods.", "joint_encoder.")):
            torch.testing.assert_close(found[name], parameter.grad, msg=name)
        else:  # the unimodal encoders learn from their own terms only
            assert name.startswith("encoders.") and parameter.grad is None, name
            assert found[name].abs().sum() > 0, name


def test_posterior_is_the_joint_encoder_when_everything_is_observed_else_a_product():
    model = make_model().eval()
    batch = make_batch()
    presence = torch.stack([batch.mask[m] for m in NAMES])
    joint_mean, joint_logvar = gaussian(model.joint_encoder(batch.data, presence))
    experts = {m: gaussian(model.encoders[m](batch.data[m])) for m in NAMES}

    def product(names, n):
        names = [m for m in names if batch.mask[m][n]]
        if not names:
            return torch.zeros(LATENT), torch.zeros(LATENT)
        precision = sum(experts[m][1][n].neg().exp() for m in names)
        mean = sum(experts[m][0][n] * experts[m][1][n].neg().exp() for m in names) / precision
        return mean, -precision.log()

    for cond in (None, ["a"], ["a", "b"], ["b", "c"]):
        posterior = model.posterior(batch, cond)
        for n in range(N):
            if cond is None and n == 0:  # the one complete row
                expected = joint_mean[n], joint_logvar[n]
            else:
                expected = product(cond or NAMES, n)
            torch.testing.assert_close(posterior.mean[n], expected[0], msg=f"{cond} {n}")
            torch.testing.assert_close(posterior.logvar[n], expected[1], msg=f"{cond} {n}")
    # A single observed modality conditions through its own encoder.
    only_a = model.posterior(batch, ["a"])
    torch.testing.assert_close(only_a.mean[0], experts["a"][0][0])
    torch.testing.assert_close(only_a.logvar[0], experts["a"][1][0])
    assert all(model.conditionable(cond) for cond in (["a"], ["a", "c"], NAMES))


@pytest.mark.parametrize("complete_only", [False, True])
def test_the_nll_proposal_is_the_masked_joint_encoder(complete_only):
    model = make_model(complete_only=complete_only).eval()
    batch = make_batch()
    torch.manual_seed(0)
    z, log_psi = model.joint_proposal(batch, ["a", "b"], 3)
    mask = torch.stack([batch.mask[m] & (m != "c") for m in NAMES])
    if complete_only:  # never trained on incomplete patterns: the posterior instead
        expected = model.posterior(batch, ["a", "b"])
    else:
        expected = model.joint_posterior(batch, mask)
    torch.testing.assert_close(log_psi, expected.log_prob(z))
    torch.manual_seed(0)
    torch.testing.assert_close(z, expected.rsample(3))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schedule": "single"}, r"schedule: expected one of \['two_stage', 'stop_gradient'\]"),
        ({"unimodal_weights": {"d": 1.0}}, r"unimodal_weights names unknown modalities \['d'\]"),
        ({"unimodal_weights": {"a": -1.0}}, r"unimodal_weights must be >= 0, found \{'a': -1.0\}"),
        ({"joint_encoders": {"e": {"name": "mlp"}}}, r"joint_encoders names unknown .*\['e'\]"),
        ({"joint_feature_dim": 0}, "joint_feature_dim must be >= 1, found 0"),
        ({"joint_hidden": [8, 0]}, r"joint_hidden sizes must be >= 1, found \[8, 0\]"),
        ({"complete_onyl": True}, "unknown key 'complete_onyl'.*complete_only"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(options, message):
    raw = tiny_config("telbo").to_dict()
    with pytest.raises(ConfigError, match=message):
        multivae.create_model("telbo", {**raw, **options})


def test_save_then_load_keeps_every_option_and_output(tmp_path):
    options = {
        "schedule": "stop_gradient",
        "unimodal_weights": {"b": 3.0},
        "complete_only": True,
        "joint_feature_dim": 6,
        "joint_hidden": (5, 4),
        "joint_encoders": {"a": {"name": "mlp", "kwargs": {"hidden": [3]}}},
    }
    config = TELBOConfig.from_dict({**tiny_config("telbo").to_dict(), **options})
    torch.manual_seed(0)
    model = TELBO(config)
    loaded = multivae.load_model(model.save_pretrained(tmp_path / "model"))
    assert isinstance(loaded, TELBO) and loaded.config == model.config
    assert loaded.stages == ("main",) and loaded.unimodal_weights == {"a": 1.0, "b": 3.0, "c": 1.0}
    batch = make_batch()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.manual_seed(1)
    expected = model(batch).loss
    torch.manual_seed(1)
    assert torch.equal(loaded(batch).loss, expected)

    # A two-stage model saved after its second stage loads in its first, weights unchanged.
    two_stage = make_model()
    two_stage.set_stage("unimodal")
    again = multivae.load_model(two_stage.save_pretrained(tmp_path / "two"))
    assert again.stage == "joint"
    for cond in (["a"], ["a", "b"], None):
        torch.manual_seed(2)
        expected = two_stage.eval().predict(batch, cond=cond)
        torch.manual_seed(2)
        found = again.eval().predict(batch, cond=cond)
        for name in NAMES:
            assert torch.equal(found[name], expected[name]), (cond, name)


# ------------------------------------------------------------------------------------------------
# Training through the real loop


def batches(count=4):
    """Tiny batches of the kit's vectors set, some rows incomplete."""
    present = {"a": [True, False] * (N // 2), "c": [True, True, False] * (N // 3)}
    return [tiny_batch("vectors", present, seed=s) for s in range(count)]


def training(**options):
    return TrainingConfig.from_dict(
        {
            "device": "cpu",
            "progress_bar": False,
            "stage_epochs": {"joint": 2, "unimodal": 3},
            "optimizer": {"name": "Adam", "kwargs": {"lr": 0.05}},
            **options,
        }
    )


class Killed(Exception):
    pass


class Snapshots(Callback):
    """The weights after every epoch; raises at the end of epoch ``crash`` (a killed run)."""

    def __init__(self, crash=None):
        self.crash = crash
        self.weights = {}
        self.trainer = None

    def on_train_begin(self, trainer):
        self.trainer = trainer

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.crash:
            raise Killed
        state = self.trainer.module.state_dict()
        self.weights[epoch] = {k: v.clone() for k, v in state.items()}
        return False


def test_stage_unimodal_starts_from_the_best_joint_weights_and_changes_only_the_encoders(tmp_path):
    model = make_model()
    snapshots = Snapshots()
    result = Trainer(model, training(), tmp_path, callbacks=[snapshots]).fit(batches(), batches(1))
    assert [r["stage"] for r in result.history] == ["joint"] * 2 + ["unimodal"] * 3
    joint_losses = [r["val_loss"] for r in result.history[:2]]
    # At this learning rate the joint stage's best epoch is its first: restoring it shows.
    assert joint_losses[0] < joint_losses[1]
    best, last_joint = snapshots.weights[1], snapshots.weights[2]
    final = model.state_dict()
    for key, value in final.items():
        if key.startswith("encoders."):
            assert not torch.equal(value, last_joint[key]), key
        else:  # the joint stage's best weights, restored at the switch, then frozen
            assert torch.equal(value, best[key]), key


def test_complete_only_skips_the_joint_steps_of_batches_without_a_complete_sample(tmp_path):
    none_complete = tiny_batch("vectors", {"a": [False] * N}, seed=9)
    data = [*batches(2), none_complete]
    model = make_model(complete_only=True)
    config = training(stage_epochs={"joint": 1, "unimodal": 1})
    result = Trainer(model, config, tmp_path).fit(data)
    assert [(r["stage"], r.get("skipped_steps", 0)) for r in result.history] == [
        ("joint", 1),
        ("unimodal", 0),
    ]


def test_resume_in_the_unimodal_stage_is_exact(tmp_path):
    reference = make_model()
    expected = Trainer(reference, training(), tmp_path / "full").fit(batches(), batches(1))

    # Killed at the end of epoch 4, the unimodal stage's second: its checkpoint is epoch 3's.
    with pytest.raises(Killed):
        Trainer(make_model(), training(), tmp_path / "run", callbacks=[Snapshots(4)]).fit(
            batches(), batches(1)
        )
    checkpoint = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert (checkpoint["loop"]["epoch"], checkpoint["loop"]["stage_index"]) == (3, 1)

    # A new process: a model initialized differently, the global generator elsewhere.
    model = make_model(seed=99)
    torch.rand(7)
    result = Trainer(model, training(), tmp_path / "run").fit(batches(), batches(1), resume=True)

    def without_timings(history):
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in history]

    assert without_timings(result.history) == without_timings(expected.history)
    assert (result.best_epoch, result.best_loss) == (expected.best_epoch, expected.best_loss)
    reference_state = reference.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference_state[key]), key
