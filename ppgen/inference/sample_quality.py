r"""Sample quality in a feature space: Fréchet distance, kernel distance, precision and recall.

Given features of real rows and of samples (the activations of a network, or the rows themselves
for small data):

- :func:`frechet_distance` (FID when the features are Inception's; Heusel et al. 2017) fits a
  Gaussian to each set: :math:`\lVert \mu_r - \mu_g \rVert^2 + \mathrm{Tr}(\Sigma_r + \Sigma_g
  - 2 (\Sigma_r^{1/2} \Sigma_g \Sigma_r^{1/2})^{1/2})`; biased for small sets.
- :func:`kernel_distance` (KID; Bińkowski et al. 2018): the unbiased estimate of the squared MMD
  with the kernel :math:`k(a, b) = (a^\top b / d + 1)^3`, averaged over subsets, with its standard
  error; its mean is 0 when both sets come from one distribution.
- :func:`precision_recall` (Kynkäänniemi et al. 2019): the fraction of samples inside the real
  rows' k-nearest-neighbour balls (precision: are samples realistic?) and of real rows inside the
  samples' balls (recall: is the data covered?).

For 28x28 digits the feature network is :class:`DigitClassifier`, a small CNN whose weights ship
with ppgen (``ppgen/data/digit_classifier.pt``, re-derived by ``scripts/train_digit_classifier.py``):
:func:`digit_features` gives its 64-unit feature layer, and :func:`label_spread` the histogram of
its predicted labels over samples (a collapsed model puts most samples in few classes).
:func:`sample_quality` scores a model's samples of digits with all of them (what ``ppgen evaluate``
reports).

References: M. Heusel et al., NeurIPS 2017; M. Bińkowski et al., "Demystifying MMD GANs", ICLR
2018; T. Kynkäänniemi et al., "Improved precision and recall metric for assessing generative
models", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import torch
from torch import nn

__all__ = ["frechet_distance", "frechet_distance_of_moments", "kernel_distance", "KernelDistance",
           "precision_recall", "DigitClassifier", "digit_classifier", "digit_features", "label_spread",
           "sample_quality", "draw"]

WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "digit_classifier.pt"


class DigitClassifier(nn.Module):
    """Two conv layers (32, 64 channels, 3x3, max-pooled), a 64-unit feature layer, 10 logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(64 * 7 * 7, 64), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, 28, 28))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@functools.cache
def digit_classifier() -> DigitClassifier:
    """The shipped classifier, in evaluation mode (loaded once)."""
    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"the digit classifier's weights are missing ({WEIGHTS}); derive them with "
                                "python scripts/train_digit_classifier.py")
    net = DigitClassifier()
    net.load_state_dict({k: v.float() for k, v in torch.load(WEIGHTS, weights_only=True).items()})
    return net.eval()


def _digits(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).float()
    if x.dim() != 2 or x.shape[1] != 784:
        raise ValueError(f"{name} must be (N, 784) digits with pixels in [0, 1], got shape {tuple(x.shape)}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{name} must hold pixels in [0, 1] (divide greyscale values by 255)")
    return x


@torch.no_grad()
def digit_features(x, batch_size: int = 1000) -> torch.Tensor:
    """The classifier's 64-unit features of (N, 784) digits with pixels in [0, 1]."""
    x, net = _digits(x, "x"), digit_classifier()
    return torch.cat([net.features(chunk) for chunk in x.split(batch_size)])


@torch.no_grad()
def label_spread(samples) -> torch.Tensor:
    """The fraction of samples the classifier puts in each of the 10 classes (sums to 1)."""
    labels = digit_classifier()(_digits(samples, "samples")).argmax(-1)
    return torch.bincount(labels, minlength=10).double() / len(labels)


