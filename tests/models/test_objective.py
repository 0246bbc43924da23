import pytest
import torch

from models import estimators, networks
from models.objective import Objective
from models.regularizers import TotalVariation
from models.schedule import make_schedule
from models.spec import RunSpec
from models.trainer import autocast_call

TV = TotalVariation(TotalVariation.Params())


def make(penalty=TV, **spec):
    spec = RunSpec.model_validate({"lambda": 1.0, **spec})
    return Objective(spec, make_schedule(spec.model), penalty)


def unet():
    torch.manual_seed(0)
    return networks.build_unet("unet-xs", 8, 1)


def batch(t):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(len(t), 1, 8, 8, generator=g) * 2 - 1
    return x0, torch.tensor(t), torch.randn(x0.shape, generator=g)


def test_t_max_masks_the_penalty_exactly():
    obj, net = make(reg_schedule={"t_min": 0, "t_max": 200}), autocast_call(unet(), bf16=False)
    x0, t, noise = batch([0, 199, 200, 999])
    x_t = obj.schedule.add_noise(x0, t, noise)
    output = net(x_t, t)
    penalty = obj.tweedie_penalty(output, x_t, t, obj.mask(t))
    expected = TV(estimators.tweedie_x0(output, x_t, t, obj.schedule, "epsilon"))
    assert torch.equal(penalty[:2], expected[:2])
    assert torch.equal(penalty[2:], torch.zeros(2))
    parts = obj(net, x0, t, noise, lam_eff=obj.lambda_eff(0))
    assert parts.penalty_count == 2
    torch.testing.assert_close(parts.penalty_sum, expected[:2].sum())


