r"""Bits-back coding with asymmetric numeral systems (BB-ANS) for VAEs with a Bernoulli likelihood.

Townsend, Bird & Barber, "Practical lossless compression with latent variables using bits back
coding", ICLR 2019. ANS is a stack (last in, first out), so a sender can *decode* a latent from
bits already on the stack -- sampling it from q(z | x) -- and the receiver, who re-encodes it
after recovering x, gets those bits back. Per image x_n, with the stack holding earlier images
(or, for the first image, random initial words):

1. pop z ~ q(z | x_n)           (gains  -log2 q(z | x_n) bits)
2. push x_n under p(x | z)      (costs  -log2 p(x_n | z) bits)
3. push z under p(z)            (costs  -log2 p(z) bits)

so the stack grows by :math:`-\log_2 p(x_n | z) - \log_2 p(z) + \log_2 q(z | x_n)` bits, whose
expectation is the negative ELBO. The receiver runs the steps backwards (pop z under p(z), pop
x under p(x | z), push z under q(z | x)), image N first, and is left with the initial words,
which it checks.

**Discretisation (the paper's).** Each latent dimension is cut into ``2**latent_bits`` buckets
of equal mass under the prior N(0, 1) (edges :math:`\Phi^{-1}(k / 2^{P})`), so every bucket has
prior probability :math:`2^{-P}` and a latent costs exactly P bits per dimension to push
(``latent_bits`` P = 8 by default, the paper's prior precision). The decoder network sees the
bucket's centre in prior mass, :math:`\Phi^{-1}((k + 1/2) / 2^{P})`. q(z | x) is coded over the
same buckets with the Gaussian mass of each, as integer counts summing to ``2**q_bits``
(default 20, every bucket at least 1: the CDF at each edge rounded to the grid); pixels use
Bernoulli probabilities on a ``2**-prob_bits`` grid (default 16), as in :mod:`.exact`. The cost is
then the negative ELBO of the discretised model -- close to the continuous one when buckets
are narrow next to the posterior's scale.

**Clean bits.** z is drawn from q exactly only when the bits popped are uniformly random. The
first image pops the initial random words; later ones pop what the previous image pushed, mostly
its latent coded under the prior, whose bits are not uniform (their redundancy is KL(q || p)).
The cost per image is then not exactly the negative ELBO in expectation (Townsend et al. 2019
discuss this approximation; with 784 pixels and tens of latent dimensions it is small, see
``benchmarks/RESULTS.md``; with a one-dimensional latent it can reach 10%). The code length is
always exactly the information content of the symbols actually coded.

The encoder computes q(z | x) for a whole compute batch at once, the decoder one image at a
time, both in float64 and rounded to the integer grid, so the stream does not depend on the
batch size (see :mod:`.exact` for the odds of a rounding tie, and the digest that catches one).
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch

from ppgen.compression.container import CompressedFormatError
from ppgen.compression.exact import quantised_probs

__all__ = ["LATENT_BITS", "Q_BITS", "prior_buckets", "posterior_counts", "initial_words", "encode_bbans",
           "decode_bbans", "negative_elbo_bits"]

LATENT_BITS = 8
Q_BITS = 20

_BERNOULLI = constriction.stream.model.Bernoulli(perfect=False)
_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


def prior_buckets(latent_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner edges (2**P - 1,) and centres (2**P,) of the equal-mass buckets of N(0, 1), float64.

    >>> edges, centres = prior_buckets(1)
    >>> edges.tolist(), [round(c, 4) for c in centres.tolist()]
    ([0.0], [-0.6745, 0.6745])
    """
    size = 2**latent_bits
    edges = torch.special.ndtri(torch.arange(1, size, dtype=torch.float64) / size)
    centres = torch.special.ndtri((torch.arange(size, dtype=torch.float64) + 0.5) / size)
    return edges, centres


def posterior_counts(loc: torch.Tensor, scale: torch.Tensor, edges: torch.Tensor, q_bits: int) -> np.ndarray:
    """Integer masses (..., Z, B) of N(loc, scale^2) in the B buckets, each >= 1, summing to 2**q_bits.

    The CDF at inner edge k (1 <= k < B) is rounded to ``round(cdf * (2**q_bits - B)) + k``: a
    strictly increasing integer grid, so every bucket keeps at least one count.
    """
    size = edges.shape[0] + 1
    cdf = torch.special.ndtr((edges - loc[..., None]) / scale[..., None])  # (..., Z, B - 1)
    grid = torch.round(cdf * float(2**q_bits - size)) + torch.arange(1, size, dtype=torch.float64)
    grid = torch.cat([torch.zeros_like(grid[..., :1]), grid, torch.full_like(grid[..., :1], float(2**q_bits))], -1)
    return np.ascontiguousarray(grid.diff(dim=-1).numpy())