def _features(f, name: str) -> torch.Tensor:
    f = torch.as_tensor(f)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must be a (N, d) array of features with N >= 2, got shape {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or inf")
    return f.double()


def frechet_distance_of_moments(mu_a, cov_a, mu_b, cov_b) -> float:
    """The Fréchet (2-Wasserstein) distance squared between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    mu_a, cov_a, mu_b, cov_b = (torch.as_tensor(t, dtype=torch.float64) for t in (mu_a, cov_a, mu_b, cov_b))
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle).item()


def frechet_distance(real, fake) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (rows)."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in width: {real.shape[1]} vs {fake.shape[1]}")
    return frechet_distance_of_moments(real.mean(0), torch.cov(real.T).reshape(real.shape[1], -1),
                                       fake.mean(0), torch.cov(fake.T).reshape(fake.shape[1], -1))


@dataclasses.dataclass
class KernelDistance:
    """KID: the mean over subsets of the unbiased squared MMD, its standard error, and the subsets."""

    mean: float
    stderr: float
    subsets: int
    subset_size: int

    def __str__(self) -> str:
        return f"KID {self.mean:.5f} ± {self.stderr:.5f} ({self.subsets} subsets of {self.subset_size})"


def kernel_distance(real, fake, *, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> KernelDistance:
    """The kernel (inception) distance with the cubic polynomial kernel, unbiased per subset."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        a = real[torch.randperm(len(real), generator=generator)[:m]]
        b = fake[torch.randperm(len(fake), generator=generator)[:m]]
        k_aa, k_bb, k_ab = ((u @ v.T / d + 1) ** 3 for u, v in ((a, a), (b, b), (a, b)))
        off = (k_aa.sum() - k_aa.diagonal().sum() + k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1))
        values.append((off - 2 * k_ab.mean()).item())
    values = torch.tensor(values, dtype=torch.float64)
    stderr = (values.std() / math.sqrt(subsets)).item() if subsets > 1 else math.inf
    return KernelDistance(values.mean().item(), stderr, subsets, m)


def precision_recall(real, fake, *, k: int = 3) -> tuple[float, float]:
    """(precision, recall) by k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019)."""
    real, fake = _features(real, "real"), _features(fake, "fake")

    def inside(support: torch.Tensor, query: torch.Tensor) -> float:
        radii = torch.cdist(support, support).kthvalue(k + 1, dim=1).values  # the k-th neighbour, not itself
        return (torch.cdist(query, support) <= radii).any(1).double().mean().item()

    return inside(real, fake), inside(fake, real)


def draw(model, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` samples of ``model``; a conditional model (``y_dim`` set, a CVAE) draws them for
    ``labels`` (cycled), or for its classes in turn when None."""
    if model.y_dim is None:
        return model.sample(n)
    labels = torch.arange(model.y_dim) if labels is None else labels
    return model.sample(n, labels[torch.arange(n) % len(labels)])


def sample_quality(model, real, n: int, *, grey: bool = False, seed: int = 0, labels=None) -> dict:
    """Scores of ``n`` samples of a model of 28x28 digits against the real rows ``real`` (N, 784),
    in the shipped digit classifier's feature space: FID, KID (with its standard error, over
    subsets of half the samples), precision and recall, and ``largest_class_share``, the share
    of samples in the classifier's most frequent class (near 0.1 for all ten digits).

    ``grey`` says the pixels are 8-bit levels 0..255 (divided by 255 here); samples are clamped
    to [0, 1]. A conditional model samples for the real rows' ``labels``, so that both sets hold
    the classes in the same shares. Drawn with ``seed``; the global random state is left as it was.
    """
    scale = 255.0 if grey else 1.0
    with torch.random.fork_rng(devices=[model.device.index or 0] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        samples = (draw(model, n, labels).detach().cpu().float() / scale).clamp(0, 1)
        real = real[:max(n, 2)].float() / scale
        fake_features, real_features = digit_features(samples), digit_features(real)  # the first builds the net
    # subsets of half the samples: subsets as large as the sample set would all be the same set (s.e. 0)
    kid = kernel_distance(real_features, fake_features, subsets=10, subset_size=max(2, min(len(real), n, 1000) // 2),
                          seed=seed)
    precision, recall = precision_recall(real_features, fake_features)
    spread = label_spread(samples)
    return {"samples": n, "fid": frechet_distance(real_features, fake_features), "kid": kid.mean,
            "kid_stderr": kid.stderr, "precision": precision, "recall": recall,
            "largest_class_share": spread.max().item()}
