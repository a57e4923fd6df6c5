r"""Lossless compression with learned models: what a model's NLL promises, in bytes.

A model that assigns p(x) is a compressor: an entropy coder driven by p spends about
:math:`-\log_2 p(x)` bits on x. :func:`compress` turns a ppgen model into one, with the entropy
coders of ``constriction`` (R. Bamler, "Understanding entropy coding with asymmetric numeral
systems (ANS): a statistician's perspective", 2022):

- exact likelihoods -- FVSBN, NADE, MADE (one mask), PixelCNN, :class:`~ppgen.IndependentBernoulli`
  and :class:`~ppgen.BayesNet` -- by range coding every value with its conditional
  (:mod:`ppgen.compression.exact`);
- VAEs with a Bernoulli likelihood by bits-back coding with ANS, BB-ANS
  (:mod:`ppgen.compression.bitsback`), at about the negative ELBO.

Not supported yet: normalizing flows (bits-back coding through the dequantization, as in
Ho et al.'s local bits-back), diffusion models (bits-back over the chain of latents, as in Kingma et
al.'s variational diffusion models), energy models and GANs (no normalised density to code with),
and the other latent-variable models (conditional VAE, mixtures).

The result is a ``.ppz`` stream (:mod:`ppgen.compression.container`): a header naming the model
by fingerprint, the image shape, count and dtype, then the coded words.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ppgen.compression.bitsback import LATENT_BITS, Q_BITS, decode_bbans, encode_bbans, initial_word_count
from ppgen.compression.bitsback import negative_elbo_bits
from ppgen.compression.container import CompressedFormatError, Header, data_digest, model_fingerprint, pack, unpack
from ppgen.compression.exact import decode_exact, encode_exact, float64_copy
from ppgen.models.autoregressive._common import AutoregressiveModel
from ppgen.models.bayesnet import BayesNet
from ppgen.models.independent import IndependentBernoulli
from ppgen.models.latent.vae import VAE

__all__ = ["compress", "decompress", "model_nll_bits", "CompressedFormatError", "model_fingerprint", "PROB_BITS"]

PROB_BITS = 16
_DTYPE_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def _method(model) -> str:
    if isinstance(model, (AutoregressiveModel, IndependentBernoulli, BayesNet)):
        return "range"
    if isinstance(model, VAE):
        if model.likelihood != "bernoulli":
            raise ValueError(f"compress codes binary data; this VAE has likelihood={model.likelihood!r} "
                             "(use likelihood='bernoulli')")
        return "bbans"
    raise TypeError(f"compress supports FVSBN, NADE, MADE, PixelCNN, IndependentBernoulli, BayesNet (range "
                    f"coding) and VAE (bits-back ANS); got {type(model).__name__}. Flows and diffusion models "
                    "are not coded yet (they need bits-back over their dequantization or chain of latents).")


def _rows(model, x) -> tuple[np.ndarray, torch.Tensor]:
    """``x`` as it came (NumPy) and as validated float64 rows (N, D); a clear error otherwise."""
    if isinstance(x, torch.Tensor):
        if x.dtype in (torch.bfloat16, torch.float16) or x.is_complex():
            raise TypeError(f"x has dtype {x.dtype}; compress takes bool, integer, float32 or float64 data")
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if x.dtype.kind not in _DTYPE_KINDS:
        raise TypeError(f"x must hold bool, integer or float values, got dtype {x.dtype}")
    if x.ndim < 2 or math.prod(x.shape[1:]) != model.x_dim:
        raise ValueError(f"x must have shape (N, ...) with {model.x_dim} values per image (one image per "
                         f"leading index), got shape {x.shape}")
    flat = x.reshape(x.shape[0], model.x_dim).astype(np.float64)
    if isinstance(model, BayesNet):
        cards = np.asarray(model.cards)
        bad = ~((flat == np.round(flat)) & (flat >= 0) & (flat < cards))
        what = lambda c: f"a state index of {model.variables[c]!r} (an integer in 0..{model.cards[c] - 1}; " \
                         "missing entries (-1) cannot be compressed)"
    else:
        bad = (flat != 0) & (flat != 1)
        what = lambda c: "0 or 1 (the model is over binary pixels)"
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"x[{row}] holds {flat[row, col]:g} at flat position {col}, expected {what(col)}")
    return x, torch.from_numpy(flat)


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def compress(model, x, *, batch_size: int = 500, seed: int = 0) -> bytes:
    r"""Losslessly compress images ``x`` with ``model``; :func:`decompress` inverts it exactly.

    Parameters
    ----------
    model : FVSBN, NADE, MADE (one mask), PixelCNN, IndependentBernoulli, BayesNet or VAE (Bernoulli)
    x : Tensor or ndarray (N, ...)
        N images of ``model.x_dim`` values each, in any shape and dtype (bool, int, float): 0/1
        pixels, or state indices for a Bayesian network. ``N = 0`` gives a valid empty stream.
    batch_size : int
        Rows per network call. It changes the speed, never the bytes.
    seed : int
        Bits-back only: seeds the initial random words the first latent is drawn from.

    Returns
    -------
    bytes
        A ``.ppz`` stream: header (:mod:`ppgen.compression.container`), then the coded data.
        Its length is about :math:`-\log_2 p(x)` bits (exact models) or the negative ELBO plus
        the initial words (VAEs), plus ~70 bytes of header.

    Examples
    --------
    >>> import ppgen
    >>> model = ppgen.IndependentBernoulli.from_frequencies(torch.tensor([[0., 1.], [1., 1.]]))
    >>> data = compress(model, torch.tensor([[1., 1.], [0., 1.]]))
    >>> decompress(model, data).tolist()
    [[1.0, 1.0], [0.0, 1.0]]
    """
    method = _method(model)
    batch_size = _check_positive(batch_size, "batch_size")
    raw, rows = _rows(model, x)
    model64 = float64_copy(model)
    init_words = initial_word_count(model.z_dim, Q_BITS) if method == "bbans" and len(rows) else 0
    header = Header(method, model_fingerprint(model), tuple(raw.shape[1:]), len(rows), raw.dtype.str, PROB_BITS,
                    LATENT_BITS if method == "bbans" else 0, seed if method == "bbans" else 0, init_words,
                    data_digest(rows.numpy()))
    if not len(rows):
        words = np.zeros(0, dtype=np.uint32)
    elif method == "range":
        words = encode_exact(model64, rows, batch_size, PROB_BITS)
    else:
        words = encode_bbans(model64, rows, batch_size=batch_size, prob_bits=PROB_BITS, latent_bits=LATENT_BITS,
                             q_bits=Q_BITS, seed=seed)
    return pack(header, words)


def decompress(model, data: bytes, *, batch_size: int = 500) -> torch.Tensor:
    """The images that :func:`compress` coded into ``data``, exactly: shape (N, ...) and dtype as given.

    Raises
    ------
    CompressedFormatError (a ValueError)
        ``data`` is not a ppgen stream, is truncated or damaged, comes from a newer format
        version, was made with another model, or decodes to data that fail its digest.
    """
    method = _method(model)
    batch_size = _check_positive(batch_size, "batch_size")
    header, words = unpack(data, model_fingerprint(model))
    if header.method != method:
        raise CompressedFormatError(f"the stream was coded by {header.method!r}, but {type(model).__name__} "
                                    f"decodes {method!r}")
    model64 = float64_copy(model)
    n = header.count
    if n == 0:
        rows = torch.zeros(0, model.x_dim, dtype=torch.float64)
    elif method == "range":
        rows = decode_exact(model64, words, n, batch_size, header.prob_bits)
    else:
        rows = decode_bbans(model64, words, n, seed=header.seed, init_words=header.init_words,
                            prob_bits=header.prob_bits, latent_bits=header.latent_bits, q_bits=Q_BITS)
    if data_digest(rows.numpy()) != header.data_digest:
        raise CompressedFormatError("the decoded data fail the stream's digest: the decoder's probabilities "
                                    "drifted from the encoder's, or the stream is damaged")
    return torch.from_numpy(rows.numpy().astype(np.dtype(header.dtype)).reshape(n, *header.shape))


@torch.no_grad()
def model_nll_bits(model, x) -> tuple[float, str]:
    """What the model promises for ``x``, in total bits: -log2 p(x) for exact models, the negative
    ELBO (100 Monte Carlo samples per image) for VAEs. Returns (bits, "NLL" or "-ELBO")."""
    method = _method(model)
    _, rows = _rows(model, x)
    model64 = float64_copy(model)
    if method == "range":
        return float(-model64.log_prob(rows).sum() / math.log(2)), "NLL"
    return float(negative_elbo_bits(model64, rows).sum()), "-ELBO"
