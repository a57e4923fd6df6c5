"""The character n-gram: a table of conditionals, fitted by counting with Kneser-Ney smoothing."""

from __future__ import annotations

import torch
from torch import nn

from ppgen.checks import positive_int
from ppgen.data.text import Vocabulary, as_text
from ppgen.models.sequence.base import SequenceModel, Stepper

__all__ = ["CharNGram"]

MAX_DENSE_ENTRIES = 2**24  # the table of a model built for gradient training: (V+1)^(n-1) contexts x V


class CharNGram(SequenceModel):
    r"""Character n-gram model: each character depends on the n - 1 before it.

    Generative story, with h_t the n - 1 symbols before x_t (start symbols before the row):

    .. math::
        p(x) = \prod_{t=1}^{L} \mathrm{Categorical}(x_t \mid \mathrm{softmax}(\ell_{c(h_t)})),

    where the table ``logits`` has one row l_c per context c in a set of contexts, and c(h) is
    the longest suffix of h in that set. Built directly, the set is every context of n - 1
    symbols ((V + 1)^{n-1} V parameters: the rows of a free table, whose maximum-likelihood fit
    by ``ppgen.fit`` is the counted frequencies). :meth:`fit_counts` and :meth:`from_text` fit it
    exactly by counting, with interpolated Kneser-Ney smoothing (Chen & Goodman 1998, eq. 18),
    and keep only the contexts seen (of every length up to n - 1):

    .. math::
        p_k(w \mid h) = \frac{\max(a_k(h w) - D_k, 0)}{\sum_v a_k(h v)}
            + \frac{D_k \, N_{1+}(h \,\cdot)}{\sum_v a_k(h v)} \, p_{k-1}(w \mid h'),
        \qquad p_0(w) = 1 / V,

    with h' the context h without its farthest symbol, a_n the counts of n-grams and a_k (k < n)
    their continuation counts N_{1+}(. h w) (the distinct symbols seen before h w), N_{1+}(h .)
    the distinct symbols seen after h, and D_k = n_1 / (n_1 + 2 n_2) from the numbers n_r of
    k-grams with a_k = r (Ney, Essen & Kneser 1994; 1/2 where n_1 = 0). A context never seen
    backs off to p_{k-1}(w | h') entirely, which is the row of its longest seen suffix.

    Counted on the 32 training plays of ``load_dataset("shakespeare")``, the validation plays
    cost 2.92, 2.19 and 2.11 bits per character for n = 3, 5 and 7 (1,884, 104,475 and 1,029,153
    contexts; seconds to count).

    References: S. F. Chen and J. Goodman, "An Empirical Study of Smoothing Techniques for
    Language Modeling", Harvard TR-10-98, 1998; R. Kneser and H. Ney, "Improved backing-off for
    m-gram language modeling", ICASSP 1995.

    Parameters
    ----------
    vocabulary : int or Vocabulary
    order : int
        n: 1 is a unigram (no context), 2 a bigram, ...
    length : int
        The rows' length L (see :class:`~ppgen.models.sequence.SequenceModel`).

    Examples
    --------
    >>> model = CharNGram.from_text("abracadabra", order=2, discount=0.0)  # discount 0: frequencies
    >>> model.vocabulary.decode(model.sample(1, 5, prompt="abr", top_k=1))  # the likeliest next each time
    ['abrabrab']
    >>> round(model.log_prob(model.vocabulary.encode("abr")[None]).exp().item(), 4)  # 1 * 2/4 * 2/2
    0.5
    """

    def __init__(self, vocabulary: int | Vocabulary, order: int = 2, length: int = 256):
        super().__init__(vocabulary, length)
        base = self.vocab_size + 1
        self.order = _check_order(order, base)
        if base ** (order - 1) * self.vocab_size > MAX_DENSE_ENTRIES:
            raise ValueError(f"a table of every context of a {order}-gram over {self.vocab_size} symbols has "
                             f"{base ** (order - 1) * self.vocab_size:,} entries (at most {MAX_DENSE_ENTRIES:,}); "
                             "fit it by counting instead (CharNGram.fit_counts / from_text), which keeps the "
                             "contexts seen")
        codes = torch.arange(base ** (order - 1))
        self.register_buffer("keys", codes * order + order - 1)  # sorted context keys, one per row
        self.logits = nn.Parameter(torch.zeros(len(codes), self.vocab_size))

    @classmethod
    def from_text(cls, text, order: int = 5, *, vocabulary: Vocabulary | None = None, discount: float | None = None,
                  length: int = 256) -> "CharNGram":
        """The Kneser-Ney n-gram of ``text`` (a ``str`` or UTF-8 ``bytes``), counted as one row;
        in ``vocabulary`` (its characters outside it count as unknown), by default the text's own."""
        text = as_text(text)
        vocabulary = Vocabulary.from_text(text) if vocabulary is None else vocabulary
        return cls.fit_counts(vocabulary.encode(text, errors="replace")[None], vocabulary, order,
                              discount=discount, length=length)

    @classmethod
    def fit_counts(cls, x: torch.Tensor, vocabulary: int | Vocabulary, order: int = 5, *,
                   discount: float | None = None, length: int | None = None) -> "CharNGram":
        """The interpolated Kneser-Ney n-gram of the rows ``x`` (N, L) of ids, each row read from
        its start. ``discount``: one D for every order, in [0, 1] (0: unsmoothed frequencies, with
        probability 0 for what was never seen); None: Ney's estimate per order. ``length``
        defaults to L."""
        model = cls(vocabulary, order=1, length=1 if length is None else length)  # its table is replaced below
        x = model.check_data(x)
        if length is None:
            model.x_dim = x.shape[1]
        vocab, base = model.vocab_size, model.vocab_size + 1
        order = _check_order(order, base)
        if discount is not None and (isinstance(discount, bool) or not isinstance(discount, (int, float))
                                     or not 0 <= discount <= 1):
            raise ValueError(f"discount must be a number in [0, 1] or None, got {discount!r}")
        # the (context, next symbol) pairs of each order, as codes context * V + symbol, highest first
        grams = _context_codes(x, order, vocab)[-1].reshape(-1) * vocab + x.reshape(-1)
        levels = [torch.unique(grams, return_counts=True)]  # counts of n-grams
        for j in range(order - 2, -1, -1):  # continuation counts: the distinct symbols before h w
            seen = levels[0][0]
            levels.insert(0, torch.unique((seen // vocab) % base**j * vocab + seen % vocab, return_counts=True))
        keys, rows = [], []
        probs, contexts = torch.full((1, vocab), 1.0 / vocab, dtype=torch.float64), None  # p_0: uniform
        for j, (grams, counts) in enumerate(levels):  # order k = j + 1: contexts h of j symbols
            lower, lower_contexts = probs, contexts
            contexts, which = torch.unique(grams // vocab, return_inverse=True)
            a = torch.zeros(len(contexts), vocab, dtype=torch.float64)  # a_k(h w), (contexts, V)
            a[which, grams % vocab] = counts.double()
            if j > 0:  # p_{k-1}(w | h'), h' = h without its farthest symbol (the leading digit)
                lower = lower[torch.searchsorted(lower_contexts, contexts % base ** (j - 1))]
            d = float(discount) if discount is not None else _ney_discount(counts)
            total, types = a.sum(1, keepdim=True), (a > 0).sum(1, keepdim=True)
            probs = ((a - d).clamp(min=0) + d * types * lower) / total
            keys.append(contexts * order + j)
            rows.append(probs)
        keys, sort = torch.cat(keys).sort()
        model.order = order
        model.keys = keys
        model.logits = nn.Parameter(torch.cat(rows)[sort].log().to(model.logits.dtype))
        return model

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a counted table keeps the contexts it saw: a saved one brings its size (of a model of this order)
        keys = state_dict.get(prefix + "keys")
        if isinstance(keys, torch.Tensor) and keys.dim() == 1 and keys.shape != self.keys.shape:
            self.keys = torch.empty_like(keys, device=self.keys.device)
            self.logits = nn.Parameter(self.logits.new_empty(len(keys), self.vocab_size),
                                       requires_grad=self.logits.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[self.rows(x)]  # (N, L, V)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The row of ``logits`` that each position of ``x`` (N, L) uses: that of the longest suffix
        of its context (the n - 1 symbols before it) that has a row. Shape (N, L)."""
        codes = _context_codes(x, self.order, self.vocab_size)  # (n, N, L), by context length j
        lengths = torch.arange(self.order, device=x.device).view(-1, 1, 1)
        wanted = codes * self.order + lengths
        where = torch.searchsorted(self.keys, wanted.reshape(-1)).view_as(wanted).clamp(max=len(self.keys) - 1)
        found = self.keys[where] == wanted
        longest = (found * (lengths + 1)).argmax(0, keepdim=True)  # every position finds one
        return where.gather(0, longest).squeeze(0)

    def _stepper(self, n: int) -> Stepper:
        history = torch.empty(n, 0, dtype=torch.long, device=self.device)

        def step(new: torch.Tensor) -> torch.Tensor:  # only the last n - 1 characters matter
            nonlocal history
            history = torch.cat([history, new], 1)
            history = history[:, max(history.shape[1] - self.order + 1, 0):]
            return self.conditional_logits(torch.cat([history, history.new_zeros(n, 1)], 1))[:, -1]

        return step

    def extra_repr(self) -> str:
        return f"order={self.order}, contexts={len(self.keys)}, " + super().extra_repr()


def _check_order(order, base: int) -> int:
    positive_int(order, "order")
    if base ** (order - 1) * order >= 2**62:
        raise ValueError(f"order {order} is too high for {base - 1} symbols: its contexts do not fit in int64")
    return order


def _context_codes(x: torch.Tensor, order: int, vocab: int) -> torch.Tensor:
    """The contexts of every position of ``x`` (N, L) as integers, shape (order, N, L): ``[j]`` the
    last j symbols before the position, the nearest as the lowest digit in base V + 1 (the start
    symbol V before the row)."""
    num, length = x.shape
    padded = torch.cat([x.new_full((num, order - 1), vocab), x], 1)
    codes = [torch.zeros_like(x)]
    for j in range(1, order):
        codes.append(codes[-1] + padded[:, order - 1 - j:order - 1 - j + length] * (vocab + 1) ** (j - 1))
    return torch.stack(codes)


def _ney_discount(counts: torch.Tensor) -> float:
    """D = n1 / (n1 + 2 n2), from how many counts are 1 and 2; 1/2 where none is 1 (D = 0 would
    give what was not seen probability 0)."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 else 0.5
