r"""Bayesian classifiers: a generative one (naive Bayes) and a discriminative one (logistic regression).

Ng & Jordan (2002) compared the pair: naive Bayes, which models p(x, y), approaches its
(higher) asymptotic error with O(log D) training examples; logistic regression, which models
only p(y | x), needs O(D) examples but reaches the lower asymptotic error. Both are Bayesian
here, with a posterior over their parameters, so that their predictions average over it.

References: A. Y. Ng, M. I. Jordan, "On Discriminative vs. Generative classifiers: A comparison
of logistic regression and naive Bayes", NeurIPS 2002.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.ops.indexing import Vindex

from ppgen.checks import positive_int
from ppgen.data import load_dataset
from ppgen.models.base import DATA_PLATE, GenerativeModel, check_data, num_rows

__all__ = ["NaiveBayes", "BayesianLogisticRegression", "digit_pair"]


class NaiveBayes(GenerativeModel):
    r"""Bayesian naive Bayes for binary features: a generative classifier p(x, y).

    Generative story, for C classes and D binary features:

    .. math::
        \pi \sim \mathrm{Dirichlet}(\alpha \mathbf{1}_C), \quad
        \theta_{c,j} \sim \mathrm{Beta}(a, b), \quad
        y_n \sim \mathrm{Categorical}(\pi), \quad
        x_{n,j} \mid y_n \sim \mathrm{Bernoulli}(\theta_{y_n, j}).

    Both priors are conjugate: given labelled rows the posterior is
    :math:`\mathrm{Dirichlet}(\alpha + n_c)` and :math:`\mathrm{Beta}(a + n_{c,j}, b + n_c - n_{c,j})`
    with class counts :math:`n_c` and feature counts :math:`n_{c,j}` (:meth:`condition_on`).
    The posterior predictive of a new row is then closed form (:meth:`log_predictive`):
    :math:`p(x, y = c \mid \mathcal{D}) = \bar\pi_c \prod_j \bar\theta_{c,j}^{x_j}(1 - \bar\theta_{c,j})^{1 - x_j}`
    with the posterior means :math:`\bar\pi, \bar\theta`, because the parameters are independent
    a posteriori and each enters the likelihood of one row once. The guide is that exact
    posterior; ``model`` is the Pyro program (sites ``"pi"``, ``"theta"``, ``"y"``, ``"x"``).
    :meth:`log_prob` (and so :func:`ppgen.log_likelihood`, ``method="exact"``) scores new rows by that
    posterior predictive: :math:`\log p(x, y \mid \mathcal{D})` given labels, and without them
    :math:`\log p(x \mid \mathcal{D}) = \log \sum_c p(x, y = c \mid \mathcal{D})`, row by row (each row
    integrates the parameters out on its own; the rows are not scored jointly).
    Parameters: none trained; C - 1 + C D posterior concentrations.

    References: Ng & Jordan (2002); K. P. Murphy, "Machine Learning: A Probabilistic
    Perspective" (2012), section 3.5.

    Parameters
    ----------
    x_dim : int
        Number of binary features D.
    num_classes : int
        C.
    alpha, a, b : float
        Prior concentrations.
    """

    has_exact_likelihood = True

    def __init__(self, x_dim: int, num_classes: int = 2, alpha: float = 1.0, a: float = 1.0, b: float = 1.0):
        super().__init__(x_dim)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        for value, name in ((alpha, "alpha"), (a, "a"), (b, "b")):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.num_classes = num_classes
        self.prior = (float(alpha), float(a), float(b))
        self.register_buffer("post_alpha", torch.full((num_classes,), float(alpha)))
        self.register_buffer("post_a", torch.full((num_classes, x_dim), float(a)))
        self.register_buffer("post_b", torch.full((num_classes, x_dim), float(b)))

    def model(self, x=None, y=None, *, size=None):
        alpha, a, b = self.prior
        pi = pyro.sample("pi", dist.Dirichlet(self.post_alpha.new_full((self.num_classes,), alpha)))
        prior = dist.Beta(torch.full_like(self.post_a, a), torch.full_like(self.post_b, b))  # on the model's device
        theta = pyro.sample("theta", prior.to_event(2))
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)):
            y = pyro.sample("y", dist.Categorical(pi), obs=y)
            return pyro.sample("x", dist.Bernoulli(Vindex(theta)[..., y, :]).to_event(1), obs=x)  # (..., N, D)

    def guide(self, x=None, y=None, *, size=None):
        """The exact posterior given the rows of :meth:`condition_on` (the prior before)."""
        pyro.sample("pi", dist.Dirichlet(self.post_alpha))
        pyro.sample("theta", dist.Beta(self.post_a, self.post_b).to_event(2))

    def condition_on(self, x: torch.Tensor, y: torch.Tensor) -> "NaiveBayes":
        """Set the posterior to the conjugate update on labelled rows ``(x, y)``; returns self."""
        x = self.check_data(x)
        y = _check_labels(y, x.shape[0], self.num_classes)
        alpha, a, b = self.prior
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)  # (N, C)
        counts, ones = onehot.sum(0), onehot.T @ x          # (C,), (C, D)
        self.post_alpha.copy_(alpha + counts)
        self.post_a.copy_(a + ones)
        self.post_b.copy_(b + counts[:, None] - ones)
        return self

    @torch.no_grad()
    def sample(self, n: int, y=None) -> torch.Tensor:
        r"""``n`` rows from the posterior predictive, shape (n, x_dim): each row's
        :math:`y \sim \mathrm{Categorical}(\bar\pi)` (or the labels ``y``: an int or ``n`` of them) and
        :math:`x_j \mid y \sim \mathrm{Bernoulli}(\bar\theta_{y,j})`, the model's story with the posterior
        means of :meth:`condition_on` (the prior's before). Each row is an exact draw of p(x, y | D); the
        rows are drawn independently, not under one shared draw of the parameters."""
        n = positive_int(n, "n")
        theta = self.post_a / (self.post_a + self.post_b)  # (C, D)
        if y is None:
            y = dist.Categorical(self.post_alpha / self.post_alpha.sum()).sample((n,))
        elif isinstance(y, int) and not isinstance(y, bool):
            y = _check_labels(torch.full((n,), y, device=theta.device), n, self.num_classes)
        else:
            y = _check_labels(y, n, self.num_classes).to(theta.device)
        return torch.bernoulli(theta[y])

    def log_predictive(self, x: torch.Tensor) -> torch.Tensor:
        r"""Closed-form posterior predictive :math:`\log p(x, y = c \mid \mathcal{D})`, shape (N, C)."""
        x = self.check_data(x)
        log_pi = self.post_alpha.log() - self.post_alpha.sum().log()
        total = self.post_a + self.post_b
        log_on, log_off = self.post_a.log() - total.log(), self.post_b.log() - total.log()  # (C, D)
        return log_pi + x @ log_on.T + (1 - x) @ log_off.T

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        r"""Exact posterior predictive per row, shape (N,): :math:`\log p(x, y \mid \mathcal{D})` given
        labels ``y``, :math:`\log p(x \mid \mathcal{D})` (summed over the classes) without."""
        joint = self.log_predictive(x)  # (N, C)
        if y is None:
            return joint.logsumexp(-1)
        y = _check_labels(y, joint.shape[0], self.num_classes).to(joint.device)
        return joint.gather(-1, y[:, None]).squeeze(-1)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior predictive class probabilities p(y = c | x, D), shape (N, C)."""
        return self.log_predictive(x).softmax(-1)

    def loo_conditional(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Exact leave-one-out :math:`\log p(y_n \mid x_n, \mathcal{D}_{-n})` for the rows
        :math:`\mathcal{D} = (x, y)`, shape (N,).

        The conjugate posterior without row n is the one with row n's counts taken out, so the
        leave-one-out predictive needs no refitting and no importance sampling. It scores the
        labels given the features, p(y | x), the quantity a discriminative classifier's LOO
        scores, so the two can be compared (summed, it is the elpd of ``arviz.loo``).
        """
        x = self.check_data(x)
        y = _check_labels(y, x.shape[0], self.num_classes)
        alpha, a, b = self.prior
        onehot = F.one_hot(y, self.num_classes).to(x.dtype)      # (N, C)
        counts, ones = onehot.sum(0), onehot.T @ x               # (C,), (C, D)
        own = onehot[:, :, None]                                  # (N, C, 1): row n's class
        alpha_n = alpha + counts - onehot                         # (N, C)
        on_n = a + ones - own * x[:, None, :]                     # (N, C, D)
        off_n = b + counts[:, None] - ones - own * (1 - x[:, None, :])
        log_on, log_off = (on_n / (on_n + off_n)).log(), (off_n / (on_n + off_n)).log()
        log_joint = (alpha_n.log() - alpha_n.sum(-1, keepdim=True).log()
                     + (x[:, None, :] * log_on + (1 - x[:, None, :]) * log_off).sum(-1))  # (N, C)
        return log_joint.log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, num_classes={self.num_classes}"


class BayesianLogisticRegression:
    r"""Bayesian logistic regression: a discriminative classifier p(y | x).

    Generative story for the labels, given features :math:`x_n \in \mathbb{R}^D`:

    .. math::
        w \sim \mathcal{N}(0, \sigma^2 I_D), \quad b \sim \mathcal{N}(0, \sigma^2), \quad
        y_n \mid x_n, w, b \sim \mathrm{Bernoulli}(\mathrm{sigmoid}(w^\top x_n + b)).

    ``model(x, y)`` is the Pyro program (labels ``y`` 0/1, integer or float; sites ``"w"``, ``"b"``, ``"y"`` in the ``"data"`` plate),
    for NUTS (:func:`ppgen.inference.posterior.run_nuts`) or SVI
    (``ppgen.fit(clf.model, (x, y), guide="auto_normal")``). :meth:`map_estimate` finds the
    posterior mode (L2-regularised logistic regression) by L-BFGS. D + 1 parameters.

    References: Ng & Jordan (2002); C. M. Bishop, "Pattern Recognition and Machine Learning"
    (2006), section 4.5.

    Parameters
    ----------
    x_dim : int
    prior_scale : float
        :math:`\sigma`.
    """

    def __init__(self, x_dim: int, prior_scale: float = 1.0):
        positive_int(x_dim, "x_dim")
        if isinstance(prior_scale, bool) or not isinstance(prior_scale, (int, float)) or not prior_scale > 0:
            raise ValueError(f"prior_scale must be a positive number, got {prior_scale!r}")
        self.x_dim, self.prior_scale = x_dim, float(prior_scale)

    def model(self, x, y=None):
        w = pyro.sample("w", dist.Normal(x.new_zeros(self.x_dim), self.prior_scale).to_event(1))
        b = pyro.sample("b", dist.Normal(x.new_zeros(()), self.prior_scale))
        with pyro.plate(DATA_PLATE, x.shape[0]):
            logits = (x * w).sum(-1) + b  # w (..., 1, D) under an outer plate: logits (..., N)
            return pyro.sample("y", dist.Bernoulli(logits=logits), obs=None if y is None else y.to(x.dtype))

    def map_estimate(self, x: torch.Tensor, y: torch.Tensor, max_iter: int = 200) -> dict[str, torch.Tensor]:
        """Posterior mode ``{"w": (D,), "b": ()}`` by L-BFGS on the negative log posterior."""
        x = check_data(x, dim=self.x_dim)
        y = _check_labels(y, x.shape[0], 2).to(x.dtype)
        params = x.new_zeros(self.x_dim + 1).requires_grad_()
        optimizer = torch.optim.LBFGS([params], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = x @ params[:-1] + params[-1]
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") \
                + params.square().sum() / (2 * self.prior_scale**2)
            loss.backward()
            return loss

        optimizer.step(closure)
        params = params.detach()
        return {"w": params[:-1], "b": params[-1]}

    def predict_proba(self, x: torch.Tensor, posterior: dict[str, torch.Tensor]) -> torch.Tensor:
        """p(y = 1 | x) averaged over posterior draws ``{"w": (S, D), "b": (S,)}`` (or one point), (N,)."""
        w, b = posterior["w"].reshape(-1, self.x_dim), posterior["b"].reshape(-1)
        return torch.sigmoid(x @ w.T + b).mean(-1)


def digit_pair(digits: tuple[int, int] = (3, 5), split: str = "train", pool: int = 2):
    """Rows of two digits from the embedded digits set, max-pooled to binary features.

    Returns ``x`` (N, (28 / pool)^2) of 0/1 floats and ``y`` (N,) int64 with 0 for
    ``digits[0]`` and 1 for ``digits[1]``.
    """
    if 28 % pool:
        raise ValueError(f"pool must divide 28, got {pool!r}")
    x, y = load_dataset("digits", split)
    rows = (y == digits[0]) | (y == digits[1])
    images = x[rows].reshape(-1, 1, 28, 28)
    pooled = F.max_pool2d(images, pool).flatten(1)  # (N, (28 / pool)^2)
    return pooled, (y[rows] == digits[1]).long()


def _check_labels(y, n: int, num_classes: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != (n,):
        raise ValueError(f"y must be an integer tensor of shape ({n},), got "
                         f"{type(y).__name__} {getattr(y, 'dtype', '')} {tuple(getattr(y, 'shape', ()))}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y must hold labels 0..{num_classes - 1}, found {int(y.min())}..{int(y.max())}")
    return y.long()
