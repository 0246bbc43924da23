"""Offline evaluation of generated samples against the real set, with no downloaded weights.

Inception-based FID needs weights we cannot fetch here, and Inception features say little
about 8x8 greyscale digits anyway. We train a small CNN classifier once per labelled dataset
and compute, on its penultimate features, the Frechet distance between samples and real
images: the Frechet *classifier* distance (FCD), in the spirit of the "Frechet LeNet distance"
used for MNIST. Its values are only comparable between runs that share a dataset and a
classifier (same bytes), never with published FID numbers.

Besides FCD: the classifier's mean confidence (speckled or ambiguous digits score low), a
classifier score in the style of the Inception Score, and every registered regularizer
measured on samples and on real images, so a user sees where the extra loss moved the samples
relative to the data.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from models.datasets import ImageSet, to_tensor
from models.regularizers import REGISTRY, Regularizer

ARCH = "regdiff-cnn-v1"
FEATURES = 64  # penultimate width: the Frechet distance uses a 64x64 covariance
REAL_LIMIT = 2000  # real images measured per evaluation, a fixed seeded subset
_BATCH = 256


class Classifier(nn.Module):
    """Three narrow 3x3 convs, adaptive pooling to 4x4, a 64-wide penultimate layer.

    Works for 1 or 3 channels and 8 to 64 pixels: images of 16 px and more are downsampled
    twice by strided convs, so training stays in seconds on CPU (about 96% held-out accuracy
    on mnist-5k, 98% on digits; CIFAR-10 is far harder for it, so its FCD is coarser).
    """

    def __init__(self, channels: int, image_size: int, num_classes: int):
        super().__init__()
        self.config = {"channels": channels, "image_size": image_size, "num_classes": num_classes}
        stride = 2 if image_size >= 16 else 1
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=stride, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=stride, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, FEATURES), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:  # (B, C, H, W) in [-1, 1] -> (B, FEATURES)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> logits (B, K)
        return self.head(self.body(x))


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Seed torch for the block without disturbing the caller's random streams."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None or not cuda else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.manual_seed(seed)
        yield


def train_classifier(
    data: ImageSet, *, device: torch.device | str, seed: int = 0, steps: int = 500, batch_size: int = 64
) -> bytes:
    """Train the evaluation classifier on a labelled set; returns safetensors bytes (no pickle).

    A fixed number of steps keeps the cost bounded whatever the dataset size (a few seconds for
    digits, well under a minute for mnist-5k on 2 CPU cores). 10% of the set is held out and the
    accuracy on it is stored in the metadata, so a report can say how far to trust the classifier.
    """
    if data.labels is None or len(np.unique(data.labels)) < 2:
        raise ValueError("the evaluation classifier needs a dataset with labels of at least 2 classes")
    device = torch.device(device)
    n, size, _, channels = data.images.shape
    num_classes = int(data.labels.max()) + 1
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test = n // 10
    test, train = order[:n_test], order[n_test:]
    x = to_tensor(data.images, device)  # (N, C, H, W)
    y = torch.from_numpy(data.labels.astype(np.int64)).to(device)
    with _seeded(seed, device):
        model = Classifier(channels, size, num_classes).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(train, batch_size)).to(device)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    accuracy = _accuracy(model, x[test], y[test]) if n_test else None
    config = {k: str(v) for k, v in model.config.items()}
    metadata = {"arch": ARCH, **config, "holdout_accuracy": json.dumps(accuracy)}
    return save_tensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, metadata)


def _accuracy(model: Classifier, x: Tensor, y: Tensor) -> float:
    return float((_batched(model, x).argmax(1) == y).float().mean())


def classifier_metadata(state: bytes) -> dict[str, str]:
    """The safetensors header metadata (read from the bytes; no file needed)."""
    (header_len,) = struct.unpack("<Q", state[:8])
    return json.loads(state[8 : 8 + header_len]).get("__metadata__", {})


def load_classifier(state: bytes, device: torch.device | str) -> Classifier:
    """Rebuild the classifier from `train_classifier`'s bytes, in eval mode on `device`."""
    meta = classifier_metadata(state)
    if meta.get("arch") != ARCH:
        raise ValueError(f"classifier state is {meta.get('arch')!r}; this code reads {ARCH!r}: retrain it")
    model = Classifier(int(meta["channels"]), int(meta["image_size"]), int(meta["num_classes"]))
    model.load_state_dict(load_tensors(state))
    return model.to(device).eval()


