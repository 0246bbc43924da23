import pytest
import torch
from torch import nn

from models import estimators, parameterization
from models.regularizers import TotalVariation
from models.schedule import make_schedule
from models.spec import ModelSpec

SCHEDULE = make_schedule(ModelSpec())
TV = TotalVariation(TotalVariation.Params())


class TinyNet(nn.Module):
    """A real, tiny denoiser whose output depends on x and t; records grad mode per call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.t_embed = nn.Embedding(1000, 1)
        self.grad_enabled: list[bool] = []

    def forward(self, x, t):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.conv(x) + self.t_embed(t).view(-1, 1, 1, 1)


def batch(b=4):
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(b, 1, 8, 8, generator=g)
    t = torch.tensor([3, 150, 600, 999])[:b]
    return x_t, t


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_ddim_with_one_step_is_tweedie(prediction):
    net, (x_t, t) = TinyNet(), batch()
    tweedie = estimators.tweedie_x0(net(x_t, t), x_t, t, SCHEDULE, prediction)
    ddim = estimators.ddim_x0(net, x_t, t, SCHEDULE, prediction, steps=1, grad_steps=1)
    assert torch.equal(ddim, tweedie)


def test_ddim_timesteps_go_from_t_down_to_t_over_k():
    t = torch.tensor([0, 3, 100, 999])
    times = estimators.ddim_timesteps(t, 4)
    assert torch.equal(times[0], t)
    assert torch.equal(times[-1], t // 4)
    assert all(torch.all(later <= earlier) for earlier, later in zip(times, times[1:], strict=False))


@pytest.mark.parametrize("steps,grad_steps", [(4, 1), (4, 2), (3, 3)])
def test_only_the_last_grad_steps_calls_build_a_graph(steps, grad_steps):
    net, (x_t, t) = TinyNet(), batch()
    estimators.ddim_x0(net, x_t, t, SCHEDULE, "epsilon", steps=steps, grad_steps=grad_steps)
    assert net.grad_enabled == [False] * (steps - grad_steps) + [True] * grad_steps


def test_truncation_gradient_equals_one_step_from_the_detached_state():
    """K=2, k=1: the gradient is that of Tweedie at (x_{t_1}, t_1), x_{t_1} computed without grad."""
    net, (x_t, t) = TinyNet(), batch()
    TV(estimators.ddim_x0(net, x_t, t, SCHEDULE, "epsilon", steps=2, grad_steps=1)).sum().backward()
    truncated = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with torch.no_grad():
        x0_0, eps_0 = parameterization.to_x0_eps("epsilon", net(x_t, t), x_t, *SCHEDULE.coeffs(t))
        t_1 = estimators.ddim_timesteps(t, 2)[1]
        a, s = SCHEDULE.coeffs(t_1)
        x_1 = a * x0_0 + s * eps_0
    TV(estimators.tweedie_x0(net(x_1, t_1), x_1, t_1, SCHEDULE, "epsilon")).sum().backward()
    for got, want in zip(truncated, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(got, want)


def test_reused_first_output_is_detached_before_the_cut():
    net, (x_t, t) = TinyNet(), batch()
    first = net(x_t, t)
    net.grad_enabled.clear()
    x0 = estimators.ddim_x0(net, x_t, t, SCHEDULE, "epsilon", steps=3, grad_steps=1, first_output=first)
    assert net.grad_enabled == [False, True], "the first call is reused, not repeated"
    (grad_first,) = torch.autograd.grad(TV(x0).sum(), first, allow_unused=True)
    assert grad_first is None


def test_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        net, (x_t, t) = TinyNet(), batch()
        x0 = estimators.ddim_x0(
            net, x_t, t, SCHEDULE, "v_prediction", steps=4, grad_steps=3, checkpointing=checkpointing
        )
        TV(x0).sum().backward()
        grads.append([p.grad for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["tweedie", "ddim"])
def test_the_penalty_alone_reaches_the_parameters(kind):
    net, (x_t, t) = TinyNet(), batch()
    if kind == "tweedie":
        x0 = estimators.tweedie_x0(net(x_t, t), x_t, t, SCHEDULE, "epsilon")
    else:
        x0 = estimators.ddim_x0(net, x_t, t, SCHEDULE, "epsilon", steps=4, grad_steps=2)
    TV(x0).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_x0_hat_is_not_clipped_and_keeps_its_gradient():
    x_t, t = batch()
    output = (torch.randn(x_t.shape, generator=torch.Generator().manual_seed(2)) * 50).requires_grad_()
    x0 = estimators.tweedie_x0(output, x_t, t, SCHEDULE, "epsilon")
    assert x0.abs().max() > 1
    (grad,) = torch.autograd.grad(x0.pow(2).sum(), output)
    assert torch.all(grad != 0)


def test_random_cut_draws_every_depth_from_one_to_grad_steps():
    g = torch.Generator().manual_seed(0)
    draws = {int(estimators.draw_cut(4, True, g)) for _ in range(200)}
    assert draws == {1, 2, 3, 4}
    assert estimators.draw_cut(4, False, g) is None and estimators.draw_cut(1, True, g) is None


@pytest.mark.parametrize("steps,grad_steps,cut", [(2, 2, 1), (4, 3, 2), (4, 4, 4)])
def test_a_device_cut_gives_the_gradient_of_that_truncation(steps, grad_steps, cut):
    """ddim_x0(grad_steps=G, cut=k) equals the no_grad truncation ddim_x0(grad_steps=k): same x0_hat,
    same parameter gradients (the reference builds no graph before the cut at all)."""
    results = []
    for kwargs in ({"grad_steps": grad_steps, "cut": torch.tensor(cut)}, {"grad_steps": cut}):
        net, (x_t, t) = TinyNet(), batch()
        x0 = estimators.ddim_x0(net, x_t, t, SCHEDULE, "epsilon", steps=steps, **kwargs)
        TV(x0).sum().backward()
        results.append((x0.detach(), [p.grad for p in net.parameters()]))
    (x0_cut, grads_cut), (x0_ref, grads_ref) = results
    assert torch.equal(x0_cut, x0_ref)
    for got, want in zip(grads_cut, grads_ref, strict=True):
        torch.testing.assert_close(got, want)
