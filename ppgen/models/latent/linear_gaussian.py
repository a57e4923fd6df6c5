"""Linear-Gaussian latent models: probabilistic PCA and factor analysis.

Both have a closed-form marginal likelihood and posterior, which makes them the reference
for checking variational and importance-sampled estimators.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.base import DATA_PLATE, GenerativeModel, num_rows

__all__ = ["PPCA", "FactorAnalysis"]


class _LinearGaussian(GenerativeModel):
    r"""z ~ N(0, I_q); x | z ~ N(W z + mu, Psi) with diagonal Psi; amortised linear guide.

    The guide :math:`q(z \mid x) = \mathcal{N}(A x + b, L L^\top)` has an input-independent
    Cholesky factor L, so it contains the exact posterior and the ELBO can reach log p(x).
    Subclasses say how Psi is parameterised (``noise_variance``).
    """

    has_exact_likelihood = True
    data_support = "real"

    def __init__(self, dim: int, latent_dim: int):
        super().__init__(dim)
        self.latent_dim = positive_int(latent_dim, "latent_dim")
        if latent_dim > dim:
            raise ValueError(f"latent_dim must be at most dim={dim}, got {latent_dim}")
        self.weight = nn.Parameter(torch.randn(dim, latent_dim) / dim**0.5)  # W (dim, q)
        self.loc = nn.Parameter(torch.zeros(dim))  # mu
        # guide q(z | x) = N(A x + b, L L^T)
        self.guide_weight = nn.Parameter(torch.zeros(latent_dim, dim))
        self.guide_bias = nn.Parameter(torch.zeros(latent_dim))
        self.guide_log_diag = nn.Parameter(torch.zeros(latent_dim))
        self.guide_off_diag = nn.Parameter(torch.zeros(latent_dim * (latent_dim - 1) // 2))
        self.register_buffer("tril_index", torch.tril_indices(latent_dim, latent_dim, -1), persistent=False)
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)

    def noise_variance(self) -> torch.Tensor:
        """The diagonal of Psi, shape (dim,)."""
        raise NotImplementedError

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            z = pyro.sample("z", dist.Normal(self.prior_loc, 1.0).to_event(1))
            mean = z @ self.weight.T + self.loc  # (..., N, dim)
            return pyro.sample("x", dist.Normal(mean, self.noise_variance().sqrt()).to_event(1), obs=x)

    def guide(self, x=None, y=None, *, size=None):
        if x is None:
            raise ValueError("the guide q(z | x) needs x")
        with pyro.plate(DATA_PLATE, x.shape[0]):
            loc = x @ self.guide_weight.T + self.guide_bias  # (N, q)
            return pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=self.guide_scale_tril()))

    def guide_scale_tril(self) -> torch.Tensor:
        """Cholesky factor L of the guide's covariance, shape (q, q)."""
        rows, cols = self.tril_index
        tril = torch.diag(self.guide_log_diag.exp())
        tril[rows, cols] = self.guide_off_diag
        return tril

    def marginal(self) -> dist.LowRankMultivariateNormal:
        """p(x) = N(mu, W W^T + Psi), in low-rank form."""
        return dist.LowRankMultivariateNormal(self.loc, self.weight, self.noise_variance())

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log N(x; mu, W W^T + Psi), shape (N,)."""
        return self.marginal().log_prob(self.check_data(x))

    @torch.no_grad()
    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""p(z | x) = N(M^{-1} W^T Psi^{-1} (x - mu), M^{-1}) with M = I + W^T Psi^{-1} W.

        Returns the means (N, q) and the shared covariance (q, q).
        """
        x = self.check_data(x)
        scaled = self.weight / self.noise_variance().unsqueeze(-1)  # Psi^{-1} W, (dim, q)
        precision = torch.eye(self.latent_dim, dtype=x.dtype, device=x.device) + self.weight.T @ scaled
        cov = torch.linalg.inv(precision)
        return (x - self.loc) @ scaled @ cov, cov

    @torch.no_grad()
    def set_guide_to_exact_posterior(self) -> bool:
        """Set the guide's A, b and L to the exact posterior's: then the ELBO equals log p(x).
        Returns True (the hook of :class:`~ppgen.models.base.GenerativeModel`)."""
        scaled = self.weight / self.noise_variance().unsqueeze(-1)
        cov = torch.linalg.inv(torch.eye(self.latent_dim, dtype=scaled.dtype, device=scaled.device)
                               + self.weight.T @ scaled)
        gain = cov @ scaled.T  # (q, dim)
        tril = torch.linalg.cholesky(cov)
        rows, cols = self.tril_index
        self.guide_weight.copy_(gain)
        self.guide_bias.copy_(-gain @ self.loc)
        self.guide_log_diag.copy_(torch.diagonal(tril).log())
        self.guide_off_diag.copy_(tril[rows, cols])
        return True

    def fit_mle(self, x: torch.Tensor, **options) -> "_LinearGaussian":
        """Set the parameters to their maximum-likelihood values on ``x`` (closed form or EM),
        and the guide to the exact posterior. Returns the model."""
        raise NotImplementedError

    @staticmethod
    def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (D,) and maximum-likelihood covariance (D, D) of the rows, in float64."""
        x = x.double()
        mean = x.mean(0)
        centred = x - mean
        return mean, centred.T @ centred / x.shape[0]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The guide's mean E_q[z | x], shape (N, q)."""
        return self.check_data(x) @ self.guide_weight.T + self.guide_bias

    def extra_repr(self) -> str:
        return f"dim={self.x_dim}, latent_dim={self.latent_dim}"