def test_outside_the_mask_the_gradient_is_the_vanilla_one():
    x0, t, noise = batch([200, 500, 999])
    grads = []
    for lam in (1.0, 0.0):
        net, obj = unet(), make(**{"lambda": lam})
        obj(autocast_call(net, False), x0, t, noise, lam_eff=obj.lambda_eff(0)).total.backward()
        grads.append([p.grad for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_every_n_steps_keeps_the_expected_weight():
    obj = make(**{"lambda": 0.5}, reg_schedule={"every": 3})
    lams = [obj.lambda_eff(step) for step in range(9)]
    assert lams == [1.5, 0, 0, 1.5, 0, 0, 1.5, 0, 0]
    assert sum(lams) / len(lams) == 0.5


def test_lambda_warms_up_linearly_from_zero():
    obj = make(**{"lambda": 2.0}, reg_schedule={"warmup_steps": 10})
    assert [obj.lambda_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert obj.lambda_eff(0) == 0.0


@pytest.mark.parametrize("weighting", ["none", "snr", "min_snr", "alpha_bar"])
def test_weightings(weighting):
    obj = make(reg_schedule={"weighting": weighting, "gamma": 5.0})
    t = torch.tensor([0, 100, 900])
    snr = obj.schedule.snr[t]
    expected = {
        "none": torch.ones(3),
        "snr": snr,
        "min_snr": snr.clamp(max=5.0),
        "alpha_bar": obj.schedule.abar[t],
    }
    torch.testing.assert_close(obj.weight(t), expected[weighting])


def test_lambda_zero_never_computes_the_penalty():
    calls = []

    def counting_tv(x):
        calls.append(x.shape)
        return TV(x)

    obj = make(counting_tv, **{"lambda": 0.0})
    x0, t, noise = batch([0, 10])
    parts = obj(autocast_call(unet(), False), x0, t, noise, lam_eff=obj.lambda_eff(0))
    assert calls == []
    assert torch.equal(parts.total, parts.diffusion) and parts.penalty_weighted == 0


def test_parts_combine_per_sample():
    obj, net = make(**{"lambda": 3.0}, reg_schedule={"weighting": "alpha_bar"}), autocast_call(unet(), False)
    x0, t, noise = batch([5, 50, 150, 600])
    parts = obj(net, x0, t, noise, lam_eff=obj.lambda_eff(0))
    x_t = obj.schedule.add_noise(x0, t, noise)
    output = net(x_t, t)
    pen = torch.where(obj.mask(t), TV(estimators.tweedie_x0(output, x_t, t, obj.schedule, "epsilon")), 0)
    weighted = 3.0 * obj.schedule.abar[t] * pen
    diffusion = (output - noise).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(parts.penalty_weighted, weighted.mean())
    torch.testing.assert_close(parts.diffusion, diffusion.mean())
    torch.testing.assert_close(parts.total, (diffusion + weighted).mean())


def test_min_snr_weights_the_diffusion_loss():
    obj, plain = (
        make(model={"prediction": "sample", "min_snr_gamma": 5.0}),
        make(model={"prediction": "sample"}),
    )
    net = autocast_call(unet(), False)
    x0, t, noise = batch([0, 300])
    x_t = obj.schedule.add_noise(x0, t, noise)
    output = net(x_t, t)
    weights = obj.schedule.snr[t].clamp(max=5.0)
    torch.testing.assert_close(
        obj.diffusion_loss(output, x0, noise, t), plain.diffusion_loss(output, x0, noise, t) * weights
    )


@pytest.mark.parametrize("weighting", ["none", "snr"])
def test_eps_near_t_max_stays_finite(weighting):
    obj = make(model={"schedule": "squaredcos_cap_v2"}, reg_schedule={"t_max": 1000, "weighting": weighting})
    net = unet()
    x0, t, noise = batch([999, 998, 990])
    parts = obj(autocast_call(net, False), x0, t, noise, lam_eff=obj.lambda_eff(0))
    parts.total.backward()
    assert torch.isfinite(parts.total) and parts.penalty_weighted > 0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_ddim_runs_the_network_on_a_fixed_penalty_sub_batch():
    """f = 100/1000 of a batch of 20: t of the first M = 2 drawn in [0, 100), the others in [100, 1000);
    one diffusion call on the batch, then K-1 calls on those 2 samples only, whatever t came out."""
    obj = make(estimator={"kind": "ddim", "steps": 3, "grad_steps": 2}, reg_schedule={"t_max": 100})
    net = autocast_call(unet(), False)
    sizes = []

    def recording(x, t):
        sizes.append(x.shape[0])
        return net(x, t)

    t = obj.draw_t(20, torch.Generator().manual_seed(0))
    assert obj.penalty_batch(20) == 2 and (t[:2] < 100).all() and (t[2:] >= 100).all()
    x0, _, noise = batch([0] * 20)
    parts = obj(recording, x0, t, noise, lam_eff=obj.lambda_eff(0))
    assert sizes == [20, 2, 2]
    assert parts.penalty_count == 2


def test_stratified_t_is_uniform_and_the_estimates_are_unbiased():
    """Pooled over many draws and weighted by their strata's shares, stratified t covers [0, T) uniformly, and the
    strata-weighted diffusion mean and f * penalty mean equal the masked batch means of a uniform batch
    in expectation: checked on a fixed function of t, against its exact mean over [0, T)."""
    obj = make(
        estimator={"kind": "ddim", "steps": 2}, reg_schedule={"t_min": 100, "t_max": 300}, model={"timesteps": 1000}
    )
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([obj.draw_t(7, g) for _ in range(4000)])  # (R, B); M = round(1.4) = 1, not B f
    weights = torch.tensor([obj.fraction] + [(1 - obj.fraction) / 6] * 6).expand_as(draws)  # each draw's share
    counts = torch.zeros(10, dtype=torch.float64).index_add_(0, draws.flatten() // 100, weights.flatten().double())
    expected = counts.sum() / 10
    assert (counts - expected).abs().max() < 0.05 * expected, counts
    assert obj.penalty_batch(7) == 1 and ((draws[:, :1] >= 100) & (draws[:, :1] < 300)).all()
    f = lambda t: (t.double() / 1000) ** 2
    estimates = torch.stack([obj.diffusion_mean(f(row)) for row in draws])
    exact = f(torch.arange(1000)).mean()
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / len(draws) ** 0.5
    penalty = torch.stack([obj.fraction * f(row[:1]).mean() for row in draws])
    masked_exact = (f(torch.arange(1000)) * ((torch.arange(1000) >= 100) & (torch.arange(1000) < 300))).mean()
    assert abs(penalty.mean() - masked_exact) < 4 * penalty.std() / len(draws) ** 0.5


def test_lam_eff_zero_is_the_same_graph_with_a_zero_penalty():
    """lam_eff = 0 (the warm-up's first step) multiplies: the penalty is computed, its share is 0,
    and the gradient equals the vanilla one."""
    x0, t, noise = batch([5, 50])
    grads = []
    for lam_eff in (torch.tensor(0.0), None):
        net, obj = unet(), make()
        parts = obj(autocast_call(net, False), x0, t, noise, lam_eff=lam_eff)
        parts.total.backward()
        grads.append([p.grad for p in net.parameters()])
        if lam_eff is not None:
            assert parts.penalty_count == 2 and parts.penalty_sum > 0 and parts.penalty_weighted == 0
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
