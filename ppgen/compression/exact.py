"""Range coding under exact likelihoods: autoregressive models, the factorised baseline, Bayesian networks.

A model with an exact chain-rule factorisation :math:`p(x) = \\prod_i p(x_{o(i)} \\mid x_{o(<i)})`
codes every value with its conditional in a range coder (a queue: first in, first out), so the
code length is :math:`-\\log_2 p(x)` plus the quantisation and termination overhead (a few
bytes). Symbols go into one stream **value-major**: value :math:`o(1)` of every image, then
value :math:`o(2)` of every image, and so on. The decoder therefore recovers value i of all
images at once and runs the model's sequential sampler (``_stepper``) on the whole batch with
the decoded prefix: one network call per value per compute batch, not per image; the compute
batch size changes nothing in the stream.

**Precision.** The encoder computes all conditionals in one teacher-forced pass, the decoder step
by step; both run a float64 copy of the model, and every probability is rounded to a multiple of
``2**-prob_bits`` (default 16 bits) and clipped to ``[2**-prob_bits, 1 - 2**-prob_bits]`` before
the coder sees it. Float64 disagreements between the two paths, or between batch sizes, are
around 1e-16, so they change a quantised value only when a probability lies within ~1e-16 of a
rounding boundary (odds ~1e-11 per value). The container's data digest catches that case, should
it happen, with an error instead of wrong data. Bayesian networks need none of this: their
conditionals are CPT rows looked up, not computed, and go to the coder as they are.
"""

from __future__ import annotations

import copy
import math

import constriction
import numpy as np
import torch

from ppgen.models.autoregressive._common import AutoregressiveModel
from ppgen.models.bayesnet import BayesNet
from ppgen.models.independent import IndependentBernoulli

__all__ = ["quantised_probs", "float64_copy", "encode_exact", "decode_exact", "exact_probs", "min_bits_per_image"]

_BERNOULLI = constriction.stream.model.Bernoulli(perfect=False)
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


def quantised_probs(logits: torch.Tensor, bits: int) -> np.ndarray:
    """P(1) = sigmoid(logits) rounded to a multiple of 2**-bits in [2**-bits, 1 - 2**-bits], float64.

    >>> quantised_probs(torch.tensor([0.0, 100.0, -100.0], dtype=torch.float64), 4).tolist()
    [0.5, 0.9375, 0.0625]
    """
    scale = float(2**bits)
    counts = torch.round(torch.sigmoid(logits.detach().double()) * scale).clamp_(1, scale - 1)
    return (counts / scale).cpu().numpy()


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 CPU copy of ``model`` in eval mode (the user's model is left as it is)."""
    return copy.deepcopy(model).to("cpu", torch.float64).eval()


def _check_autoregressive(model: AutoregressiveModel) -> None:
    if model.num_orderings != 1:
        raise ValueError(f"{type(model).__name__} with {model.num_orderings} orderings (a mask ensemble) is a "
                         "mixture, not one chain-rule product; compress supports one ordering (num_masks=1)")


@torch.no_grad()
def exact_probs(model: torch.nn.Module, x: torch.Tensor, batch_size: int, bits: int) -> np.ndarray:
    """Encoder side, binary models: quantised P(x_{o(i)} = 1 | x_{o(<i)}) as (N, D) in coding order."""
    if isinstance(model, IndependentBernoulli):
        return np.broadcast_to(quantised_probs(model.logits, bits), x.shape)
    order = model.orders[0]
    return np.concatenate([quantised_probs(model.conditional_logits(chunk, 0)[:, order], bits)
                           for chunk in x.split(batch_size)])


@torch.no_grad()
def encode_exact(model: torch.nn.Module, x: torch.Tensor, batch_size: int, bits: int) -> np.ndarray:
    """The range coder's words for the rows ``x`` (N, D) (float64, validated) under ``model`` (float64 copy)."""
    encoder = constriction.stream.queue.RangeEncoder()
    if isinstance(model, BayesNet):
        rows, tables = x.long(), _cpt_tables(model)
        for i in model.order:
            if model.cards[i] > 1:
                encoder.encode(rows[:, i].int().numpy(), _CATEGORICAL, _cpt_rows(tables[i], rows))
        return encoder.get_compressed()
    if isinstance(model, AutoregressiveModel):
        _check_autoregressive(model)
        symbols = x[:, model.orders[0]]
    else:
        symbols = x
    probs = exact_probs(model, x, batch_size, bits)
    encoder.encode(np.ascontiguousarray(symbols.T.numpy()).ravel().astype(np.int32), _BERNOULLI,
                   np.ascontiguousarray(probs.T).ravel())
    return encoder.get_compressed()


@torch.no_grad()
def decode_exact(model: torch.nn.Module, words: np.ndarray, n: int, batch_size: int, bits: int) -> torch.Tensor:
    """Rows (n, D) float64 decoded from ``words``: the inverse of :func:`encode_exact`."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    dim = model.x_dim
    if isinstance(model, BayesNet):
        rows, tables = torch.zeros(n, dim, dtype=torch.long), _cpt_tables(model)
        for i in model.order:
            if model.cards[i] > 1:
                rows[:, i] = torch.from_numpy(decoder.decode(_CATEGORICAL, _cpt_rows(tables[i], rows)).astype(np.int64))
        return rows.double()
    if isinstance(model, IndependentBernoulli):
        probs = np.repeat(quantised_probs(model.logits, bits), n)  # value-major, as encoded
        return torch.from_numpy(decoder.decode(_BERNOULLI, probs).astype(np.float64)).reshape(dim, n).T.contiguous()
    _check_autoregressive(model)
    x = torch.zeros(n, dim, dtype=torch.float64)
    chunks = [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    steps = [model._stepper(c.stop - c.start, 0) for c in chunks]
    for i, d in enumerate(model.orders[0].tolist()):
        probs = np.concatenate([quantised_probs(step(x[c], i), bits) for step, c in zip(steps, chunks)])
        x[:, d] = torch.from_numpy(decoder.decode(_BERNOULLI, probs).astype(np.float64))
    return x


def min_bits_per_image(model: torch.nn.Module, bits: int) -> float:
    """The fewest bits any image can cost in :func:`encode_exact`'s stream.

    A binary value has probability at most :math:`1 - 2^{-bits}`; a value of a variable with
    K > 1 states at most :math:`1 - (K - 1) 2^{-24}` (constriction's leaky categorical gives
    every state at least :math:`2^{-24}`). The range coder writes all it is given, so W words hold
    at most :math:`32 (W + 1)` bits of it: a bound on the images a stream can hold.
    """
    if isinstance(model, BayesNet):
        return sum(-math.log1p(-(card - 1) * 2.0**-24) for card in model.cards if card > 1) / math.log(2)
    return model.x_dim * -math.log1p(-(2.0**-bits)) / math.log(2)


def _cpt_tables(model: BayesNet) -> list[tuple[torch.Tensor, list[int]]]:
    """Per variable (in column order): its CPT and the columns of its parents."""
    column = {v: i for i, v in enumerate(model.variables)}
    cpts = model.cpts
    return [(cpts[v].cpu(), [column[p] for p in model.parents[v]]) for v in model.variables]


def _cpt_rows(table: tuple[torch.Tensor, list[int]], rows: torch.Tensor) -> np.ndarray:
    """p(x_i | parents) for every row (N, card_i), looked up in variable i's CPT (float64)."""
    cpt, parents = table
    probs = cpt[tuple(rows[:, p] for p in parents)] if parents else cpt.expand(rows.shape[0], -1)
    return np.ascontiguousarray(probs.numpy(), dtype=np.float64)
