r"""Learning CPTs from data: family counts, maximum likelihood, and EM when entries are missing.

Complete rows give the maximum-likelihood CPTs in closed form, normalised family counts. Rows
with missing entries need expectation-maximisation (Dempster, Laird and Rubin 1977): the E-step
replaces the counts by their expectation given the observed entries, computed for every row in
one batched contraction (:meth:`ExactQueries.e_step_plan`), the M-step normalises them.
The functions here work on CPT lists; :class:`BayesNet` wraps them as ``counts`` and ``fit_mle``.

References: A. Dempster, N. Laird and D. Rubin, "Maximum likelihood from incomplete data via the
EM algorithm", JRSS B 1977; A. Darwiche, "A differential approach to inference in Bayesian
networks", JACM 2003; Koller & Friedman (2009), chapters 17 and 19.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ppgen.checks import positive_int
from ppgen.models.bayesnet.queries import ExactQueries
from ppgen.models.bayesnet.structure import Structure

__all__ = ["complete_counts", "family_statistics", "expected_counts", "cpts_from_counts", "expectation_maximisation",
           "check_fit_options", "EM_CHUNK"]

EM_CHUNK = 1024  # partial rows per E-step contraction (bounds its memory)


def check_fit_options(pseudo_count, max_iter, tol) -> int:
    """Validate ``fit_mle``'s options; returns ``max_iter`` as an int."""
    if not isinstance(pseudo_count, (int, float)) or isinstance(pseudo_count, bool) or \
            not math.isfinite(pseudo_count) or pseudo_count < 0:
        raise ValueError(f"pseudo_count must be a number >= 0, got {pseudo_count!r}")
    max_iter = positive_int(max_iter, "max_iter")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0:
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    return max_iter


def complete_counts(structure: Structure, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Family counts of complete rows (long, no -1), CPT shape, float64, by variable name."""
    out = {}
    for i, v in enumerate(structure.variables):
        shape = structure.cpt_shape(i)
        out[v] = torch.bincount(structure.family_index(rows, i), minlength=math.prod(shape)).reshape(shape)
        out[v] = out[v].to(torch.float64)
    return out


def family_statistics(exact: ExactQueries, cpts: list[torch.Tensor],
                      rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
    """(Expected) family counts of ``rows`` (long, -1 = missing), CPT shape, float64, by variable
    name, and the rows' total log-likelihood under ``cpts``."""
    s = exact.structure
    complete = (rows >= 0).all(1)
    full = rows[complete]
    out = complete_counts(s, full)
    log_likelihood = exact.log_joint(cpts, full).sum().item() if len(full) else 0.0
    partial = rows[~complete]
    for start in range(0, partial.shape[0], EM_CHUNK):
        expected, chunk_log_likelihood = expected_counts(exact, cpts, partial[start:start + EM_CHUNK])
        for v, count in zip(s.variables, expected):
            out[v] += count
        log_likelihood += chunk_log_likelihood
    return out, log_likelihood


def expected_counts(exact: ExactQueries, cpts: list[torch.Tensor],
                    rows: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    r"""Sum over rows of :math:`p(x_{\mathrm{family}(i)} \mid e_n)` for every family, and
    :math:`\sum_n \log p(e_n)`.

    One contraction for every missingness pattern at once: evidence enters as indicator
    vectors :math:`\lambda_{n,i}` (one-hot where observed, ones where missing), folded into
    the CPTs, so :math:`p(e_n) = \sum_x \prod_i \theta_i[x_{\mathrm{family}(i)}] \lambda_{n,i}[x_i]`.
    Each CPT enters once, so :math:`\theta \, \partial \log p(e_n) / \partial \theta` is the
    family's posterior marginal (Darwiche 2003); autograd sums it over the batch.
    """
    plan = exact.e_step_plan()
    cpts = [cpt.detach().requires_grad_() for cpt in cpts]
    with torch.enable_grad():
        operands = []
        for i, cpt in enumerate(cpts):
            observed = (rows[:, i] >= 0).unsqueeze(-1)
            indicator = torch.where(observed, nn.functional.one_hot(rows[:, i].clamp(min=0), cpt.shape[-1]), 1)
            operands.append(cpt * indicator.to(cpt.dtype).reshape((-1,) + (1,) * (cpt.dim() - 1) + cpt.shape[-1:]))
        evidence_prob = plan(*operands)
        if (evidence_prob <= 0).any():
            given = exact.structure.observed_states(rows[int((evidence_prob <= 0).nonzero()[0])])
            raise ValueError(f"a row of x, {given}, has probability zero under the current CPTs, so its "
                             "expected counts are undefined; start EM from CPTs without such zeros")
        log_likelihood = evidence_prob.log().sum()
        grads = torch.autograd.grad(log_likelihood, cpts)
    return [cpt.detach() * grad for cpt, grad in zip(cpts, grads)], log_likelihood.item()


def cpts_from_counts(counts: dict[str, torch.Tensor], pseudo_count: float) -> dict[str, torch.Tensor]:
    r""":math:`(N[u, s] + c) / \sum_{s'} (N[u, s'] + c)` per CPT row; a row with no counts is uniform."""
    cpts = {}
    for v, count in counts.items():
        count = count + pseudo_count
        total = count.sum(-1, keepdim=True)
        cpts[v] = torch.where(total > 0, count / total.clamp(min=1e-300), 1.0 / count.shape[-1])
    return cpts


def expectation_maximisation(exact: ExactQueries, cpts: list[torch.Tensor], rows: torch.Tensor,
                             pseudo_count: float, max_iter: int, tol: float) -> dict[str, torch.Tensor]:
    """EM from ``cpts`` on ``rows`` (some entries -1): the CPTs at the first iteration whose mean
    log-likelihood per row gains less than ``tol``, or after ``max_iter`` iterations with a
    RuntimeWarning. The log-likelihood of the observed entries never decreases."""
    names = exact.structure.variables
    current, previous = dict(zip(names, cpts)), -math.inf
    for _ in range(max_iter):
        counts, log_likelihood = family_statistics(exact, list(current.values()), rows)
        mean = log_likelihood / rows.shape[0]
        gain, previous = mean - previous, mean
        if gain < tol:
            return current
        current = cpts_from_counts(counts, pseudo_count)
    warnings.warn(f"fit_mle: EM did not converge in max_iter={max_iter} iterations (the last gained "
                  f"{gain:.3g} nats per row, tol={tol:g}); raise max_iter or tol",
                  RuntimeWarning, stacklevel=3)
    return current
