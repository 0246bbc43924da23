"""regdiff's science: diffusion training with a penalty on the denoised image. Pure PyTorch."""
