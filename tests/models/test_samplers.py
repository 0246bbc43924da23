import io

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from models import checkpoint
from models.datasets import load_builtin, to_tensor
from models.images import PAD, grid_png
from models.regularizers import TotalVariation
from models.samplers import SAMPLERS, make_scheduler, sample, sample_from_state
from models.spec import FieldError, GuidanceSpec, ModelSpec, RunSpec
from models.trainer import train


@pytest.fixture(scope="module")
def state():
    spec = RunSpec.model_validate(
        {
            "model": {"prediction": "v_prediction"},
            "train": {"steps": 2, "batch_size": 8},
            "checkpoint_every": None,
        }
    )
    return train(spec, load_builtin("digits"), device="cpu").state


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_images(state, sampler):
    def draw(seed):
        return sample_from_state(state, n=3, sampler=sampler, steps=5, eta=0.5, seed=seed, device="cpu")

    first = draw(0)
    assert first.shape == (3, 8, 8, 1) and first.dtype == np.uint8
    assert np.array_equal(first, draw(0))
    assert not np.array_equal(first, draw(1))


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_batches_are_independent_runs_of_the_sampler(state, sampler):
    """Multistep solvers keep a history: each batch must start the scheduler afresh
    (deterministic samplers only: with DDPM the step noise is drawn per batch)."""
    net = checkpoint.build_network(checkpoint.from_bytes(state))
    scheduler = make_scheduler(ModelSpec(prediction="v_prediction"), sampler)

    def draw(max_batch):
        return sample(
            net,
            scheduler,
            n=4,
            shape=(1, 8, 8),
            steps=4,
            eta=0.0,
            generator=torch.Generator().manual_seed(0),
            max_batch=max_batch,
        )

    one_batch, two_batches = draw(4), draw(2)
    assert torch.isfinite(two_batches).all()
    torch.testing.assert_close(two_batches[:2], one_batch[:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("timesteps", [1000, 500])
def test_every_sampler_starts_at_the_last_training_timestep(sampler, timesteps):
    """Pure noise first, for few and many steps ("leading" spacing starts 5-step DDPM at t=800)."""
    scheduler = make_scheduler(ModelSpec(timesteps=timesteps), sampler)
    for steps in (5, 50):
        scheduler.set_timesteps(steps)
        assert int(scheduler.timesteps[0]) == timesteps - 1, (steps, scheduler.timesteps[:3])
        assert len(scheduler.timesteps) == steps


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_tv_guidance_lowers_tv_and_scale_zero_changes_nothing(state, sampler):
    """Same seed with and without guidance; measured TV ratio about 0.6 at scale 5 (5 steps)."""
    tv = TotalVariation(TotalVariation.Params())

    def draw(scale):
        guidance = None if scale is None else GuidanceSpec(regularizer="tv", scale=scale, t_max=1000)
        return sample_from_state(state, n=4, sampler=sampler, steps=5, seed=0, device="cpu", guidance=guidance)

    plain = draw(None)
    assert np.array_equal(draw(0.0), plain)
    ratio = tv(to_tensor(draw(5.0))).mean().item() / tv(to_tensor(plain)).mean().item()
    assert ratio < 0.85, ratio


def test_guidance_spec_rejects_bad_input_naming_the_field(state):
    bad = [
        ({"regularizer": "tv", "scale": -1}, "scale"),
        ({"regularizer": "tv", "scale": float("inf")}, "scale"),
        ({"regularizer": "nope", "scale": 1}, "regularizer"),
        ({"regularizer": "tv", "scale": 1, "t_max": 0}, "t_max"),
    ]
    for body, field in bad:
        with pytest.raises(ValidationError) as info:
            GuidanceSpec.model_validate(body)
        assert info.value.errors()[0]["loc"][0] == field, (body, info.value.errors())
    with pytest.raises(FieldError) as too_late:
        sample_from_state(state, n=1, seed=0, device="cpu", guidance=GuidanceSpec(regularizer="tv", scale=1, t_max=2000))
    assert too_late.value.field == "guidance.t_max"


def test_schedulers_use_the_runs_schedule_and_prediction():
    model = ModelSpec(prediction="sample", schedule="squaredcos_cap_v2", timesteps=500)
    for sampler in SAMPLERS:
        config = make_scheduler(model, sampler).config
        assert (config.prediction_type, config.beta_schedule, config.num_train_timesteps) == (
            "sample",
            "squaredcos_cap_v2",
            500,
        )
    with pytest.raises(ValueError, match="ddpm, ddim, dpm_solver"):
        make_scheduler(model, "euler")


def test_grid_png_is_a_near_square_padded_grid():
    images = np.arange(10 * 8 * 8, dtype=np.int64).reshape(10, 8, 8, 1).astype(np.uint8)
    grid = np.asarray(Image.open(io.BytesIO(grid_png(images))))
    assert grid.shape == (3 * (8 + PAD) + PAD, 4 * (8 + PAD) + PAD)  # 10 images: 3 rows of 4
    assert np.array_equal(grid[PAD : PAD + 8, PAD : PAD + 8], images[0, ..., 0])
    x = PAD + 1 * (8 + PAD)
    y = PAD + 2 * (8 + PAD)
    assert np.array_equal(grid[y : y + 8, x : x + 8], images[9, ..., 0])
    rgb = np.asarray(Image.open(io.BytesIO(grid_png(np.zeros((4, 8, 8, 3), np.uint8), scale=2))))
    assert rgb.shape == (2 * (2 * (8 + PAD) + PAD), 2 * (2 * (8 + PAD) + PAD), 3)
