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

Every number carries a 95% bootstrap interval over samples (seeded; `STATS` is stored with the
result), and the FCD comes with its noise floor: the FCD of N real images against the real set,
what a perfect generator would score at the same N. The per-sample values (penalties,
confidence) and the FCD's bootstrap replicates are kept in the result, so models/verdict.py can
compare two runs, or two groups of seeds, later without sampling again. Replicates rather than
features: 200 numbers per run instead of N x 64, and because two runs' sample sets are
independent, pairing their replicates is exactly a two-sample bootstrap of the FCD difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from models.checkpoint import header_metadata as classifier_metadata
from models.datasets import ImageSet, to_tensor
from models.regularizers import REGISTRY, Regularizer

ARCH = "regdiff-cnn-v2"  # v2: features taken before the last ReLU (v1 had 28 of 64 dead on digits)
FEATURES = 64  # penultimate width: the Frechet distance uses a 64x64 covariance
REAL_LIMIT = 2000  # real images measured per evaluation, a fixed seeded subset
RECIPE = {"steps": 500, "batch_size": 64, "lr": 2e-3, "seed": 0}  # what train_classifier does by default
STATS = {"level": 0.95, "resamples": 200, "seed": 0, "method": "percentile bootstrap over samples"}
FLOOR_DRAWS = 50  # real-vs-real FCDs averaged into the noise floor
_BATCH = 256


class Classifier(nn.Module):
    """Three narrow 3x3 convs, adaptive pooling to 4x4, a 64-wide penultimate layer.

    Works for 1 or 3 channels and 8 to 64 pixels: images of 16 px and more are downsampled
    twice by strided convs, so training stays in seconds on CPU (about 96% held-out accuracy
    on mnist-5k, 98% on digits; CIFAR-10 is far harder for it, so its FCD is coarser).
    The features are the penultimate layer *before* its ReLU: after it, dead units made the
    covariance rank-deficient (36 of 64 on digits), and the Frechet distance needs full rank.
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
            nn.Linear(32 * 16, FEATURES),
        )  # fmt: skip
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(FEATURES, num_classes))

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


def recipe_key(*, steps: int, batch_size: int, lr: float, seed: int) -> str:
    """Everything besides the data that changes the trained classifier, for its cache key."""
    return f"{ARCH}:s{steps}:b{batch_size}:lr{lr:g}:seed{seed}"  # short: the cache key column holds 128


def train_classifier(
    data: ImageSet, *, device: torch.device | str, seed: int = RECIPE["seed"], steps: int = RECIPE["steps"],
    batch_size: int = RECIPE["batch_size"], lr: float = RECIPE["lr"],
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
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(train, batch_size)).to(device)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    accuracy = _accuracy(model, x[test], y[test]) if n_test else None
    config = {k: str(v) for k, v in model.config.items()}
    recipe = recipe_key(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    metadata = {"arch": ARCH, "recipe": recipe, **config, "holdout_accuracy": json.dumps(accuracy)}
    return save_tensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, metadata)


def _accuracy(model: Classifier, x: Tensor, y: Tensor) -> float:
    return float((batched(model, x).argmax(1) == y).float().mean())


def load_classifier(state: bytes, device: torch.device | str) -> Classifier:
    """Rebuild the classifier from `train_classifier`'s bytes, in eval mode on `device`."""
    meta = classifier_metadata(state)
    if meta.get("arch") != ARCH:
        raise ValueError(f"classifier state is {meta.get('arch')!r}; this code reads {ARCH!r}: retrain it")
    model = Classifier(int(meta["channels"]), int(meta["image_size"]), int(meta["num_classes"]))
    model.load_state_dict(load_tensors(state))
    return model.to(device).eval()


