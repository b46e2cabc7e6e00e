"""GAN metrics against oracles: Fréchet distance (scipy sqrtm reference, real vs itself / vs noise), k-NN
precision/recall (constructed sets, a float64 brute-force loop), mode coverage on constructed samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from losslab.errors import CorruptFileError
from losslab.gan.data import load_images, toy_mixture
from losslab.gan.metrics import (
    FeatureClassifier,
    classifier_outputs,
    classifier_scores,
    digits_classifier,
    digits_test_accuracy,
    frechet_distance,
    mode_metrics,
    precision_recall,
    state_digest,
    train_digits_classifier,
)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(ca @ cb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(400, 6, generator=gen, dtype=torch.float64) * 2 + 0.5
    assert frechet_distance(a, b) == pytest.approx(scipy_frechet(a.numpy(), b.numpy()), rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_closed_form_for_diagonal_gaussians() -> None:
    """Two sets with exact moments: FD = ‖Δμ‖² + Σ (σa − σb)² for commuting (diagonal) covariances."""
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    a = base * torch.tensor([1.0, 2.0], dtype=torch.float64)  # cov diag (4/3)·(1, 4)
    b = base * torch.tensor([3.0, 1.0], dtype=torch.float64) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    s = (4 / 3) ** 0.5
    assert frechet_distance(a, b) == pytest.approx(1.0 + (s * 1 - s * 3) ** 2 + (s * 2 - s * 1) ** 2, rel=1e-10)


def brute_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x: np.ndarray) -> np.ndarray:
        return np.array([np.sort([np.linalg.norm(p - q) for q in x])[k] for p in x])

    def share(points: np.ndarray, centres: np.ndarray, r: np.ndarray) -> float:
        return float(np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points]))

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


def test_precision_recall_oracles() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=gen)
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)
    real, fake = torch.randn(60, 3, generator=gen), torch.randn(50, 3, generator=gen) + 1.5
    got = precision_recall(real, fake, k=3, chunk=7)  # chunking must not change anything
    want = brute_precision_recall(real.double().numpy(), fake.double().numpy(), 3)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_precision_uses_the_real_radii_and_recall_the_fake_radii() -> None:
    """Kynkäänniemi et al. 2019: precision counts fakes inside the real k-NN balls, recall reals inside the fake
    ones. A tight real cluster inside a broad fake cloud: the real balls are tiny (few fakes inside: precision near
    0) while the fake balls are wide (every real inside: recall 1); swapped radii would give the reverse."""
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(300, 2, generator=gen) * 0.01
    fake = torch.randn(300, 2, generator=gen)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision < 0.05 and recall == 1.0
    collapsed = real[:1].repeat(300, 1) + 5.0  # a collapsed generator away from the data
    assert precision_recall(real, collapsed, k=3) == (0.0, 0.0)


def test_mode_metrics_on_constructed_samples() -> None:
    ring = toy_mixture("ring")
    exact = ring.modes.repeat(125, 1)  # 1,000 samples, 125 on each mode
    m = mode_metrics(exact, ring)
    assert (m["hq_rate"], m["modes_covered"], m["mode_counts"]) == (1.0, 8, [125] * 8)
    one_mode = torch.cat([ring.modes[:1].repeat(990, 1), ring.modes[1:2].repeat(9, 1), torch.zeros(1, 2)])
    m = mode_metrics(one_mode, ring)  # mode 1 holds 0.9 % < 1 %: not covered; the origin is not HQ
    assert (m["modes_covered"], m["hq_rate"]) == (1, pytest.approx(0.999))
    off = ring.modes + torch.tensor([3.01 * ring.sigma, 0.0])  # just beyond 3σ along x for every mode
    assert mode_metrics(off, ring, min_share=0.1)["hq_rate"] < 1.0
    assert mode_metrics(ring.sample(10_000), ring)["modes_covered"] == 8


def test_classifier_scores_oracle() -> None:
    uniform_confident = torch.eye(10).repeat(5, 1)  # every class equally often, one-hot
    s = classifier_scores(uniform_confident)
    assert s["classifier_score"] == pytest.approx(10.0, rel=1e-6)
    assert s["label_entropy"] == pytest.approx(np.log(10), rel=1e-9)
    collapsed = classifier_scores(torch.eye(10)[:1].repeat(50, 1))
    assert collapsed["classifier_score"] == pytest.approx(1.0, rel=1e-6) and collapsed["label_entropy"] == 0.0


@pytest.fixture(scope="module")
def digits_clf() -> FeatureClassifier:
    torch.set_num_threads(1)
    model, acc = train_digits_classifier(epochs=3)
    assert acc > 0.9
    from losslab.data import dataset_info

    spec = dataset_info("digits")
    return FeatureClassifier(model, spec.mean[0], spec.std[0])


def test_digits_fd_real_vs_itself_and_vs_noise(digits_clf: FeatureClassifier) -> None:
    train = load_images("digits", 16)  # [1437, 1, 16, 16] in [−1, 1], upsampled
    test = load_images("digits", 16, split="test")
    f_train, _ = classifier_outputs(digits_clf, train)
    f_test, _ = classifier_outputs(digits_clf, test)
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f_noise, _ = classifier_outputs(digits_clf, noise)
    same = frechet_distance(f_train, f_train)
    held_out = frechet_distance(f_train, f_test)
    vs_noise = frechet_distance(f_test, f_noise)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert vs_noise > 20 * held_out > 0


def test_precision_recall_of_digits_real_noise_and_a_collapsed_generator(digits_clf: FeatureClassifier) -> None:
    """Held-out real digits against the train digits score near 1 on both; pixel noise scores 0 recall, and one
    digit repeated (a collapsed generator) 0 recall."""
    f_train, _ = classifier_outputs(digits_clf, load_images("digits", 16))
    f_test, _ = classifier_outputs(digits_clf, load_images("digits", 16, split="test"))
    precision, recall = precision_recall(f_train, f_test)
    assert precision > 0.85 and recall > 0.85
    noise = torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f_noise, _ = classifier_outputs(digits_clf, noise)
    assert precision_recall(f_test, f_noise)[1] < 0.05
    f_one, _ = classifier_outputs(digits_clf, load_images("digits", 16)[:1].repeat(500, 1, 1, 1))
    assert precision_recall(f_test, f_one)[1] < 0.01


def _write_cache(path: Path, net: torch.nn.Module, **changes: object) -> None:
    weights = {key: value.clone() for key, value in net.state_dict().items()}
    state = {"model": weights, "test_accuracy": digits_test_accuracy(net), "seed": 0, "sha256": state_digest(weights)}
    torch.save({**state, **changes}, path)


def test_the_cached_digits_classifier_is_verified_before_use(digits_clf: FeatureClassifier, tmp_path: Path) -> None:
    model, cache = digits_clf.model, tmp_path / "digits_classifier.pt"
    _write_cache(cache, model)
    _, acc = digits_classifier(cache)
    assert acc == digits_test_accuracy(model) > 0.9
    zeroed = {key: torch.zeros_like(value) for key, value in model.state_dict().items()}
    _write_cache(cache, model, model=zeroed, sha256=state_digest(zeroed))  # consistent checksum, useless weights
    with pytest.raises(CorruptFileError, match=r"scores .* on the digits test set"):
        digits_classifier(cache)
    edited = {key: value.clone() for key, value in model.state_dict().items()}
    next(v for v in edited.values() if v.is_floating_point()).view(-1)[0] += 1.0  # changed after the checksum
    _write_cache(cache, model, model=edited)
    with pytest.raises(CorruptFileError, match="does not match its checksum"):
        digits_classifier(cache)
    state = {"model": model.state_dict(), "test_accuracy": 1.0}  # no checksum: not written by this losslab
    torch.save(state, cache)
    with pytest.raises(CorruptFileError, match="not written by this losslab"):
        digits_classifier(cache)
    nan = {key: value.clone() for key, value in model.state_dict().items()}
    next(v for v in nan.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    _write_cache(cache, model, model=nan, sha256=state_digest(nan))
    with pytest.raises(CorruptFileError, match="NaN or inf"):
        digits_classifier(cache)