def initial_words(seed: int, count: int) -> np.ndarray:
    """``count`` random 32-bit words (the "clean bits" the first image's latent is drawn from)."""
    words = np.random.default_rng(seed).integers(0, 2**32, size=count, dtype=np.uint32)
    if count:
        words[-1] |= np.uint32(1 << 31)  # the top of the stack: a full ANS state
    return words


def initial_word_count(z_dim: int, q_bits: int) -> int:
    """Enough words for the first pop of z: at most about q_bits + 1 bits per latent dimension."""
    return math.ceil(z_dim * (q_bits + 1) / 32) + 2


@torch.no_grad()
def encode_bbans(model, x: torch.Tensor, *, batch_size: int, prob_bits: int, latent_bits: int, q_bits: int,
                 seed: int) -> np.ndarray:
    """Stack words for the rows ``x`` (N, D) (float64, validated) under the VAE ``model`` (float64 copy)."""
    coder = constriction.stream.stack.AnsCoder(initial_words(seed, initial_word_count(model.z_dim, q_bits)))
    prior = constriction.stream.model.Uniform(2**latent_bits)
    edges, centres = prior_buckets(latent_bits)
    loc, scale = (torch.cat(t) for t in zip(*(model.posterior_params(chunk) for chunk in x.split(batch_size))))
    symbols = x.numpy().astype(np.int32)
    for n in range(x.shape[0]):
        buckets = coder.decode(_CATEGORICAL, posterior_counts(loc[n], scale[n], edges, q_bits))  # pop z ~ q
        logits = model.decoder(centres[torch.from_numpy(buckets.astype(np.int64))][None])[0]
        coder.encode_reverse(symbols[n], _BERNOULLI, quantised_probs(logits, prob_bits))  # push x under p(x | z)
        coder.encode_reverse(buckets, prior)  # push z under p(z)
    return coder.get_compressed()


@torch.no_grad()
def decode_bbans(model, words: np.ndarray, n: int, *, seed: int, init_words: int, prob_bits: int, latent_bits: int,
                 q_bits: int, return_buckets: bool = False):
    """Rows (n, D) float64: the inverse of :func:`encode_bbans`, last image first (and the latent buckets
    (n, Z) the encoder drew, with ``return_buckets``)."""
    if not len(words) or words[-1] == 0:
        raise CompressedFormatError("corrupt stream: a bits-back stream ends in a nonzero word (a full ANS state)")
    if not 0 < init_words <= len(words):  # checked before initial_words() allocates them
        raise CompressedFormatError(f"corrupt header: init_words is {init_words:,}, but the stream's {len(words):,} "
                                    "words must hold them (the coder ends on its initial words)")
    coder = constriction.stream.stack.AnsCoder(words)
    prior = constriction.stream.model.Uniform(2**latent_bits)
    edges, centres = prior_buckets(latent_bits)
    start = initial_words(seed, init_words)
    rows, drawn = [], []  # grown as images are decoded: a crafted count allocates nothing ahead
    for i in reversed(range(n)):
        if coder.num_words() == init_words and np.array_equal(coder.get_compressed(), start):
            raise CompressedFormatError(f"corrupt header: count is {n}, but the stream ends on its initial words "
                                        f"after {n - 1 - i} images")
        buckets = coder.decode(prior, model.z_dim)  # pop z under p(z)
        logits = model.decoder(centres[torch.from_numpy(buckets.astype(np.int64))][None])[0]
        x = torch.from_numpy(coder.decode(_BERNOULLI, quantised_probs(logits, prob_bits)).astype(np.float64))
        loc, scale = model.posterior_params(x[None])
        coder.encode_reverse(buckets, _CATEGORICAL, posterior_counts(loc[0], scale[0], edges, q_bits))  # bits back
        rows.append(x)
        drawn.append(buckets.astype(np.int64))
    if not np.array_equal(coder.get_compressed(), start):
        raise CompressedFormatError("bits-back decoding did not end on the initial words: the stream does not "
                                    "decode under this model")
    out = torch.stack(rows[::-1])
    return (out, np.stack(drawn[::-1])) if return_buckets else out


@torch.no_grad()
def negative_elbo_bits(model, x: torch.Tensor, num_samples: int = 100, seed: int = 0) -> torch.Tensor:
    """-ELBO per row in bits (N,), of the continuous model: analytic KL, reconstruction by Monte Carlo."""
    generator = torch.Generator().manual_seed(seed)
    loc, scale = model.posterior_params(x)
    kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)
    eps = torch.randn((num_samples, *loc.shape), generator=generator, dtype=loc.dtype)
    recon = model.likelihood_dist(loc + scale * eps).log_prob(x).mean(0)
    return (kl - recon) / math.log(2)