@torch.no_grad()
def batched(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn over x (N, ...) in batches, concatenated: bounded memory for any N."""
    return torch.cat([fn(x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)])


def frechet_from_moments(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2), for Gaussians given by their moments.

    S_a S_b is not symmetric when the covariances do not commute, so tr(sqrt(S_a) sqrt(S_b)) is
    wrong; but (S_a S_b)^1/2 is similar to (R S_b R)^1/2 with R = S_a^1/2, a symmetric PSD
    matrix, so its trace is sum(sqrt(eig(R S_b R))): two `eigh` calls, stable in every version
    (scipy.linalg.sqrtm changed its output types and accuracy across releases).
    """
    t = [torch.as_tensor(np.asarray(v, np.float64)) for v in (mu_a, cov_a, mu_b, cov_b)]
    return float(_frechet_batch(t[0], t[1], _sqrt_psd(t[1]), t[2][None], t[3][None])[0])


def _frechet_batch(mu_a: Tensor, cov_a: Tensor, root_a: Tensor, mus: Tensor, covs: Tensor) -> Tensor:
    """The Frechet distance of one Gaussian (mu_a, cov_a, its root) to B others (B, D), (B, D, D) -> (B,).

    Torch in float64 rather than numpy: batched `eigh`, and it obeys the worker's one-thread
    setting (numpy's BLAS threads measured 100x slower on a busy 2-core box)."""
    eig = torch.linalg.eigvalsh(root_a @ covs @ root_a)  # (B, D)
    trace_sqrt = eig.clamp(min=0).sqrt().sum(1)
    d = ((mus - mu_a) ** 2).sum(1) + cov_a.trace() + covs.diagonal(dim1=1, dim2=2).sum(1) - 2 * trace_sqrt
    return d.clamp(min=0)


def _sqrt_psd(s: Tensor) -> Tensor:
    """Symmetric square root of a covariance (tiny negative eigenvalues from rounding set to 0)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _weighted_moments(x: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Means (B, D) and covariances (B, D, D) of B resamples of x (N, D), given as counts (B, N)
    of each row (a bootstrap resample is a multiset of rows); normalised by n - 1 like np.cov."""
    n = counts[0].sum()
    mus = counts @ x / n
    centred = x[None] - mus[:, None]  # (B, N, D)
    covs = (centred * counts[..., None]).transpose(1, 2) @ centred / (n - 1)
    return mus, covs


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors per set; got {len(a)} and {len(b)}")
    return float(_fcd_to(torch.from_numpy(b), torch.from_numpy(a), torch.ones(1, len(a), dtype=torch.float64))[0])


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


def resample_indices(n: int, *, seed: int = STATS["seed"], resamples: int = STATS["resamples"]) -> np.ndarray:
    """(resamples, n) indices drawn with replacement; the same for a given (seed, n), so every metric
    of one evaluation is resampled alike."""
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def interval(replicates: np.ndarray, level: float = STATS["level"]) -> list[float]:
    """The percentile interval [lo, hi] of bootstrap replicates."""
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(np.asarray(replicates, np.float64), [tail, 100 - tail])
    return [float(lo), float(hi)]


def mean_with_ci(values: np.ndarray) -> tuple[float, list[float]]:
    """Mean of per-sample values (N,) and its 95% bootstrap interval."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), interval(values[resample_indices(len(values))].mean(1))


def compact(values: np.ndarray) -> list[float]:
    """Six significant digits per value, so per-sample arrays stay short in JSON."""
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64)]


def _round(value: float | None) -> float | None:
    """Four significant digits, so JSON stays short; None passes through."""
    return None if value is None else float(f"{value:.4g}")


def _rounded(ci: list[float]) -> list[float]:
    return [_round(v) for v in ci]


def penalty_summary(fn: Callable[[Tensor], Tensor], samples: Tensor, real: Tensor) -> tuple[dict, np.ndarray]:
    """A per-sample penalty (B, C, H, W) -> (B,) on samples and real images: ({samples, samples_ci,
    real, real_ci}, the per-sample values on samples (N,), kept for paired comparisons)."""
    on_samples, on_real = (batched(fn, x).double().cpu().numpy() for x in (samples, real))
    (s, s_ci), (r, r_ci) = mean_with_ci(on_samples), mean_with_ci(on_real)
    return {"samples": _round(s), "samples_ci": _rounded(s_ci), "real": _round(r), "real_ci": _rounded(r_ci)}, on_samples


def penalties(
    samples: Tensor, real: Tensor, regularizers: Mapping[str, type[Regularizer]]
) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Every regularizer (default params) on samples and on real images (N, C, H, W): the
    penalty_summary of each, and the per-sample values on samples of each.

    A regularizer that cannot run with defaults (an operator's plugin with required params, or
    one that refuses this shape) gets an "error" entry instead of failing the whole evaluation.
    """
    out, per_sample = {}, {}
    for name, cls in regularizers.items():
        try:
            out[name], values = penalty_summary(cls(cls.Params()), samples, real)
            per_sample[name] = compact(values)
        except (ValidationError, ValueError, RuntimeError) as exc:
            out[name] = {"samples": None, "real": None, "error": str(exc)}
    return out, per_sample


def real_subset(real: ImageSet, limit: int = REAL_LIMIT) -> np.ndarray:
    """A fixed seeded subset, so every run evaluated against this set sees the same real images."""
    n = len(real.images)
    idx = np.sort(np.random.default_rng(0).permutation(n)[:limit]) if n > limit else np.arange(n)
    return real.images[idx]


def _counts(indices: np.ndarray, n: int) -> Tensor:
    """Resample indices (B, k) -> how often each of n rows was drawn (B, n), float64."""
    counts = np.zeros((len(indices), n))
    np.add.at(counts, (np.arange(len(indices))[:, None], indices), 1)
    return torch.from_numpy(counts)


def _fcd_to(real: Tensor, feats: Tensor, counts: Tensor, chunk: int = 16) -> np.ndarray:
    """FCDs of B resamples of `feats` (given as counts (B, N)) to all of `real`, in chunks (bounded memory)."""
    mu_r, cov_r = _weighted_moments(real, torch.ones(1, len(real), dtype=real.dtype))
    root_r = _sqrt_psd(cov_r[0])
    parts = [_frechet_batch(mu_r[0], cov_r[0], root_r, *_weighted_moments(feats, counts[i : i + chunk]))
             for i in range(0, len(counts), chunk)]
    return torch.cat(parts).numpy()


def fcd_statistics(feats_s: np.ndarray, feats_r: np.ndarray) -> dict:
    """FCD of samples (N, D) to real features (M, D), its bootstrap replicates and interval, and
    the noise floor: the FCD of N real features (drawn with replacement) to all of them.

    Resampling with replacement biases each replicate upwards (duplicates), so the interval is
    the replicates' spread around the point estimate (basic recentring), not their raw percentiles.
    The floor is a lower bound of a perfect generator's FCD: it carries the noise of N samples,
    not that of the real set, which every run shares.
    """
    a, b = (torch.as_tensor(np.asarray(f, np.float64)) for f in (feats_s, feats_r))
    n = len(a)
    value = float(_fcd_to(b, a, torch.ones(1, n, dtype=torch.float64))[0])
    replicates = _fcd_to(b, a, _counts(resample_indices(n), n))
    ci = interval(value + replicates - replicates.mean())
    floor_draws = np.random.default_rng(STATS["seed"] + 1).integers(0, len(b), (FLOOR_DRAWS, n))
    floor = _fcd_to(b, b, _counts(floor_draws, len(b)))
    return {
        "fcd": _round(value), "fcd_ci": _rounded([max(ci[0], 0.0), ci[1]]),
        "fcd_noise_floor": {"value": _round(float(floor.mean())), "ci": _rounded(interval(floor)), "n": n,
                            "draws": FLOOR_DRAWS, "method": "N real images with replacement vs the real set"},
        "replicates": {"fcd": compact(replicates)},
    }


def _classifier_metrics(model: Classifier, samples: Tensor, real: Tensor) -> dict:
    probs_s, probs_r = (batched(model, x).softmax(1).double().cpu().numpy() for x in (samples, real))  # (N, K)
    feats_s, feats_r = (batched(model.features, x).cpu().numpy() for x in (samples, real))  # (N, FEATURES)
    counts = np.bincount(probs_s.argmax(1), minlength=probs_s.shape[1])
    top = probs_s.max(1)  # (N,) per-sample confidence
    confidence, confidence_ci = mean_with_ci(top)
    scores = [classifier_score(probs_s[idx]) for idx in resample_indices(len(probs_s))]
    out = {
        "confidence": _round(confidence), "confidence_ci": _rounded(confidence_ci),
        "classifier_score": _round(classifier_score(probs_s)), "classifier_score_ci": _rounded(interval(scores)),
        "class_histogram": [int(c) for c in counts],
        "reference": {
            "confidence": _round(classifier_confidence(probs_r)),
            "classifier_score": _round(classifier_score(probs_r)),
        },
        "per_sample": {"confidence": compact(top)},
    }
    if min(len(feats_s), len(feats_r)) >= 2:
        out |= fcd_statistics(feats_s, feats_r)
    return out


_NO_CLASSIFIER = dict.fromkeys(["fcd", "fcd_ci", "fcd_noise_floor", "confidence", "confidence_ci", "classifier_score",
                                "classifier_score_ci", "class_histogram", "reference"])


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

    Keys: n_samples, n_real, statistics (how the intervals were made), fcd, fcd_ci,
    fcd_noise_floor, confidence(_ci), classifier_score(_ci), class_histogram (predicted class
    counts of the samples), reference (confidence, classifier_score and the classifier's
    held-out accuracy; confidence and score are measured on real images it mostly trained on,
    so they are optimistic), penalties {name: {samples, samples_ci, real, real_ci}}, per_sample
    {confidence, penalties {name: [...]}} and replicates {fcd: [...]} for later comparisons.
    Classifier metrics are None without a classifier (unlabelled sets). FCD is biased upwards
    for small N (see fcd_noise_floor): compare runs at equal N.
    """
    device = torch.device(device)
    if samples_uint8.dtype != np.uint8 or samples_uint8.shape[1:] != real.images.shape[1:]:
        raise ValueError(
            f"samples are {samples_uint8.dtype} {samples_uint8.shape[1:]};"
            f" expected uint8 {real.images.shape[1:]} (H, W, C) like the real images"
        )
    real_images = real_subset(real, real_limit)
    samples = to_tensor(samples_uint8, device)  # (N, C, H, W) in [-1, 1]
    reals = to_tensor(real_images, device)
    result = {"n_samples": len(samples), "n_real": len(reals), "statistics": dict(STATS), **_NO_CLASSIFIER,
              "per_sample": {}, "replicates": {}}
    if classifier_state is not None:
        model = load_classifier(classifier_state, device)
        trained_on = (model.config["channels"], model.config["image_size"])
        if trained_on != (reals.shape[1], reals.shape[2]):
            raise ValueError(f"the classifier was trained on (channels, size) {trained_on}, not these images")
        result |= _classifier_metrics(model, samples, reals)
        accuracy = json.loads(classifier_metadata(classifier_state).get("holdout_accuracy", "null"))
        result["reference"]["classifier_accuracy"] = _round(accuracy)
    result["penalties"], result["per_sample"]["penalties"] = penalties(samples, reals, regularizers)
    return result
