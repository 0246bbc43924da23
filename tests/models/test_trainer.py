import json

import numpy as np
import pytest
import safetensors.torch
import torch

from models import checkpoint, regularizers, validation
from models.datasets import ImageSet, to_tensor
from models.devices import resolve_device
from models.regularizers import TotalVariation
from models.samplers import sample_from_state
from models.spec import FieldError, RunSpec
from models.trainer import NonFiniteLoss, TrainHooks, train, update_ema


def tiny(steps=4, **overrides):
    train_cfg = {"steps": steps, "batch_size": 8, "log_every": 2, **overrides.pop("train", {})}
    return RunSpec.model_validate({"lambda": 1.0, "checkpoint_every": None, **overrides, "train": train_cfg})


def same_state(a: bytes, b: bytes) -> bool:
    """Every tensor bit-identical (safetensors' header order itself may vary between saves)."""
    a, b = checkpoint.from_bytes(a), checkpoint.from_bytes(b)
    groups = ("model", "ema", "optimizer", "rng")
    return a.step == b.step and all(
        getattr(a, g).keys() == getattr(b, g).keys()
        and all(torch.equal(getattr(a, g)[k], getattr(b, g)[k]) for k in getattr(a, g))
        for g in groups
    )


def test_checkpoint_is_plain_safetensors_that_explains_itself(digits):
    spec = tiny(steps=2)
    state = train(spec, digits, device="cpu").state
    tensors = safetensors.torch.load(state)  # no pickle involved
    assert tensors["rng.device"].dtype == tensors["rng.host"].dtype == torch.uint8
    assert {"optim.0.step", "optim.0.exp_avg", "optim.0.exp_avg_sq"} <= tensors.keys()
    metadata = checkpoint.read_metadata(state)
    assert json.loads(metadata["spec"]) == spec.to_json() and metadata["step"] == "2"
    with pytest.raises(ValueError, match="not a regdiff training state"):
        checkpoint.read_metadata(safetensors.torch.save({"x": torch.zeros(1)}))


def test_fixed_seeds_give_bit_identical_runs(digits):
    def spec(seed):
        return tiny(
            estimator={"kind": "ddim", "steps": 3, "grad_steps": 2, "random_cut": True},
            reg_schedule={"t_max": 1000},
            train={"seed": seed},
        )

    first, second = train(spec(0), digits, device="cpu"), train(spec(0), digits, device="cpu")
    assert same_state(first.state, second.state)
    assert not same_state(first.state, train(spec(1), digits, device="cpu").state)


def test_resume_continues_exactly(digits):
    spec = tiny(steps=6, checkpoint_every=3, estimator={"kind": "ddim", "steps": 2, "random_cut": True})
    saved = {}
    full = train(spec, digits, device="cpu", hooks=TrainHooks(on_checkpoint=saved.__setitem__))
    assert sorted(saved) == [3, 6]
    resumed = train(spec, digits, device="cpu", resume=saved[3])
    assert resumed.steps_done == 6
    assert same_state(full.state, resumed.state)


def test_resume_refuses_another_model(digits):
    state = train(tiny(steps=1), digits, device="cpu").state
    with pytest.raises(ValueError, match="differs from spec.model"):
        train(tiny(model={"prediction": "v_prediction"}), digits, device="cpu", resume=state)


def test_init_weights_fine_tunes_from_another_run(digits):
    base = checkpoint.from_bytes(train(tiny(), digits, device="cpu").state)
    tuned = train(
        tiny(steps=1, train={"lr": 1e-8, "seed": 5}, init_from_weights="raw"),
        digits,
        device="cpu",
        init_weights=checkpoint.to_bytes(base),
    )
    state = checkpoint.from_bytes(tuned.state)
    assert state.step == 1 and all(v == 1 for k, v in state.optimizer.items() if k.endswith(".step"))
    for key, weight in base.model.items():
        torch.testing.assert_close(state.model[key], weight, atol=1e-6, rtol=0)


