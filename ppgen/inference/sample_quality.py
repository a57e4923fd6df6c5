r"""Sample quality in a feature space: Fréchet distance, kernel distance, precision and recall.

Given features of real rows and of samples (the activations of a network, or the rows themselves
for small data):

- :func:`frechet_distance` (FID when the features are Inception's; Heusel et al. 2017) fits a
  Gaussian to each set: :math:`\lVert \mu_r - \mu_g \rVert^2 + \mathrm{Tr}(\Sigma_r + \Sigma_g
  - 2 (\Sigma_r^{1/2} \Sigma_g \Sigma_r^{1/2})^{1/2})`; biased for small sets.
- :func:`kernel_distance` (KID; Bińkowski et al. 2018): the unbiased estimate of the squared MMD
  with the kernel :math:`k(a, b) = (a^\top b / d + 1)^3`, averaged over subsets, with its standard
  error; its mean is 0 when both sets come from one distribution.
- :func:`precision_recall` (Kynkäänniemi et al. 2019): each real row's ball reaches its k-th
  nearest real neighbour (k = 3), and their union is the real manifold; precision is the fraction
  of samples inside it (are samples realistic?), recall the fraction of real rows inside the
  samples' manifold, made the same way (is the data covered?).

For 28x28 digits the feature network is :class:`DigitClassifier`, a small CNN whose weights ship
with ppgen (``ppgen/data/digit_classifier.pt``, re-derived by ``scripts/train_digit_classifier.py``):
:func:`digit_features` gives its 64-unit feature layer (FID, KID), and :func:`label_spread` the
histogram of its predicted labels over samples (a collapsed model puts most samples in few classes).

Precision and recall are measured in other features of the same network,
:func:`manifold_features`: the 64 feature units *before* their ReLU, beside the channel means of
both convolutions (how strongly each stroke and part detector fires), each block divided by its
mean norm over the real rows so that all count. In the 64 ReLU features alone, a classifier
trained on digits only maps noise onto the ReLUs' zero faces, next to faint or odd real digits
whose 3rd neighbour is far, and a few such balls swallowed most noise samples (precision 0.64 for
salt noise as dense as a digit's ink, 0.79 for uniform grey pixels, 0.97 for independent pixels at
the digits' frequencies, on 500 rows; the radii and k were right). In these features all three
land outside (precision 0.00 to 0.02) while held-out real digits keep about 0.88 of both
(``tests/test_sample_quality.py``).

:func:`sample_quality` scores a model's samples of digits with all of them (what ``ppgen
evaluate`` reports), beside the same scores for real rows against real rows of another split, as
many as the samples: the floor that a perfect model would reach, since FID and KID are biased for
finite sets and k-NN precision and recall stay below 1.

References: M. Heusel et al., NeurIPS 2017; M. Bińkowski et al., "Demystifying MMD GANs", ICLR
2018; T. Kynkäänniemi et al., "Improved precision and recall metric for assessing generative
models", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from pathlib import Path

import torch
from torch import nn

from ppgen.inference.progress import Progress

__all__ = ["frechet_distance", "frechet_distance_of_moments", "kernel_distance", "KernelDistance",
           "precision_recall", "DigitClassifier", "digit_classifier", "digit_features", "manifold_features",
           "digit_precision_recall", "label_spread", "sample_quality", "draw"]

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
def manifold_features(x, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three blocks that precision and recall measure (N, 784) digits in: the channel means of the
    classifier's two convolutions after their ReLU and pooling, (N, 32) and (N, 64), how strongly each
    stroke and part detector fires, and its 64 feature units before their ReLU, (N, 64), what it makes
    of the digit. :func:`digit_precision_recall` scales each block by its mean norm over the real rows."""
    x, net = _digits(x, "x"), digit_classifier()
    blocks = []
    for chunk in x.split(batch_size):
        first = net.body[:3](chunk.reshape(-1, 1, 28, 28))  # conv, ReLU, pool: (B, 32, 14, 14)
        second = net.body[3:6](first)  # (B, 64, 7, 7)
        blocks.append((first.mean((2, 3)), second.mean((2, 3)), net.body[6:-1](second)))  # flatten, linear
    return tuple(torch.cat(block) for block in zip(*blocks))


@torch.no_grad()
def digit_precision_recall(real, fake, *, k: int = 3) -> tuple[float, float]:
    """:func:`precision_recall` of (N, 784) digits (pixels in [0, 1]) in :func:`manifold_features`,
    each block divided by its mean norm over ``real`` so that all three count alike."""
    real_blocks = manifold_features(real)
    scales = [block.norm(dim=1).mean() for block in real_blocks]

    def joined(blocks):
        return torch.cat([block / scale for block, scale in zip(blocks, scales)], 1)

    return precision_recall(joined(real_blocks), joined(manifold_features(fake)), k=k)


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
    r"""(precision, recall) by k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019).

    With :math:`r_k(a)` the distance from a row a of a set A to its k-th nearest other row of A, the
    manifold of A is :math:`\bigcup_{a \in A} B(a, r_k(a))`; precision is the share of ``fake`` rows
    inside the manifold of ``real``, recall the share of ``real`` rows inside the manifold of
    ``fake``. Copies of one row have radius 0, so their recall is the share of real rows equal to it.
    """
    real, fake = _features(real, "real"), _features(fake, "fake")

    def inside(support: torch.Tensor, query: torch.Tensor) -> float:
        radii = torch.cdist(support, support).kthvalue(k + 1, dim=1).values  # the k-th neighbour, not itself
        return (torch.cdist(query, support) <= radii).any(1).double().mean().item()

    return inside(real, fake), inside(fake, real)


