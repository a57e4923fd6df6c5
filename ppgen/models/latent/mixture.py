"""Finite mixtures with the component enumerated exactly: Bernoulli and Gaussian components."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, check_data, num_rows

__all__ = ["BernoulliMixture", "GaussianMixture", "kmeans_plus_plus"]

COVARIANCES = ("diag", "full")


class _Mixture(GenerativeModel):
    """Shared story: c ~ Categorical(pi), x | c ~ p_c. Subclasses give the component densities.

    The model marks ``c`` for parallel enumeration, so ``fit`` (its default estimator is then
    ``"enum"``, ``TraceEnum_ELBO``) sums it out exactly and the guide stays empty; the ELBO then
    *is* the log-likelihood. Gradient steps from random parameters are slow to separate the
    components: start from :meth:`initialize` (k-means), or run EM directly with :meth:`fit_mle`.
    """

    has_exact_likelihood = True

    def __init__(self, dim: int, k: int):
        super().__init__(dim)
        self.k = positive_int(k, "k")
        self.weight_logits = nn.Parameter(torch.zeros(k))

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            c = pyro.sample("c", dist.Categorical(logits=self.weight_logits), infer={"enumerate": "parallel"})
            return pyro.sample("x", self.component(c), obs=x)

    def component(self, c: torch.Tensor) -> dist.TorchDistribution:
        """p(x | c) for component indices ``c`` (any shape), event shape (dim,)."""
        raise NotImplementedError

    @property
    def weights(self) -> torch.Tensor:
        """Mixing proportions pi, shape (k,)."""
        return torch.softmax(self.weight_logits, -1).detach()

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_c + log p(x_n | c) for every row and component, shape (N, k)."""
        x = self.check_data(x)
        components = self.component(torch.arange(self.k, device=x.device))  # batch (k,)
        return torch.log_softmax(self.weight_logits, -1) + components.log_prob(x.unsqueeze(-2))

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) = logsumexp_c (log pi_c + log p(x | c)), shape (N,)."""
        return torch.logsumexp(self.joint_log_prob(x), -1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior p(c | x) by Bayes' rule, shape (N, k); rows sum to 1."""
        return torch.softmax(self.joint_log_prob(x), -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The representation of a row: its component posterior p(c | x), shape (N, k)."""
        return self.predict(x)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, *, iters: int = 10, seed: int = 0) -> "_Mixture":
        """Set the parameters from k-means on ``x`` (k-means++ seeding, then Lloyd steps).

        Components start at the cluster statistics and the weights at the cluster sizes, the
        usual start for EM; SVI from there reaches EM's optimum. Returns the model.
        """
        x = self.check_data(x)
        if x.shape[0] < self.k:
            raise ValueError(f"x has {x.shape[0]} rows, fewer than k={self.k} components")
        centers = kmeans_plus_plus(x, self.k, seed=seed)
        for _ in range(iters):
            labels = torch.cdist(x, centers).argmin(-1)
            for c in range(self.k):
                if (labels == c).any():
                    centers[c] = x[labels == c].mean(0)
        resp = F.one_hot(torch.cdist(x, centers).argmin(-1), self.k).to(x.dtype)  # (N, k)
        counts = resp.sum(0) + 1e-3
        self.weight_logits.copy_((counts / counts.sum()).log())
        self._set_components(x, resp, counts)
        return self

    @torch.no_grad()
    def fit_mle(self, x: torch.Tensor, *, max_iter: int = 1000, tol: float = 1e-8, seed: int = 0) -> "_Mixture":
        """Maximum likelihood by expectation-maximisation (Dempster, Laird & Rubin 1977), from k-means.

        E-step: responsibilities r_nc = p(c | x_n); M-step: weights, then each component from the
        r-weighted rows. Stops when the mean log-likelihood rises by less than ``tol`` nats per row.
        Returns the model.
        """
        x = self.check_data(x)
        self.initialize(x, seed=seed)
        previous = -math.inf
        for _ in range(max_iter):
            joint = self.joint_log_prob(x)  # (N, k)
            log_lik = torch.logsumexp(joint, -1).mean().item()
            if log_lik - previous < tol:
                break
            previous = log_lik
            resp = torch.softmax(joint, -1)
            counts = resp.sum(0) + 1e-10
            self.weight_logits.copy_((counts / counts.sum()).log())
            self._set_components(x, resp, counts)
        return self

    def _set_components(self, x: torch.Tensor, resp: torch.Tensor, counts: torch.Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.x_dim}, k={self.k}"


class BernoulliMixture(_Mixture):
    r"""Mixture of k fully factorised Bernoulli distributions over binary vectors.

    Generative story, for each row n:

    .. math::
        c_n \sim \mathrm{Categorical}(\pi), \qquad
        x_{nd} \mid c_n \sim \mathrm{Bernoulli}(\sigma(\ell_{c_n d})), \qquad
        \log p(x) = \log \sum_c \pi_c \prod_d \sigma(\ell_{cd})^{x_d} (1 - \sigma(\ell_{cd}))^{1 - x_d}.

    Parameters: ``k`` mixing logits and ``k * dim`` component logits. ``c`` is enumerated
    exactly (train with ``fit(..., elbo="enum")``).

    References: C. M. Bishop, "Pattern Recognition and Machine Learning", 2006, section 9.3.3.

    Examples
    --------
    >>> mixture = BernoulliMixture(2, k=3)
    >>> every_vector = torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]])
    >>> round(mixture.log_prob(every_vector).exp().sum().item(), 6)
    1.0
    >>> mixture.predict(every_vector).shape
    torch.Size([4, 3])
    """

    data_support = "binary"

    def __init__(self, dim: int, k: int):
        super().__init__(dim, k)
        self.logits = nn.Parameter(0.1 * torch.randn(k, dim))  # random: equal components never separate

    def component(self, c: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.logits[c], validate_args=False).to_event(1)

    def joint_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log pi_c + x . log sigma(l_c) + (1 - x) . log sigma(-l_c), shape (N, k): two matrix products,
        where the components' broadcast log-densities (N, k, D) take some 30 times longer on images."""
        x = self.check_data(x)
        return (torch.log_softmax(self.weight_logits, -1) + x @ F.logsigmoid(self.logits).T
                + (1 - x) @ F.logsigmoid(-self.logits).T)

    @property
    def probs(self) -> torch.Tensor:
        """P(x_d = 1 | c), shape (k, dim)."""
        return torch.sigmoid(self.logits).detach()

    def _set_components(self, x, resp, counts):
        probs = (resp.T @ x + 1.0) / (counts.unsqueeze(-1) + 2.0)  # Beta(2, 2) MAP: no 0 or 1
        self.logits.copy_(torch.logit(probs))