def test_init_weights_keeps_the_ema_and_starts_from_it(digits):
    """The source EMA is the EMA's starting point and its warm-up continues (ema_step travels
    in the checkpoint); the trained weights start from that EMA, not the raw weights."""
    base = checkpoint.from_bytes(train(tiny(steps=6), digits, device="cpu").state)
    assert base.ema_step == 6
    tuned = checkpoint.from_bytes(
        train(tiny(steps=1, train={"lr": 1e-8, "seed": 5}), digits, device="cpu", init_weights=checkpoint.to_bytes(base)).state
    )
    assert tuned.ema_step == 7
    decay = 0.11100364132908525  # documented warm-up 1 - (1 + k/150)^-3 at k = 6, below ema_decay 0.999
    for key in base.ema:
        torch.testing.assert_close(tuned.model[key], base.ema[key], atol=1e-6, rtol=0)
        expected = decay * base.ema[key] + (1 - decay) * tuned.model[key]
        torch.testing.assert_close(tuned.ema[key], expected, atol=1e-6, rtol=1e-5)


def test_check_compatible_names_every_differing_model_field(digits):
    metadata = checkpoint.read_metadata(train(tiny(steps=1), digits, device="cpu").state)
    checkpoint.check_compatible(metadata, tiny(**{"lambda": 0.5}))  # same model: fine
    other = tiny(model={"prediction": "v_prediction", "timesteps": 500, "preset": "unet-s"}, dataset="mnist-5k")
    with pytest.raises(FieldError) as info:
        checkpoint.check_compatible(metadata, other)
    assert info.value.field == "init_from"
    message = str(info.value)
    assert "prediction (checkpoint epsilon, spec v_prediction)" in message
    assert "timesteps (checkpoint 1000, spec 500)" in message
    assert "preset (checkpoint unet-xs, spec unet-s)" in message and "image size (checkpoint 8, spec 32)" in message
    assert "schedule" not in message and "channels" not in message


def test_ema_moves_toward_the_weights_at_the_documented_rate(digits):
    """decay(k) = min(ema_decay, 1 - (1 + k/150)^-3) for update k (0-based): the first update copies
    the weights, then ema_{k+1} = decay(k) ema_k + (1 - decay(k)) weights_{k+1}."""
    saved = {}
    train(
        tiny(steps=3, checkpoint_every=1, train={"ema_decay": 0.03, "lr": 1e-2}),
        digits,
        device="cpu",
        hooks=TrainHooks(on_checkpoint=lambda step, state: saved.__setitem__(step, checkpoint.from_bytes(state))),
    )
    for key in saved[1].ema:
        torch.testing.assert_close(saved[1].ema[key], saved[1].model[key], atol=0, rtol=0)
    for k, decay in ((1, 0.019736266940772462), (2, 0.03)):  # 1 - (151/150)^-3; 0.039 capped at ema_decay 0.03
        ema, weights, moved = saved[k].ema, saved[k + 1].model, saved[k + 1].ema
        assert not all(torch.equal(moved[key], weights[key]) for key in moved)
        for key in moved:
            torch.testing.assert_close(moved[key], decay * ema[key] + (1 - decay) * weights[key], atol=1e-6, rtol=1e-5)


def test_ema_decay_values_give_different_weights_over_a_default_length_run():
    """2,000 updates of a random walk through the trainer's update: the old warm-up
    (1 + k) / (10 + k) gave identical weights for every ema_decay in [0.9956, 1)."""
    g = torch.Generator().manual_seed(0)
    walk = torch.randn(2000, 16, generator=g).cumsum(0)  # (steps, params)
    final = {}
    for target in (0.99, 0.999, 0.9995):
        weights, ema = walk[0].clone(), walk[0].clone()
        for k in range(2000):
            weights.copy_(walk[k])
            update_ema([ema], [weights], k, target)
        final[target] = ema
    assert (final[0.99] - final[0.999]).abs().max() > 1e-2
    assert (final[0.999] - final[0.9995]).abs().max() > 1e-2


class NanGradient(regularizers.Regularizer):
    """Finite value (sqrt(0) = 0), NaN gradient (inf * 0): a finite loss with a broken gradient."""

    name = "nan_gradient"

    def __call__(self, x):
        return torch.sqrt(x * 0).flatten(1).mean(1)


