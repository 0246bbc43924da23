"""Offline evaluation: the Frechet math against closed forms, the classifier on held-out
digits, and evaluate() telling real data from noise in a JSON-able report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from scipy import linalg, stats

from models import evaluation
from models.datasets import ImageSet, to_tensor
from models.regularizers import REGISTRY

RNG = np.random.default_rng(0)




@pytest.fixture(scope="module")
def split(digits: ImageSet) -> tuple[ImageSet, ImageSet]:
    """80% to train the classifier on, 20% it never sees."""
    order = np.random.default_rng(1).permutation(len(digits.images))
    cut = len(order) * 4 // 5
    return tuple(ImageSet(digits.images[i], digits.labels[i]) for i in (order[:cut], order[cut:]))


@pytest.fixture(scope="module")
def state(split: tuple[ImageSet, ImageSet]) -> bytes:
    return evaluation.train_classifier(split[0], device="cpu")


def test_frechet_distance_matches_closed_form() -> None:
    """Gaussians N(0, diag(1, 4)) and N((3, 0), diag(4, 1)): 9 + (1-2)^2 + (2-1)^2 = 11."""
    z = RNG.standard_normal((200_000, 2))
    a = z * [1, 2]
    b = z[::-1] * [2, 1] + [3, 0]
    assert evaluation.frechet_distance(a, b) == pytest.approx(11, rel=0.02)
    assert evaluation.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_frechet_distance_matches_scipy_sqrtm_on_non_commuting_covariances() -> None:
    """Random full covariances do not commute, so tr(sqrt(A) sqrt(B)) is wrong there; scipy's sqrtm
    of the product is the reference."""
    rng = np.random.default_rng(3)
    m_a, m_b = rng.standard_normal((2, 6, 6))
    cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(6), m_b @ m_b.T + 0.1 * np.eye(6)
    assert not np.allclose(cov_a @ cov_b, cov_b @ cov_a)
    mu_a, mu_b = rng.standard_normal((2, 6))
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b) - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b)).real
    assert evaluation.frechet_from_moments(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-9)
    wrong = np.trace(cov_a + cov_b) - 2 * np.trace(linalg.sqrtm(cov_a) @ linalg.sqrtm(cov_b)).real
    assert abs(wrong + ((mu_a - mu_b) ** 2).sum() - expected) > 1e-3 * expected
    feats_a = rng.multivariate_normal(mu_a, cov_a, 300)
    feats_b = rng.multivariate_normal(mu_b, cov_b, 200)
    moments = [f(x) for x in (feats_a, feats_b) for f in (lambda x: x.mean(0), lambda x: np.cov(x, rowvar=False))]
    assert evaluation.frechet_distance(feats_a, feats_b) == pytest.approx(
        evaluation.frechet_from_moments(*moments), rel=1e-9)


def test_frechet_distance_handles_rank_deficient_features() -> None:
    """ReLU features are often constant (zero covariance); the eigen route never goes complex or NaN."""
    a = np.c_[RNG.standard_normal((500, 3)), np.zeros((500, 5))]
    d = evaluation.frechet_distance(a, a + 1)
    assert d == pytest.approx(8, rel=1e-6)


def test_real_features_have_a_full_rank_covariance(digits: ImageSet, state: bytes) -> None:
    """The Frechet distance needs a full-rank covariance: no dead features on real digits."""
    model = evaluation.load_classifier(state, "cpu")
    feats = evaluation.batched(model.features, to_tensor(digits.images)).double().numpy()
    eig = np.linalg.eigvalsh(np.cov(feats, rowvar=False))
    assert (eig > 1e-7 * eig.max()).all(), f"{(eig <= 1e-7 * eig.max()).sum()} near-null directions"


def test_bootstrap_interval_of_a_mean_matches_the_t_interval() -> None:
    values = np.random.default_rng(4).normal(3, 2, 400)
    mean, ci = evaluation.mean_with_ci(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean()) and ci == pytest.approx([lo, hi], abs=0.04)


def test_header_reader_checks_the_length(state: bytes) -> None:
    assert evaluation.classifier_metadata(state)["arch"] == evaluation.ARCH
    with pytest.raises(ValueError, match="header length"):
        evaluation.classifier_metadata(state[:40])


def test_recipe_key_names_every_hyperparameter() -> None:
    base = evaluation.RECIPE
    keys = {evaluation.recipe_key(**(base | {name: value}))
            for name, value in [("steps", 501), ("batch_size", 32), ("lr", 1e-3), ("seed", 1)]}
    assert len(keys | {evaluation.recipe_key(**base)}) == 5 and all(evaluation.ARCH in k for k in keys)


def test_confidence_and_classifier_score_bounds() -> None:
    eye = np.eye(4)
    assert evaluation.classifier_confidence(eye) == 1
    assert evaluation.classifier_score(eye) == pytest.approx(4)
    assert evaluation.classifier_score(np.tile(eye[:1], (4, 1))) == pytest.approx(1)
    assert evaluation.classifier_confidence(np.full((3, 4), 0.25)) == 0.25


def test_classifier_accuracy_on_held_out_digits(split: tuple[ImageSet, ImageSet], state: bytes) -> None:
    model = evaluation.load_classifier(state, "cpu")
    held_out = split[1]
    with torch.no_grad():
        predicted = model(to_tensor(held_out.images)).argmax(1).numpy()
    assert (predicted == held_out.labels).mean() > 0.9
    assert float(evaluation.classifier_metadata(state)["holdout_accuracy"]) > 0.9


def test_training_is_seeded_and_leaves_global_rng_alone(digits: ImageSet) -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = evaluation.train_classifier(digits, device="cpu", steps=5)
    assert torch.rand(1) == expected
    second = evaluation.train_classifier(digits, device="cpu", steps=5)
    assert evaluation.classifier_metadata(second) == evaluation.classifier_metadata(first)
    weights = load_tensors(second)  # compared as tensors: safetensors orders metadata keys at random
    for name, tensor in load_tensors(first).items():
        assert torch.equal(tensor, weights[name]), name


@pytest.mark.parametrize(("channels", "size"), [(3, 64), (1, 16)])
def test_classifier_shapes(channels: int, size: int) -> None:
    data = ImageSet(RNG.integers(0, 256, (20, size, size, channels), dtype=np.uint8), np.arange(20) % 3)
    model = evaluation.load_classifier(evaluation.train_classifier(data, device="cpu", steps=2), "cpu")
    x = to_tensor(data.images[:4])
    assert model.features(x).shape == (4, evaluation.FEATURES) and model(x).shape == (4, 3)


def test_unlabelled_data_cannot_train_a_classifier(digits: ImageSet) -> None:
    with pytest.raises(ValueError, match="labels"):
        evaluation.train_classifier(ImageSet(digits.images, None), device="cpu")


def test_evaluate_tells_real_from_noise(digits: ImageSet, state: bytes) -> None:
    half = len(digits.images) // 2
    real_a, real_b = ImageSet(digits.images[:half], digits.labels[:half]), digits.images[half:]
    noise = RNG.integers(0, 256, real_b.shape, dtype=np.uint8)
    same = evaluation.evaluate(real_b, real_a, classifier_state=state, regularizers=REGISTRY, device="cpu")
    other = evaluation.evaluate(noise, real_a, classifier_state=state, regularizers=REGISTRY, device="cpu")
    json.dumps(same)
    assert same["fcd"] < 0.05 * other["fcd"]
    assert same["confidence"] > 0.9 and same["classifier_score"] > 8
    assert sum(same["class_histogram"]) == same["n_samples"] == len(real_b)
    assert same["reference"]["classifier_accuracy"] > 0.9
    assert set(same["penalties"]) == set(REGISTRY)
    for name, values in same["penalties"].items():
        assert isinstance(values["samples"], float) and isinstance(values["real"], float), name
    assert other["penalties"]["tv"]["samples"] > same["penalties"]["tv"]["samples"]
    # every number has an interval around it, the FCD its noise floor, and per-sample values are kept
    for report in (same, other):
        assert report["fcd_ci"][0] <= report["fcd"] <= report["fcd_ci"][1]
        assert report["confidence_ci"][0] <= report["confidence"] <= report["confidence_ci"][1]
        assert report["classifier_score_ci"][0] <= report["classifier_score"] <= report["classifier_score_ci"][1]
        tv = report["penalties"]["tv"]
        assert tv["samples_ci"][0] <= tv["samples"] <= tv["samples_ci"][1] and tv["real_ci"][0] <= tv["real"]
        assert len(report["per_sample"]["penalties"]["tv"]) == len(report["per_sample"]["confidence"]) == len(real_b)
        assert np.mean(report["per_sample"]["penalties"]["tv"]) == pytest.approx(tv["samples"], rel=1e-3)
        assert len(report["replicates"]["fcd"]) == report["statistics"]["resamples"]
        assert report["fcd_noise_floor"]["n"] == len(real_b)
    assert same["fcd_noise_floor"]["value"] < 0.05 * other["fcd"]
    assert other["fcd_ci"][0] > same["fcd_ci"][1]


def test_evaluate_without_classifier_still_measures_penalties(digits: ImageSet) -> None:
    report = evaluation.evaluate(digits.images[:32], digits, classifier_state=None, real_limit=100)
    assert report["fcd"] is None and report["confidence"] is None and report["n_real"] == 100
    assert set(report["penalties"]) == set(REGISTRY)


def test_evaluate_refuses_mismatched_samples(digits: ImageSet) -> None:
    with pytest.raises(ValueError, match="uint8"):
        evaluation.evaluate(np.zeros((4, 16, 16, 1), np.uint8), digits, classifier_state=None)


def test_one_sample_has_no_fcd_and_a_foreign_classifier_is_refused(digits: ImageSet, state: bytes) -> None:
    report = evaluation.evaluate(digits.images[:1], digits, classifier_state=state)
    assert report["fcd"] is None and report["class_histogram"] is not None
    rgb = ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4))
    with pytest.raises(ValueError, match="trained on"):
        evaluation.evaluate(rgb.images, rgb, classifier_state=state)
