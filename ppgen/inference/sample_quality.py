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

The feature network for digits (a small classifier shipped with ppgen) is still to come; these
functions take any features.

References: M. Heusel et al., NeurIPS 2017; M. Bińkowski et al., "Demystifying MMD GANs", ICLR
2018; T. Kynkäänniemi et al., "Improved precision and recall metric for assessing generative
models", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = ["frechet_distance", "frechet_distance_of_moments", "kernel_distance", "KernelDistance",
           "precision_recall"]


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