class PPCA(_LinearGaussian):
    r"""Probabilistic principal component analysis.

    Generative story, for each row n:

    .. math::
        z_n \sim \mathcal{N}(0, I_q), \qquad x_n \mid z_n \sim \mathcal{N}(W z_n + \mu, \sigma^2 I_D),
        \qquad p(x_n) = \mathcal{N}(x_n; \mu, W W^\top + \sigma^2 I_D).

    Model parameters: ``D q`` (W) + ``D`` (mu) + 1 (sigma); the linear guide
    :math:`q(z \mid x) = \mathcal{N}(A x + b, L L^\top)` adds ``q D + q + q (q + 1) / 2``
    (``num_parameters`` counts both). At the maximum likelihood W spans the top q principal
    directions of the data.

    References: M. E. Tipping and C. M. Bishop, "Probabilistic Principal Component Analysis",
    JRSS B 61(3), 1999.

    Examples
    --------
    >>> ppca = PPCA(5, latent_dim=2)
    >>> ppca.num_parameters  # model 10 + 5 + 1, guide 10 + 2 + 3
    31
    >>> mean, cov = ppca.exact_posterior(torch.zeros(4, 5))
    >>> mean.shape, cov.shape
    (torch.Size([4, 2]), torch.Size([2, 2]))
    """

    def __init__(self, dim: int, latent_dim: int):
        super().__init__(dim, latent_dim)
        self.log_noise_scale = nn.Parameter(torch.zeros(()))

    def noise_variance(self) -> torch.Tensor:
        return (2 * self.log_noise_scale).exp().expand(self.x_dim)

    @torch.no_grad()
    def fit_mle(self, x: torch.Tensor) -> "PPCA":
        r"""The closed-form maximum-likelihood estimate (Tipping & Bishop 1999, eqs. 7-8).

        With S the sample covariance and its eigenvalues :math:`\lambda_1 \ge \dots \ge \lambda_D`:
        :math:`\mu = \bar x`, :math:`\sigma^2 = \frac{1}{D - q} \sum_{j > q} \lambda_j` and
        :math:`W = U_q (\Lambda_q - \sigma^2 I)^{1/2}` (up to a rotation). Sets the guide to
        the exact posterior; returns the model.

        Examples
        --------
        >>> x = torch.randn(500, 2) @ torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]]) + 0.1 * torch.randn(500, 3)
        >>> ppca = PPCA(3, latent_dim=2).fit_mle(x)
        >>> bool(ppca.log_prob(x).mean() >= PPCA(3, latent_dim=2, seed=1).log_prob(x).mean())
        True
        """
        x = self.check_data(x)
        if self.latent_dim == self.x_dim:
            raise ValueError("PPCA's closed form needs latent_dim < dim (the noise variance is the mean of the "
                             "discarded eigenvalues)")
        mean, cov = self._moments(x)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        q = self.latent_dim
        noise = eigvals[q:].mean().clamp_min(1e-12)
        weight = eigvecs[:, :q] * (eigvals[:q] - noise).clamp_min(0).sqrt()
        self.loc.copy_(mean)
        self.weight.copy_(weight)
        self.log_noise_scale.copy_(0.5 * noise.log())
        self.set_guide_to_exact_posterior()
        return self