def draw(model, n: int, labels: torch.Tensor | None = None, progress=None) -> torch.Tensor:
    """``n`` samples of ``model``; a conditional model (``y_dim`` set, a CVAE) draws them for
    ``labels`` (cycled), or for its classes in turn when None. ``progress(done, total)`` is passed
    to a model whose ``sample`` reports its steps (the diffusion models' reverse chain, an energy
    model's MCMC)."""
    reports = progress is not None and "progress" in inspect.signature(model.sample).parameters
    options = {"progress": progress} if reports else {}
    if model.y_dim is None:
        return model.sample(n, **options)
    labels = torch.arange(model.y_dim) if labels is None else labels
    return model.sample(n, labels[torch.arange(n) % len(labels)], **options)


def sample_quality(model, real, n: int, *, grey: bool = False, seed: int = 0, labels=None,
                   reference=None, progress: bool = False) -> dict:
    """Scores of ``n`` samples of a model of 28x28 digits against the real rows ``real`` (N, 784),
    and of real rows of another split against them (the floor, under ``"real_vs_real"``). ``model``
    is a model to draw from, or a tensor of rows already drawn (its first ``n`` are scored).

    The scores: FID and KID (with its standard error, over subsets of half the samples) in the
    shipped digit classifier's features, precision and recall (k = 3) in :func:`manifold_features`,
    and ``largest_class_share``, the share of samples in the classifier's most frequent class (near
    0.1 for all ten digits). The real rows scored are n of ``real`` drawn at random (all of them, in
    their order, when n >= N), not its first n: a split may be stored in an order, as the static
    binarized MNIST's test rows are, sorted by class, whose first 1,000 are all zeros and ones. The
    floor compares n rows drawn at random from ``reference`` (all of them when it holds no more;
    default: the rows of ``real`` not drawn), real rows the model did not draw, with the same real
    rows and features: what a model that draws the data's own distribution would score at this n.

    ``grey`` says the pixels are 8-bit levels 0..255 (divided by 255 here); samples are clamped
    to [0, 1]. A conditional model samples for the drawn real rows' ``labels``, so that both sets
    hold the classes in the same shares. Drawn with ``seed`` (the rows' choice from a generator of
    its own, so that a model's samples do not depend on it); the global random state is left as it was.
    ``progress``: print a sampler's progress when it takes more than a few seconds (:class:`Progress`).
    """
    scale = 255.0 if grey else 1.0
    choice = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(real), generator=choice)
    reference = real[order[n:]] if reference is None else torch.as_tensor(reference)
    if len(reference) < 2:
        raise ValueError(f"reference must hold at least 2 real rows (of another split) for the real-vs-real floor, "
                         f"got {len(reference)}" + (" (real has no rows beyond the n drawn)" if len(real) <= n else ""))
    drawn = isinstance(model, torch.Tensor)
    if drawn and (model.dim() != 2 or len(model) < n):
        raise ValueError(f"samples given as a tensor must be rows (N, D) with N >= n={n}, got shape "
                         f"{tuple(model.shape)}")
    with torch.random.fork_rng(devices=[model.device.index or 0] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        chosen = order[:max(n, 2)] if len(real) > max(n, 2) else torch.arange(len(real))  # all: as they are
        samples = model[:n] if drawn else draw(model, n, None if labels is None else labels[chosen],
                                                  Progress(f"drawing {n:,} samples", "steps") if progress else None)
        samples = (samples.detach().cpu().float() / scale).clamp(0, 1)
        real = real[chosen].float() / scale
        if len(reference) > max(n, 2):
            reference = reference[torch.randperm(len(reference), generator=choice)[:max(n, 2)]]
        reference = reference.float() / scale
        real_features = digit_features(real)  # builds the net (its initialisation draws)
    return {"samples": n, **_scores(real, real_features, samples, seed),
            "real_vs_real": {"rows": len(reference), **_scores(real, real_features, reference, seed)}}


def _scores(real: torch.Tensor, real_features: torch.Tensor, rows: torch.Tensor, seed: int) -> dict:
    """FID, KID, precision, recall and the largest class share of the digits ``rows`` against ``real``."""
    features = digit_features(rows)
    # subsets of half the rows: subsets as large as the sets would all be the same set (s.e. 0)
    kid = kernel_distance(real_features, features, subsets=10, subset_size=max(2, min(len(real), len(rows), 1000) // 2),
                          seed=seed)
    precision, recall = digit_precision_recall(real, rows)
    return {"fid": frechet_distance(real_features, features), "kid": kid.mean, "kid_stderr": kid.stderr,
            "precision": precision, "recall": recall, "largest_class_share": label_spread(rows).max().item()}
