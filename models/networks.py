"""Network presets: diffusers `UNet2DModel`s sized for 8x8 to 64x64 images."""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers import UNet2DModel


@dataclass(frozen=True)
class Preset:
    """A UNet shape and the image sizes it is meant for (each size must divide by 2^levels)."""

    min_size: int
    max_size: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: tuple[bool, ...]  # per level, from the top
    norm_num_groups: int = 8
    doc: str = ""
    # what `train.precision: auto` means on CUDA: fp32 where it measured fastest. The small UNets are
    # launch-bound: on an H200 (unet-s, batch 128) bf16 autocast ran at 0.83x the fp32 anchor loop's
    # images/s and fp32 at 1.09x (bench/README.md). unet-m is not measured; bf16 pays off for larger convs.
    cuda_precision: str = "fp32"
    down_block_types: tuple[str, ...] = field(init=False)
    up_block_types: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in self.attention)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention))
        object.__setattr__(self, "down_block_types", down)
        object.__setattr__(self, "up_block_types", up)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


PRESETS: dict[str, Preset] = {
    "unet-xs": Preset(8, 16, (32, 64), 1, (False, False), doc="CPU-friendly, 8x8 to 16x16"),
    "unet-s": Preset(16, 32, (32, 64, 64), 2, (False, False, True), doc="MNIST-sized, 16 to 32 px"),
    "unet-m": Preset(32, 64, (64, 128, 256, 256), 2, (False, False, True, True), norm_num_groups=32,
                     doc="32 to 64 px, RGB", cuda_precision="bf16"),
}


def check_fits(preset: str, image_size: int) -> None:
    """ValueError naming `model.preset` when the images are outside the preset's range."""
    p = PRESETS[preset]
    if not (p.min_size <= image_size <= p.max_size) or image_size % p.size_multiple:
        fitting = [n for n, q in PRESETS.items() if q.min_size <= image_size <= q.max_size
                   and image_size % q.size_multiple == 0]
        raise ValueError(
            f"model.preset {preset!r} is for {p.min_size} to {p.max_size} px images (a multiple of"
            f" {p.size_multiple}), the dataset has {image_size} px; allowed: {', '.join(fitting) or 'none'}"
        )


def build_unet(preset: str, image_size: int, channels: int) -> UNet2DModel:
    check_fits(preset, image_size)
    p = PRESETS[preset]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=p.block_out_channels,
        layers_per_block=p.layers_per_block,
        down_block_types=p.down_block_types,
        up_block_types=p.up_block_types,
        norm_num_groups=p.norm_num_groups,
    )


def describe(channels: int = 1) -> list[dict]:
    """For GET /v1/presets: sizes and parameter counts (built on the CPU, once per call)."""
    out = []
    for name, p in PRESETS.items():
        n_params = sum(t.numel() for t in build_unet(name, p.max_size, channels).parameters())
        out.append({"name": name, "min_size": p.min_size, "max_size": p.max_size,
                    "size_multiple": p.size_multiple, "parameters": n_params, "doc": p.doc})
    return out