@torch.no_grad()
def _batched(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn over x (N, ...) in batches, concatenated: bounded memory for any N."""
    return torch.cat([fn(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)])


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    d = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2). The trace of the matrix
    square root equals sum(sqrt(eig(sqrt(S_a) S_b sqrt(S_a)))), a symmetric PSD product, so
    `eigh` gives it stably in every numpy version (scipy.linalg.sqrtm changed across releases).
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors per set; got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(s_a)
    eig = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    d = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt
    return max(float(d), 0.0)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (tiny negative eigenvalues from rounding set to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def classifier_confidence(probs: np.ndarray) -> float:
    """Mean max-probability (N, K) -> float: low when samples look like no class in particular."""
    return float(np.asarray(probs).max(1).mean())


def classifier_score(probs: np.ndarray) -> float:
    """exp(mean_i KL(p(y|x_i) || p(y))), the Inception Score computed with our classifier.

    1 when every sample gets the same prediction, K (the class count) when each sample is
    confidently one class and the classes are balanced; real data sets the reference.
    """
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1)
    marginal = p.mean(0, keepdims=True)
    return float(math.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def penalties(
    samples: Tensor, real: Tensor, regularizers: Mapping[str, type[Regularizer]]
) -> dict[str, dict[str, float | str | None]]:
    """Mean penalty of every regularizer (default params) on samples and on real images (N, C, H, W).

    A regularizer that cannot run with defaults (an operator's plugin with required params, or
    one that refuses this shape) gets an "error" entry instead of failing the whole evaluation.
    """
    out = {}
    for name, cls in regularizers.items():
        try:
            reg = cls(cls.Params())
            out[name] = {"samples": _mean(reg, samples), "real": _mean(reg, real)}
        except (ValidationError, ValueError, RuntimeError) as exc:
            out[name] = {"samples": None, "real": None, "error": str(exc)}
    return out


def _mean(reg: Regularizer, x: Tensor) -> float:
    return _round(float(_batched(reg, x).mean()))


def _round(value: float | None) -> float | None:
    """Four significant digits, so JSON stays short; None passes through."""
    return None if value is None else float(f"{value:.4g}")


def _real_subset(real: ImageSet, limit: int) -> np.ndarray:
    """A fixed seeded subset, so every run evaluated against this set sees the same real images."""
    n = len(real.images)
    idx = np.sort(np.random.default_rng(0).permutation(n)[:limit]) if n > limit else np.arange(n)
    return real.images[idx]


def _classifier_metrics(model: Classifier, samples: Tensor, real: Tensor) -> dict:
    probs_s, probs_r = (_batched(model, x).softmax(1).cpu().numpy() for x in (samples, real))  # (N, K)
    feats_s, feats_r = (_batched(model.features, x).cpu().numpy() for x in (samples, real))  # (N, FEATURES)
    counts = np.bincount(probs_s.argmax(1), minlength=probs_s.shape[1])
    enough = min(len(feats_s), len(feats_r)) >= 2
    return {
        "fcd": _round(frechet_distance(feats_s, feats_r)) if enough else None,
        "confidence": _round(classifier_confidence(probs_s)),
        "classifier_score": _round(classifier_score(probs_s)),
        "class_histogram": [int(c) for c in counts],
        "reference": {
            "confidence": _round(classifier_confidence(probs_r)),
            "classifier_score": _round(classifier_score(probs_r)),
        },
    }


_NO_CLASSIFIER = dict.fromkeys(["fcd", "confidence", "classifier_score", "class_histogram", "reference"])


def evaluate(
    samples_uint8: np.ndarray,
    real: ImageSet,
    *,
    classifier_state: bytes | None,
    regularizers: Mapping[str, type[Regularizer]] = REGISTRY,
    device: torch.device | str = "cpu",
    real_limit: int = REAL_LIMIT,
) -> dict:
    """Samples (N, H, W, C) uint8 vs the real set -> JSON-able metrics.

    Keys: n_samples, n_real, fcd, confidence, classifier_score, class_histogram (predicted
    class counts of the samples), reference (confidence, classifier_score and the classifier's
    held-out accuracy; confidence and score are measured on real images it mostly trained on,
    so they are optimistic), penalties {name: {samples, real}}. Classifier metrics are None
    without a classifier (unlabelled sets). FCD needs a few hundred samples to be stable and is
    biased upwards for small N: compare runs at equal N.
    """
    device = torch.device(device)
    if samples_uint8.dtype != np.uint8 or samples_uint8.shape[1:] != real.images.shape[1:]:
        raise ValueError(
            f"samples are {samples_uint8.dtype} {samples_uint8.shape[1:]};"
            f" expected uint8 {real.images.shape[1:]} (H, W, C) like the real images"
        )
    real_images = _real_subset(real, real_limit)
    samples = to_tensor(samples_uint8, device)  # (N, C, H, W) in [-1, 1]
    reals = to_tensor(real_images, device)
    result = {"n_samples": len(samples), "n_real": len(reals), **_NO_CLASSIFIER}
    if classifier_state is not None:
        model = load_classifier(classifier_state, device)
        trained_on = (model.config["channels"], model.config["image_size"])
        if trained_on != (reals.shape[1], reals.shape[2]):
            raise ValueError(f"the classifier was trained on (channels, size) {trained_on}, not these images")
        result |= _classifier_metrics(model, samples, reals)
        accuracy = json.loads(classifier_metadata(classifier_state).get("holdout_accuracy", "null"))
        result["reference"]["classifier_accuracy"] = _round(accuracy)
    result["penalties"] = penalties(samples, reals, regularizers)
    return result
