import io
import json
import zipfile

import numpy as np
import torch
from diffusers import DDPMPipeline

from models import checkpoint
from models.datasets import load_builtin
from models.export import export_diffusers, export_zip
from models.spec import RunSpec
from models.trainer import train


def tiny_state() -> bytes:
    spec = RunSpec.model_validate(
        {
            "model": {"prediction": "sample", "schedule": "squaredcos_cap_v2"},
            "train": {"steps": 2, "batch_size": 8},
            "checkpoint_every": None,
        }
    )
    return train(spec, load_builtin("digits"), device="cpu").state


def test_export_loads_in_ddpm_pipeline_and_samples(tmp_path):
    state = tiny_state()
    pipeline = DDPMPipeline.from_pretrained(export_diffusers(state, tmp_path / "pipe"))
    assert pipeline.scheduler.config.prediction_type == "sample"
    assert pipeline.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    ema = checkpoint.from_bytes(state).ema
    assert all(torch.equal(v, ema[k]) for k, v in pipeline.unet.state_dict().items())
    images = pipeline(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_export_zip_holds_the_folder():
    buffer = io.BytesIO()
    export_zip(tiny_state(), buffer)
    with zipfile.ZipFile(buffer) as archive:
        names = set(archive.namelist())
        spec = json.loads(archive.read("regdiff_spec.json"))
    assert {
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    } <= names
    assert spec["step"] == 2 and spec["spec"]["model"]["prediction"] == "sample"


def test_export_from_a_file_reads_the_ema_weights_alone(tmp_path):
    state = tiny_state()
    (tmp_path / "ckpt.safetensors").write_bytes(state)
    loaded = checkpoint.from_file(tmp_path / "ckpt.safetensors", groups=("ema",))
    full = checkpoint.from_bytes(state)
    assert loaded.model == {} and loaded.optimizer == {} and loaded.step == full.step
    assert loaded.ema.keys() == full.ema.keys() and all(torch.equal(v, full.ema[k]) for k, v in loaded.ema.items())
    pipeline = DDPMPipeline.from_pretrained(export_diffusers(tmp_path / "ckpt.safetensors", tmp_path / "pipe"))
    assert all(torch.equal(v, full.ema[k]) for k, v in pipeline.unet.state_dict().items())