class FactorAnalysis(_LinearGaussian):
    r"""Factor analysis: PPCA with a separate noise variance per observed dimension.

    Generative story, for each row n:

    .. math::
        z_n \sim \mathcal{N}(0, I_q), \qquad x_n \mid z_n \sim \mathcal{N}(W z_n + \mu, \Psi),
        \quad \Psi = \mathrm{diag}(\psi_1, \dots, \psi_D), \qquad
        p(x_n) = \mathcal{N}(x_n; \mu, W W^\top + \Psi).

    Model parameters: ``D q`` + ``D`` + ``D`` (psi, through a softplus); the linear guide adds
    ``q D + q + q (q + 1) / 2`` (``num_parameters`` counts both).

    References: D. B. Rubin and D. T. Thayer, "EM algorithms for ML factor analysis",
    Psychometrika 47, 1982; C. M. Bishop, "Pattern Recognition and Machine Learning", 12.2.4.

    Examples
    --------
    >>> fa = FactorAnalysis(5, latent_dim=2)
    >>> fa.log_prob(torch.zeros(3, 5)).shape
    torch.Size([3])
    """

    def __init__(self, dim: int, latent_dim: int):
        super().__init__(dim, latent_dim)
        self.raw_noise = nn.Parameter(torch.full((dim,), 0.5413))  # softplus(0.5413) = 1

    def noise_variance(self) -> torch.Tensor:
        return F.softplus(self.raw_noise) + 1e-6

    @torch.no_grad()
    def fit_mle(self, x: torch.Tensor, *, max_iter: int = 10_000, tol: float = 1e-8) -> "FactorAnalysis":
        r"""Maximum likelihood by EM (Rubin & Thayer 1982), from the current W and Psi.

        With S the sample covariance and :math:`\beta = W^\top (W W^\top + \Psi)^{-1}`, each step
        sets :math:`W \leftarrow S \beta^\top (I - \beta W + \beta S \beta^\top)^{-1}` and
        :math:`\Psi \leftarrow \mathrm{diag}(S - W \beta S)`; the log-likelihood never decreases.
        Stops when it rises by less than ``tol`` nats per row. Sets the guide to the exact
        posterior; returns the model.
        """
        x = self.check_data(x)
        mean, cov = self._moments(x)
        weight = self.weight.double().clone()
        noise = self.noise_variance().double().clone()
        eye = torch.eye(self.latent_dim, dtype=torch.float64, device=weight.device)
        previous = -math.inf
        for _ in range(max_iter):
            marginal = weight @ weight.T + torch.diag(noise)
            beta = torch.linalg.solve(marginal, weight).T  # W^T (W W^T + Psi)^{-1}, (q, D)
            log_lik = dist.MultivariateNormal(torch.zeros_like(mean), marginal).log_prob(
                torch.zeros_like(mean)).item() - 0.5 * torch.trace(torch.linalg.solve(marginal, cov)).item()
            if log_lik - previous < tol:
                break
            previous = log_lik
            weight = cov @ beta.T @ torch.linalg.inv(eye - beta @ weight + beta @ cov @ beta.T)
            noise = torch.diagonal(cov - weight @ beta @ cov).clamp_min(1e-6)
        self.loc.copy_(mean)
        self.weight.copy_(weight)
        self.raw_noise.copy_(torch.log(torch.expm1((noise - 1e-6).clamp_min(1e-7))))
        self.set_guide_to_exact_posterior()
        return self