def test_nan_gradient_with_a_finite_loss_fails_naming_the_step(digits, monkeypatch):
    monkeypatch.setitem(regularizers.REGISTRY, NanGradient.name, NanGradient)
    spec = tiny(regularizer="nan_gradient", reg_schedule={"t_max": 1000})
    with pytest.raises(NonFiniteLoss, match="non-finite gradient at step 0") as info:
        train(spec, digits, device="cpu")
    assert info.value.term == "gradient"


def test_val_loss_is_deterministic_on_a_fixed_held_out_split(digits):
    images = to_tensor(digits.images)
    train_part, held_out = validation.split(images, 1000)
    assert held_out.x0.shape[0] == 89 and train_part.shape[0] == 1797 - 89
    _, again = validation.split(images, 1000)
    assert torch.equal(held_out.x0, again.x0) and torch.equal(held_out.noise, again.noise)
    assert held_out.t.min() < 20 and held_out.t.max() > 980  # spread over the whole range

    def logged(seed):
        logs = {}
        spec = tiny(steps=4, train={"val_every": 2, "seed": seed})
        train(spec, digits, device="cpu", hooks=TrainHooks(on_log=logs.__setitem__))
        return logs

    first, second, other_seed = logged(0), logged(0), logged(1)
    assert [first[step]["val_loss"] for step in (2, 4)] == [second[step]["val_loss"] for step in (2, 4)]
    assert all(np.isfinite(first[step]["val_loss"]) for step in (2, 4))
    assert first[4]["val_loss"] != other_seed[4]["val_loss"]  # same data, other weights


def test_init_weights_with_other_shapes_is_a_clear_error(digits):
    rgb = ImageSet(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), None)
    state = train(tiny(steps=1), rgb, device="cpu").state
    with pytest.raises(ValueError, match="conv_in.weight has shape"):
        train(tiny(steps=1), digits, device="cpu", init_weights=state)


def test_non_finite_loss_names_step_and_term(digits):
    # lambda 1e6 times a regularizer weight of 1e38 overflows float32 at the first step
    spec = tiny(**{"lambda": 1e6}, regularizer=[{"name": "tv", "weight": 1e38}], reg_schedule={"t_max": 1000})
    with pytest.raises(NonFiniteLoss, match="non-finite penalty loss at step 0") as info:
        train(spec, digits, device="cpu")
    assert isinstance(info.value, ValueError) and (info.value.step, info.value.term) == (0, "penalty")


def test_logs_and_cooperative_stop(digits):
    logs = []
    result = train(
        tiny(steps=10),
        digits,
        device="cpu",
        hooks=TrainHooks(on_log=lambda step, m: logs.append((step, m)), should_stop=lambda: len(logs) == 2),
    )
    assert result.stopped and result.steps_done == 4
    assert [step for step, _ in logs] == [2, 4]
    assert set(result.metrics) == {
        "loss",
        "diffusion_loss",
        "penalty_raw",
        "penalty_weighted",
        "lambda",
        "lr",
        "ema_horizon",
    }
    assert result.metrics["ema_horizon"] == pytest.approx(1.061208)  # update k=3: (1 + 3/150)^3
    assert all(np.isfinite(v) for v in result.metrics.values())
    assert checkpoint.from_bytes(result.state).step == 4


def test_strong_tv_penalty_lowers_the_tv_of_samples(digits):
    """Same seeds and steps; lambda=3 over t < 600 against lambda=0 (~10 s on 2 CPU cores)."""
    tv = TotalVariation(TotalVariation.Params())
    sample_tv = {}
    for lam in (0.0, 3.0):
        spec = tiny(
            steps=100,
            **{"lambda": lam},
            reg_schedule={"t_max": 600},
            train={"batch_size": 32, "lr": 1e-3, "log_every": 100},
        )
        state = train(spec, digits, device="cpu").state
        images = sample_from_state(state, n=32, sampler="ddim", steps=10, seed=0, device="cpu")
        sample_tv[lam] = tv(to_tensor(images)).mean().item()
    # measured: about 0.8 for lambda 0 and 0.35-0.46 for lambda 3 (seeds 0-2)
    assert sample_tv[3.0] < 0.8 * sample_tv[0.0], sample_tv


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
