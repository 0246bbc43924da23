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
    penalty = obj.penalty_per_sample(net, output, x_t, t, obj.mask(t), torch.Generator())
    expected = TV(estimators.tweedie_x0(output, x_t, t, obj.schedule, "epsilon"))
    assert torch.equal(penalty[:2], expected[:2])
    assert torch.equal(penalty[2:], torch.zeros(2))
    parts = obj(net, x0, t, noise, step=0, generator=torch.Generator())
    assert parts.penalty_count == 2
    torch.testing.assert_close(parts.penalty_sum, expected[:2].sum())


def test_outside_the_mask_the_gradient_is_the_vanilla_one():
    x0, t, noise = batch([200, 500, 999])
    grads = []
    for lam in (1.0, 0.0):
        net = unet()
        make(**{"lambda": lam})(
            autocast_call(net, False), x0, t, noise, step=0, generator=torch.Generator()
        ).total.backward()
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
    parts = obj(autocast_call(unet(), False), x0, t, noise, step=0, generator=torch.Generator())
    assert calls == []
    assert torch.equal(parts.total, parts.diffusion) and parts.penalty_weighted == 0


def test_parts_combine_per_sample():
    obj, net = make(**{"lambda": 3.0}, reg_schedule={"weighting": "alpha_bar"}), autocast_call(unet(), False)
    x0, t, noise = batch([5, 50, 150, 600])
    parts = obj(net, x0, t, noise, step=0, generator=torch.Generator())
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
    parts = obj(autocast_call(net, False), x0, t, noise, step=0, generator=torch.Generator())
    parts.total.backward()
    assert torch.isfinite(parts.total) and parts.penalty_weighted > 0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_ddim_runs_the_network_on_masked_samples_only():
    obj = make(estimator={"kind": "ddim", "steps": 3, "grad_steps": 2}, reg_schedule={"t_max": 100})
    net = autocast_call(unet(), False)
    sizes = []

    def recording(x, t):
        sizes.append(x.shape[0])
        return net(x, t)

    x0, t, noise = batch([10, 50, 100, 400, 999, 99])
    parts = obj(recording, x0, t, noise, step=0, generator=torch.Generator())
    assert sizes == [6, 3, 3], "one diffusion call on the batch, then K-1 calls on the 3 masked samples"
    assert parts.penalty_count == 3
