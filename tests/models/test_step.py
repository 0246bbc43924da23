"""The training step is capturable: one traced graph, no host reads, the same numbers as eager.

dynamo is the checker here: `torch.compile(fullgraph=True)` raises on any graph break (a Python
branch on a tensor value, an untraceable call). It no longer breaks on `.item()` or `nonzero` (torch
2.14 traces them as unbacked values), yet both read the device from the host and would stop a CUDA
graph capture, so the traced graph is also searched for them. The backend runs the traced graph with
plain PyTorch: tracing only, no inductor build.
"""

import pytest
import torch
from pydantic import ValidationError

from models import networks
from models.datasets import to_tensor
from models.objective import Objective
from models.schedule import make_schedule
from models.spec import RunSpec
from models.stacked import Stack, StackedPoint
from models.step import StepInputs
from models.trainer import _penalty, autocast_call, uses_bf16, uses_graphs

HOST_READS = ("item", "tolist", "nonzero", "_local_scalar_dense", "_assert_scalar", "cpu", "numpy")

KINDS = {
    "tweedie": {"estimator": {"kind": "tweedie"}, "reg_schedule": {"warmup_steps": 10, "t_max": 1000}},
    "ddim": {"estimator": {"kind": "ddim", "steps": 3, "grad_steps": 2, "random_cut": True}},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_loss_traces_as_one_graph_and_matches_eager(kind):
    spec = RunSpec.model_validate({"lambda": 1.0, **KINDS[kind], "train": {"batch_size": 4}})
    torch.manual_seed(0)
    net = networks.build_unet("unet-xs", 8, 1)
    objective = Objective(spec, make_schedule(spec.model), _penalty(spec))
    call_net = autocast_call(net, bf16=False)
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    inputs = StepInputs.allocate(images, 4, objective)
    inputs.fill(images, objective, torch.Generator().manual_seed(0), step=0, lam_eff=0.7, ema_weight=1.0)
    assert (inputs.cut is not None) == (kind == "ddim")

    def loss(x0, t, noise, lam_eff, cut):
        parts = objective(call_net, x0, t, noise, lam_eff=lam_eff, cut=cut)
        return torch.stack([parts.total, parts.penalty_weighted, parts.penalty_count])

    eager = traces_as_one_graph_like_eager(loss, (inputs.x0, inputs.t, inputs.noise, inputs.lam_eff, inputs.cut),
                                           list(net.parameters()))
    assert eager[1] > 0, "the penalty took part"


def test_a_stacked_sweeps_loss_traces_as_one_graph_and_matches_eager(digits):
    """models/stacked.py: the vmapped forward pass and each point's objective (vanilla, tweedie,
    ddim with a random cut) trace as one graph with no host read: on CUDA the stack's step is
    captured as one CUDA graph like a single run's."""
    tweedie = {"estimator": {"kind": "tweedie"}, "reg_schedule": {"t_max": 1000}}  # no warm-up: lam_eff > 0 now
    specs = [RunSpec.model_validate({"lambda": lam, "train": {"batch_size": 4}, **kind})
             for lam, kind in ((0.0, {}), (1.0, tweedie), (1.0, KINDS["ddim"]))]
    stack = Stack([StackedPoint(spec) for spec in specs], to_tensor(digits.images), torch.device("cpu"))
    with_penalty = tuple(run.fill(inputs) for run, inputs in zip(stack.runs, stack.inputs, strict=True))
    assert with_penalty == (False, True, True) and stack.inputs[2].cut is not None

    def losses():
        return torch.stack([parts.total for parts in stack.losses(with_penalty)])

    eager = traces_as_one_graph_like_eager(losses, (), stack.params)
    assert eager[1] > eager[0] and eager[2] > eager[0], "the penalties took part"


def traces_as_one_graph_like_eager(fn, args: tuple, params: list[torch.Tensor]) -> torch.Tensor:
    """fn(*args) -> values (values[0] is backpropagated into `params`) eagerly and under
    torch.compile(fullgraph=True): one graph, no host read in it, the same values and gradients."""
    graphs = []

    def one_graph_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward  # run the traced graph eagerly

    results = []
    for run in (fn, torch.compile(fn, fullgraph=True, backend=one_graph_backend)):
        for param in params:
            param.grad = None
        values = run(*args)
        values[0].backward()
        results.append((values.detach(), [param.grad.clone() for param in params]))
    torch._dynamo.reset()
    assert len(graphs) == 1
    targets = [str(node.target) for node in graphs[0].graph.nodes]  # "item", "aten._assert_scalar.default"
    reads = [name for name in targets if any(part in HOST_READS for part in name.split("."))]
    assert reads == [], f"host reads inside the step: {reads}"
    (eager, eager_grads), (traced, traced_grads) = results
    torch.testing.assert_close(traced, eager)
    for got, want in zip(traced_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want)
    return eager


def test_speed_defaults_per_device_and_preset():
    """precision auto: fp32 on the CPU and for the launch-bound small UNets on CUDA, bf16 for unet-m;
    compile auto: CUDA graphs on CUDA only (a device object needs no GPU to be asked about)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def spec(preset, **train):
        return RunSpec.model_validate({"dataset": "upload:x", "model": {"preset": preset}, "train": train})

    assert [uses_bf16(spec(p), cuda) for p in ("unet-xs", "unet-s", "unet-m")] == [False, False, True]
    assert not uses_bf16(spec("unet-m"), cpu) and not uses_bf16(spec("unet-m", precision="fp32"), cuda)
    assert uses_bf16(spec("unet-s", precision="bf16"), cuda)
    assert uses_graphs(spec("unet-s"), cuda) and not uses_graphs(spec("unet-s"), cpu)
    assert not uses_graphs(spec("unet-s", compile="off"), cuda)


def test_unknown_compile_value_names_the_field():
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate({"train": {"compile": "max-autotune"}})
    (error,) = info.value.errors()
    assert error["loc"] == ("train", "compile") and "'auto' or 'off'" in error["msg"]