class GaussianMixture(_Mixture):
    r"""Mixture of k Gaussians with diagonal or full covariances.

    Generative story, for each row n:

    .. math::
        c_n \sim \mathrm{Categorical}(\pi), \qquad
        x_n \mid c_n \sim \mathcal{N}(\mu_{c_n}, \Sigma_{c_n}), \qquad
        \log p(x) = \log \sum_c \pi_c\, \mathcal{N}(x; \mu_c, \Sigma_c),

    with :math:`\Sigma_c = \mathrm{diag}(s_c^2)` (``covariance="diag"``) or
    :math:`\Sigma_c = L_c L_c^\top` with a lower-triangular Cholesky factor whose diagonal
    is positive (``"full"``).

    Parameters: ``k`` mixing logits, ``k * dim`` means, and ``k * dim`` log-scales (diag) or
    ``k * dim (dim + 1) / 2`` Cholesky entries (full). ``c`` is enumerated exactly (train with
    ``fit(..., elbo="enum")``); start from :meth:`initialize` (k-means) as EM does.

    References: C. M. Bishop, "Pattern Recognition and Machine Learning", 2006, section 9.2.

    Examples
    --------
    >>> gmm = GaussianMixture(2, k=3, covariance="full")
    >>> gmm.num_parameters  # 3 + 3 * 2 + 3 * 3
    18
    >>> gmm.sample(5).shape
    torch.Size([5, 2])
    """

    data_support = "real"

    def __init__(self, dim: int, k: int, covariance: str = "diag"):
        super().__init__(dim, k)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        self.covariance = covariance
        self.loc = nn.Parameter(torch.randn(k, dim))
        self.log_scale = nn.Parameter(torch.zeros(k, dim))  # the diagonal of L (full) or the scales (diag)
        if covariance == "full":
            self.off_diagonal = nn.Parameter(torch.zeros(k, dim * (dim - 1) // 2))
            self.register_buffer("tril_index", torch.tril_indices(dim, dim, -1), persistent=False)

    def scale_tril(self) -> torch.Tensor:
        """Cholesky factors L_c of the covariances, shape (k, dim, dim)."""
        tril = torch.diag_embed(self.log_scale.exp())
        if self.covariance == "full":
            rows, cols = self.tril_index
            tril[:, rows, cols] = self.off_diagonal
        return tril

    @property
    def covariance_matrix(self) -> torch.Tensor:
        """Sigma_c, shape (k, dim, dim)."""
        tril = self.scale_tril().detach()
        return tril @ tril.transpose(-1, -2)

    def component(self, c: torch.Tensor) -> dist.TorchDistribution:
        if self.covariance == "diag":
            return dist.Normal(self.loc[c], self.log_scale.exp()[c]).to_event(1)
        return dist.MultivariateNormal(self.loc[c], scale_tril=self.scale_tril()[c])

    def _set_components(self, x, resp, counts):
        self.loc.copy_((resp.T @ x) / counts.unsqueeze(-1))
        centred = x.unsqueeze(0) - self.loc.unsqueeze(1)  # (k, N, dim)
        weighted = resp.T.unsqueeze(-1) * centred
        floor = 1e-3 * x.var(0).mean()  # keeps a one-point cluster's covariance invertible
        if self.covariance == "diag":
            var = (weighted * centred).sum(1) / counts.unsqueeze(-1) + floor
            self.log_scale.copy_(0.5 * var.log())
            return
        cov = weighted.transpose(1, 2) @ centred / counts.view(-1, 1, 1)
        tril = torch.linalg.cholesky(cov + floor * torch.eye(self.x_dim, dtype=x.dtype, device=x.device))
        self.log_scale.copy_(torch.diagonal(tril, dim1=-2, dim2=-1).log())
        rows, cols = self.tril_index
        self.off_diagonal.copy_(tril[:, rows, cols])

    def extra_repr(self) -> str:
        return f"dim={self.x_dim}, k={self.k}, covariance={self.covariance!r}"


def kmeans_plus_plus(x: torch.Tensor, k: int, *, seed: int = 0) -> torch.Tensor:
    """k rows of ``x`` chosen by k-means++ seeding (Arthur & Vassilvitskii 2007), shape (k, D).

    The first centre is a uniform draw; each next one is drawn with probability proportional
    to the squared distance to the nearest centre chosen so far.
    """
    x = check_data(x)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(x.shape[0], (1,), generator=generator).item()
    centers = [x[first]]
    nearest = ((x - x[first]) ** 2).sum(-1)
    for _ in range(1, k):
        weights = nearest.cpu().double()
        if weights.sum() <= 0 or not math.isfinite(weights.sum().item()):
            weights = torch.ones_like(weights)
        pick = torch.multinomial(weights, 1, generator=generator).item()
        centers.append(x[pick])
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(-1))
    return torch.stack(centers).clone()
