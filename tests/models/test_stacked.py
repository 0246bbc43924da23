"""A sweep trained as one stacked model gives every point what `train` gives it alone.

The oracle is `models.trainer.train` on each point by itself (the single-run loop, vmap-free):
weights, EMA, AdamW moments, generators and logged metrics must agree up to the float rounding
of grouped convolutions. Points differ in what a sweep varies (lambda, regularizer, t-range,
weighting, estimator, seed, steps, validation) and leave the stack on their own (a stop, a NaN,
an earlier end) without changing what the others compute.
"""

import pytest
import torch

from models import checkpoint
from models.spec import RunSpec
from models.stacked import StackedPoint, stack_differences, stack_key, train_stacked
from models.trainer import NonFiniteLoss, TrainHooks, TrainResult, train


def point(steps=6, **overrides) -> RunSpec:
    """lr 2e-4: grouped convolutions round differently, and AdamW turns a rounding difference in a
    gradient near 0 into an update of up to lr; at the default 1e-3 the weights drift ~1e-4 apart in
    6 steps, at 2e-4 ~2e-5, which the tolerance below separates from any real difference."""
    train_cfg = {"steps": steps, "batch_size": 8, "log_every": 2, "lr": 2e-4, **overrides.pop("train", {})}
    return RunSpec.model_validate({"checkpoint_every": None, **overrides, "train": train_cfg})


SWEEP = [
    point(**{"lambda": 0.0}, train={"seed": 0}),
    point(**{"lambda": 2.0}, reg_schedule={"t_max": 1000, "weighting": "min_snr"}, train={"seed": 1}),
    point(**{"lambda": 1.0}, regularizer=[{"name": "tv", "weight": 0.5}, {"name": "l1"}], train={"seed": 2, "val_every": 3}),
    point(**{"lambda": 1.0}, estimator={"kind": "ddim", "steps": 3, "grad_steps": 2, "random_cut": True},
          reg_schedule={"t_max": 500, "every": 2}, train={"seed": 3, "ema_decay": 0.0, "grad_clip": 0.05}),
]


def assert_same_run(got: TrainResult, want: TrainResult) -> None:
    assert (got.steps_done, got.stopped) == (want.steps_done, want.stopped)
    a, b = checkpoint.from_bytes(got.state), checkpoint.from_bytes(want.state)
    assert (a.step, a.ema_step, a.spec) == (b.step, b.ema_step, b.spec)
    for group in ("model", "ema", "optimizer"):
        mine, theirs = getattr(a, group), getattr(b, group)
        assert mine.keys() == theirs.keys(), group
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-3, atol=4e-5, msg=f"{group}.{key}")
    for key in a.rng:  # the same batches were drawn: the generators are bit-identical
        assert torch.equal(a.rng[key], b.rng[key]), key
    assert got.metrics.keys() == want.metrics.keys()
    for key, value in want.metrics.items():
        assert got.metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key


def test_each_point_of_a_stack_trains_as_it_would_alone(digits):
    alone = [train(spec, digits, device="cpu") for spec in SWEEP]
    logs: list[list[int]] = [[] for _ in SWEEP]
    stacked = train_stacked(
        [StackedPoint(spec, TrainHooks(on_log=lambda step, m, i=i: logs[i].append(step))) for i, spec in enumerate(SWEEP)],
        digits, device="cpu",
    )
    for got, want in zip(stacked, alone, strict=True):
        assert_same_run(got, want)
    assert logs == [[2, 4, 6]] * len(SWEEP)
    assert alone[3].metrics["penalty_raw"] > 0 and alone[3].metrics["ema_horizon"] == 1
    no_average = checkpoint.from_bytes(stacked[3].state)  # its own ema_decay 0: the EMA is the weights
    assert all(torch.equal(no_average.ema[key], no_average.model[key]) for key in no_average.model)
    # the check has teeth: two points with swapped seeds are not each other
    with pytest.raises(AssertionError):
        assert_same_run(stacked[1], alone[2])


