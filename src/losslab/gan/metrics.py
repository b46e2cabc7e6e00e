"""GAN metrics: mode coverage on 2-D mixtures; Fréchet distance, k-NN precision/recall and classifier scores on images.

    ring = toy_mixture("ring")
    mode_metrics(samples, ring)          # {"hq_rate": .., "modes_covered": 8, "mode_counts": [...], "mmd2": ..}
    frechet_distance(feats_a, feats_b)   # ‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½   (float64)
    precision_recall(real_feats, fake_feats, k=3)   # Kynkäänniemi et al. 2019
    clf = digits_classifier(img_size=32)             # losslab's small_cnn trained on the digits train split
    image_metrics(fake_images, real_images, clf)     # digits-FD, precision, recall, classifier score, entropy

Definitions (stated, as the literature varies):

* High-quality (HQ) sample on a mixture: within 3σ (Euclidean) of its nearest mode. ``hq_rate`` = HQ share of all
  samples. A mode is *covered* when at least ``min_share`` (default 1 %) of all samples are HQ samples of that mode
  (100 of the 10,000 the demo draws; a uniform spread over the ring's 8 modes gives 12.5 % each).
* ``mmd2``: unbiased squared MMD with a Gaussian kernel of bandwidth 1 between the samples and fresh true samples.
* digits-FD: Fréchet distance of the penultimate (64-d, global-average-pooled) features of a small CNN that losslab
  trains on the digits train split; not comparable to Inception FID.
* Precision: share of generated features inside the k-NN ball (radius = distance to the k-th nearest other real
  point) of some real feature; recall: the same with the roles swapped (k = 3).
* Classifier score exp(E_x KL(p(y|x) ‖ p(y))) (the Inception-score form) and the entropy (nats) of the predicted
  labels' histogram (log 10 = 2.303 when all digits appear equally).
* FID needs the Inception weights on disk (``fid_weights``) and the ``torch-fidelity`` package; nothing is
  downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.errors import ConfigError, DataNotFoundError, LosslabError
from losslab.gan.data import ToyMixture

MIN_MODE_SHARE = 0.01
HQ_SIGMAS = 3.0
MIN_CLASSIFIER_ACCURACY = 0.9  # a cached digits classifier below this is refused (losslab's trains to ~98 %)


def mode_metrics(samples: Tensor, mixture: ToyMixture, *, min_share: float = MIN_MODE_SHARE, seed: int = 1) -> dict:
    """HQ rate, covered modes, per-mode HQ counts and MMD² to fresh true samples for 2-D ``samples`` [n, 2]."""
    samples = samples.detach().float().cpu()
    dist = torch.cdist(samples, mixture.modes)  # [n, M]
    nearest, mode = dist.min(1)
    hq = nearest <= HQ_SIGMAS * mixture.sigma
    counts = torch.bincount(mode[hq], minlength=len(mixture.modes))
    covered = int((counts >= min_share * len(samples)).sum())
    n_mmd = min(len(samples), 2000)
    real = mixture.sample(n_mmd, seed=seed)
    return {
        "hq_rate": float(hq.float().mean()),
        "modes_covered": covered,
        "num_modes": len(mixture.modes),
        "mode_counts": counts.tolist(),
        "min_mode_share": min_share,
        "mmd2": mmd2_unbiased(samples[:n_mmd], real),
    }


def mmd2_unbiased(x: Tensor, y: Tensor, bandwidth: float = 1.0) -> float:
    """Unbiased MMD² between point sets [n, d] and [m, d] with k(a, b) = exp(−‖a − b‖² / (2·bandwidth²)), float64."""
    x, y = x.double(), y.double()

    def mean_kernel(a: Tensor, b: Tensor, same: bool) -> Tensor:
        k = torch.exp(-torch.cdist(a, b).square() / (2 * bandwidth**2))
        if same:
            n = len(a)
            return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
        return k.mean()

    return float(mean_kernel(x, x, True) + mean_kernel(y, y, True) - 2 * mean_kernel(x, y, False))


def _sqrt_psd(matrix: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(matrix)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` [n, d] and ``b`` [m, d] (float64, eigh-based)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise LosslabError(f"frechet_distance needs two [n >= 2, d] feature sets of equal d; got {a.shape}, {b.shape}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(value.clamp_min(0))


def _knn_radii(feats: Tensor, k: int, chunk: int) -> Tensor:
    """Distance of each row to its k-th nearest other row: [n]."""
    radii = []
    for i in range(0, len(feats), chunk):
        d = torch.cdist(feats[i : i + chunk], feats)  # [c, n]; the self-distance 0 is the 1st smallest
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _inside_any_ball(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> Tensor:
    inside = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # [c, m]
        inside.append((d <= radii[None, :]).any(1))
    return torch.cat(inside)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` [m, d] against ``real`` [n, d]."""
    if min(len(real), len(fake)) <= k:
        raise LosslabError(f"precision_recall with k={k} needs more than {k} points per set")
    real, fake = real.double(), fake.double()
    precision = _inside_any_ball(fake, real, _knn_radii(real, k, chunk), chunk).double().mean()
    recall = _inside_any_ball(real, fake, _knn_radii(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


class FeatureClassifier(nn.Module):
    """A trained losslab ``small_cnn`` seen through its penultimate features, on images of side ``img_size``.

    ``forward(x)`` takes GAN images in [−1, 1] [N, 1, S, S], area-resizes them to the digits' native 8×8 and
    normalises them as the classifier was trained; returns (features [N, 64], logits [N, 10]).
    """

    def __init__(self, model: nn.Module, mean: float, std: float, native: int = 8) -> None:
        super().__init__()
        self.model = model.eval()
        self.mean, self.std, self.native = mean, std, native

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = (images + 1) / 2
        if x.shape[-1] != self.native:
            x = F.adaptive_avg_pool2d(x, self.native)
        x = (x - self.mean) / self.std
        feats = self.model.pool(self.model.features(x)).flatten(1)
        return feats, self.model.fc(feats)


def train_digits_classifier(epochs: int = 10, seed: int = 0) -> tuple[nn.Module, float]:
    """losslab's ``small_cnn`` trained with losslab's cross entropy on the digits train split; (model, test acc)."""
    from losslab.data import create_dataset, dataset_info
    from losslab.models import create_model
    from losslab.objectives import create

    torch.manual_seed(seed)
    spec = dataset_info("digits")
    train = create_dataset("digits", "train", val_fraction=0.0, augment=True)
    model = create_model("small_cnn", num_classes=10, in_chans=1)
    loss_fn = create("ce")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(
        train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
    assert spec.in_chans == 1
    return model, digits_test_accuracy(model)


def state_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 over a state dict's keys, dtypes, shapes and bytes (sorted keys): the classifier cache's checksum."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def digits_test_accuracy(model: nn.Module) -> float:
    """Top-1 accuracy of ``model`` on the 360 digits test images (float64 share)."""
    from losslab.data import create_dataset

    test = create_dataset("digits", "test")
    x_test = torch.stack([x for x, _ in test])
    with torch.no_grad():
        return float((model.eval()(x_test).argmax(1) == torch.tensor(test.targets)).double().mean())


def load_digits_classifier(path: Path) -> tuple[nn.Module, float]:
    """The cached classifier at ``path``, verified before use: a losslab-written file (safe loader), the SHA-256 of
    its weights as stored, finite weights, and its test accuracy recomputed ≥ :data:`MIN_CLASSIFIER_ACCURACY` and
    equal to the stored one. Any failure is one :class:`CorruptFileError` naming the file."""
    from losslab.errors import CorruptFileError
    from losslab.models import create_model
    from losslab.serialization import load_torch_file

    fix = "delete it and losslab trains a new one (about 10 s)"
    state = load_torch_file(path, what="digits classifier cache")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "sha256" not in state:
        raise CorruptFileError(f"digits classifier cache {str(path)!r} was not written by this losslab; {fix}")
    weights = state["model"]
    if not all(isinstance(t, Tensor) for t in weights.values()) or state_digest(weights) != state["sha256"]:
        raise CorruptFileError(f"digits classifier cache {str(path)!r} does not match its checksum; {fix}")
    model = create_model("small_cnn", num_classes=10, in_chans=1)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CorruptFileError(f"digits classifier cache {str(path)!r} does not fit small_cnn ({err}); {fix}") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise CorruptFileError(f"digits classifier cache {str(path)!r} holds NaN or inf values; {fix}")
    acc = digits_test_accuracy(model)
    if acc < MIN_CLASSIFIER_ACCURACY or abs(acc - float(state.get("test_accuracy", -1))) > 1e-6:
        raise CorruptFileError(
            f"digits classifier cache {str(path)!r} scores {100 * acc:.1f} % on the digits test set (stored "
            f"{state.get('test_accuracy')!r}, needed >= {100 * MIN_CLASSIFIER_ACCURACY:.0f} %); {fix}"
        )
    return model, acc


def digits_classifier(cache: str | os.PathLike[str] | None = None, seed: int = 0) -> tuple[FeatureClassifier, float]:
    """The digits feature classifier and its test accuracy; loaded from ``cache`` when it exists (verified:
    :func:`load_digits_classifier`), else trained (~10 s on one CPU core, ≥ 97 % test accuracy) and saved there with
    the SHA-256 of its weights."""
    from losslab.data import dataset_info
    from losslab.io import save_torch_atomic

    spec = dataset_info("digits")
    path = Path(cache) if cache is not None else None
    if path is not None and path.exists():
        model, acc = load_digits_classifier(path)
    else:
        model, acc = train_digits_classifier(seed=seed)
        if path is not None:
            weights = model.state_dict()
            state = {"model": weights, "test_accuracy": acc, "seed": seed, "sha256": state_digest(weights)}
            save_torch_atomic(path, state)
    return FeatureClassifier(model, spec.mean[0], spec.std[0]), acc


def classifier_outputs(clf: FeatureClassifier, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(features, softmax probabilities) of ``images`` in batches, float32 on the images' device."""
    clf = clf.to(images.device)
    feats, probs = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            f, logits = clf(images[i : i + batch_size])
            feats.append(f)
            probs.append(logits.softmax(1))
    return torch.cat(feats), torch.cat(probs)


def classifier_scores(probs: Tensor) -> dict[str, float]:
    """Classifier score exp(E KL(p(y|x) ‖ p(y))) and the predicted-label entropy (nats) of probabilities [n, C]."""
    probs = probs.double().clamp_min(1e-12)
    marginal = probs.mean(0)
    kl = (probs * (probs.log() - marginal.log())).sum(1).mean()
    hist = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double() / len(probs)
    entropy = -(hist[hist > 0] * hist[hist > 0].log()).sum()
    return {"classifier_score": float(kl.exp()), "label_entropy": float(entropy) + 0.0}  # + 0.0: no "-0"


def image_metrics(fake: Tensor, real: Tensor, clf: FeatureClassifier, k: int = 3) -> dict[str, float]:
    """digits-FD, k-NN precision/recall (classifier features), classifier score and label entropy of ``fake``."""
    real_feats, _ = classifier_outputs(clf, real)
    fake_feats, fake_probs = classifier_outputs(clf, fake)
    precision, recall = precision_recall(real_feats, fake_feats, k=k)
    return {
        "digits_fd": frechet_distance(real_feats, fake_feats),
        "precision": precision,
        "recall": recall,
        **classifier_scores(fake_probs),
    }


def inception_fid(fake: Tensor, real: Tensor, weights: str | os.PathLike[str]) -> float:
    """FID with the Inception-v3 weights at ``weights`` (torch-fidelity's feature extractor; nothing downloaded)."""
    path = Path(weights)
    if not path.is_file():
        raise DataNotFoundError(
            f"--fid-weights {str(path)!r} is not a file; pass the local Inception-v3 FID weights "
            "(pt_inception-2015-12-05-6726825d.pth) or leave --fid-weights out (digits-FD is reported instead)"
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ConfigError(
            "FID needs the torch-fidelity package (not a losslab dependency): pip install torch-fidelity; "
            "nothing else is required besides the weights file"
        ) from err
    net: Any = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    net = net.to(fake.device).eval()

    def features(images: Tensor) -> Tensor:
        out = []
        for i in range(0, len(images), 200):
            x = ((images[i : i + 200] + 1) * 127.5).clamp(0, 255).to(torch.uint8)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            with torch.no_grad():
                out.append(net(x)[0])
        return torch.cat(out)

    return frechet_distance(features(real), features(fake))


def fid_message(weights: str | os.PathLike[str] | None) -> str | None:
    """Why FID is not reported (None when ``weights`` is given)."""
    if weights is None:
        return "FID not computed: no local Inception weights (pass --fid-weights FILE; never downloaded)"
    return None


__all__ = [
    "FeatureClassifier",
    "classifier_scores",
    "digits_classifier",
    "fid_message",
    "frechet_distance",
    "image_metrics",
    "inception_fid",
    "mmd2_unbiased",
    "mode_metrics",
    "precision_recall",
]