def test_a_point_that_leaves_changes_nothing_for_the_others(digits):
    """One point stops at step 2 (a cancel), one fails (NaN at step 0), one ends at step 4 (fewer
    steps): the last still ends as it would alone, and each other outcome is what it would be alone."""
    nan = point(**{"lambda": 1e6}, regularizer=[{"name": "tv", "weight": 1e38}], reg_schedule={"t_max": 1000})
    short, full, cancelled = point(steps=4, train={"seed": 5}), point(steps=8, train={"seed": 6}), point(train={"seed": 7})
    full_steps: list[int] = []
    steps_seen: list[int] = []
    stop_hooks = TrainHooks(on_log=lambda step, m: steps_seen.append(step), should_stop=lambda: bool(steps_seen))
    left: list[tuple[int, int]] = []  # (point, the full point's step when it left)
    outcomes = train_stacked(
        [StackedPoint(nan), StackedPoint(short), StackedPoint(cancelled, stop_hooks),
         StackedPoint(full, TrainHooks(on_log=lambda step, m: full_steps.append(step)))],
        digits, device="cpu", on_outcome=lambda i, outcome: left.append((i, full_steps[-1] if full_steps else 0)),
    )
    assert left == [(0, 2), (2, 2), (1, 4), (3, 8)], "each point is reported as it leaves, not at the end"
    assert isinstance(outcomes[0], NonFiniteLoss) and (outcomes[0].step, outcomes[0].term) == (0, "penalty")
    assert_same_run(outcomes[1], train(short, digits, device="cpu"))
    seen: list[int] = []
    assert_same_run(outcomes[2], train(cancelled, digits, device="cpu", hooks=TrainHooks(
        on_log=lambda step, m: seen.append(step), should_stop=lambda: bool(seen))))
    assert outcomes[2].stopped and outcomes[2].steps_done == 2
    assert_same_run(outcomes[3], train(full, digits, device="cpu"))


def test_a_stack_resumes_from_its_points_checkpoints(digits):
    specs = [point(steps=6, checkpoint_every=3, train={"seed": s}) for s in (0, 1)]
    saved: list[dict[int, bytes]] = [{}, {}]
    whole = train_stacked([StackedPoint(spec, TrainHooks(on_checkpoint=saved[i].__setitem__))
                           for i, spec in enumerate(specs)], digits, device="cpu")
    resumed = train_stacked([StackedPoint(spec, resume=saved[i][3]) for i, spec in enumerate(specs)],
                            digits, device="cpu")
    for got, want in zip(resumed, whole, strict=True):
        assert_same_run(got, want)
    alone = train(specs[0], digits, device="cpu", resume=saved[0][3])  # a stacked checkpoint is a run's own
    assert_same_run(alone, whole[0])
    with pytest.raises(ValueError, match="one step"):
        train_stacked([StackedPoint(specs[0], resume=saved[0][3]), StackedPoint(specs[1])], digits, device="cpu")


def test_which_points_can_share_a_stack():
    base = point()
    assert stack_key(base) == stack_key(point(**{"lambda": 3.0}, reg_schedule={"t_max": 50}, train={"seed": 9, "steps": 3}))
    assert stack_differences(base, point(dataset="mnist-5k", model={"preset": "unet-s"})) == ["dataset", "model"]
    assert stack_differences(base, point(train={"batch_size": 4, "lr": 5e-4})) == ["train.batch_size", "train.lr"]
    fine_tuned = RunSpec.model_validate({**base.to_json(), "init_from": "ckpt_1"})
    assert stack_key(fine_tuned) is None and stack_differences(base, fine_tuned) == ["init_from"]
    with pytest.raises(ValueError, match=r"differ in \['dataset', 'model'\]"):
        train_stacked([StackedPoint(base), StackedPoint(point(dataset="mnist-5k", model={"preset": "unet-s"}))], None)
