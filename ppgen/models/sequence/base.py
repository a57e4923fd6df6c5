"""What the sequence models share: the chain rule over positions, the Pyro program, sampling.

A sequence model over a vocabulary of V symbols factorises a row x = (x_1, ..., x_L) of ids by
the chain rule in reading order,

.. math::
    p(x) = \\prod_{t=1}^{L} \\mathrm{Categorical}(x_t \\mid \\mathrm{softmax}(f_t(x_{<t}))),

and differs only in how it computes the conditional logits f_t. A subclass of
:class:`SequenceModel` implements ``conditional_logits(x)`` (all L positions at once, teacher
forced) and may override ``_stepper`` to make sampling cheaper (a KV cache, a recurrent state).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from ppgen.checks import positive_int
from ppgen.data.text import Vocabulary
from ppgen.models.base import DATA_PLATE, OBSERVED_SITE, GenerativeModel, at_least_float32, num_rows

__all__ = ["SequenceModel", "shift_right"]

Stepper = Callable[[torch.Tensor], torch.Tensor]


def shift_right(x: torch.Tensor, start: int) -> torch.Tensor:
    """The inputs that predict ``x`` (N, L): the start symbol, then x_1 .. x_{L-1}.

    Examples
    --------
    >>> shift_right(torch.tensor([[1, 2, 3]]), start=9).tolist()
    [[9, 1, 2]]
    """
    return torch.cat([x.new_full((x.shape[0], 1), start), x[:, :-1]], 1)


class SequenceModel(GenerativeModel):
    """Base class of the exact-likelihood models of sequences of symbol ids (characters).

    The data are rows (N, L) of int64 ids in [0, V). The Pyro program ``model(x)`` has two faces,
    as the autoregressive image models' do. With ``x`` given (training, scoring) it observes
    every position at once in one site ``"x"``, ``Categorical(logits).to_event(1)`` with the
    teacher-forced logits (N, L, V), whose log-density is the chain-rule product. With ``x``
    None it tells the story position by position: one site ``"x_{t}"`` per position t inside
    ``pyro.markov``, then a deterministic site ``"x"`` with the assembled rows.

    Parameters
    ----------
    vocabulary : int or Vocabulary
        The number of symbols V, or a :class:`~ppgen.data.text.Vocabulary` (V = its length),
        which lets :meth:`sample` take a text prompt and :attr:`vocabulary` decode samples.
    length : int
        L: the length of the rows the model is fitted to and of :meth:`sample`'s rows by default.
        Rows of other lengths are scored too (up to :attr:`context`).

    Attributes
    ----------
    vocab_size : int
        V, the symbols the model predicts; the inputs have one more, the start symbol (id V).
    context : int or None
        The longest row ``conditional_logits`` takes (the Transformer's block size); None for
        rows of any length. :meth:`sample` goes beyond it by sliding a window of this many
        characters, as nanoGPT does.
    vocabulary : Vocabulary or None
    """

    has_exact_likelihood = True
    data_support = "categorical"  # int64 ids in [0, vocab_size), checked by check_data below
    context: int | None = None

    def __init__(self, vocabulary: int | Vocabulary, length: int, context: int | None = None):
        super().__init__(positive_int(length, "length"))
        if isinstance(vocabulary, Vocabulary):
            self.vocabulary, self.vocab_size = vocabulary, len(vocabulary)
        elif isinstance(vocabulary, int) and not isinstance(vocabulary, bool) and vocabulary >= 2:
            self.vocabulary, self.vocab_size = None, vocabulary
        else:
            raise ValueError(f"vocabulary must be a Vocabulary or a number of symbols >= 2, got {vocabulary!r}")
        if context is not None:
            self.context = positive_int(context, "context")
            if length > context:
                raise ValueError(f"length ({length}) must be at most the context ({context})")

    @property
    def start(self) -> int:
        """The id of the start symbol that precedes every row in the inputs: V."""
        return self.vocab_size

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (N, L, V): ``[:, t]`` are the logits of x_t given x_{<t}."""
        raise NotImplementedError

    def _stepper(self, n: int) -> Stepper:
        """A function ``step(new)`` that reads the next characters ``new`` (n, k) of ``n`` texts
        (the first call may read k = 0) and returns the logits (n, V) of the character after
        everything read so far. The default recomputes ``conditional_logits`` on the whole text
        (its last ``context`` characters where the model has a context)."""
        history = torch.empty(n, 0, dtype=torch.long, device=self.device)

        def step(new: torch.Tensor) -> torch.Tensor:
            nonlocal history
            history = torch.cat([history, new], 1)
            window = torch.cat([history, history.new_zeros(n, 1)], 1)  # the last column is a placeholder
            return self.conditional_logits(window[:, -self.context:] if self.context else window)[:, -1]

        return step

    def model(self, x=None, y=None, *, size=None):
        with pyro.plate(DATA_PLATE, num_rows(x, y, size)) as rows:
            if x is not None:
                logits = at_least_float32(self.conditional_logits(x))  # (N, L, V)
                return pyro.sample(OBSERVED_SITE, dist.Categorical(logits=logits).to_event(1), obs=x)
            x = self._generate(len(rows), self.x_dim, sites=True)
            return pyro.deterministic(OBSERVED_SITE, x, event_dim=1)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log p(x) per row (N,) in nats: the sum over positions of log-softmax(logits)[x_t]."""
        x = self.check_data(x)
        log_p = F.log_softmax(at_least_float32(self.conditional_logits(x)), -1)  # (N, L, V)
        return log_p.gather(-1, x.unsqueeze(-1)).squeeze(-1).sum(-1)

    @torch.no_grad()
    def bits_per_character(self, x: torch.Tensor) -> float:
        """-log2 p(x) averaged over every character of the rows ``x`` (N, L) (lower is better)."""
        x = self.check_data(x)
        return -self.log_prob(x).double().sum().item() / (x.numel() * math.log(2.0))

    @torch.no_grad()
    def sample(self, n: int, length: int | None = None, *, prompt=None, temperature: float = 1.0,
               top_k: int | None = None) -> torch.Tensor:
        """``n`` rows of ``length`` new characters (default: the model's ``length``), drawn one by one.

        Parameters
        ----------
        prompt : str, bytes or integer Tensor (P,) or (n, P), optional
            A text to continue (in the model's vocabulary, which a text prompt needs), or its ids;
            the rows then start with it: (n, P + length).
        temperature : float
            Divides the logits: below 1 sharper, above 1 flatter than the model.
        top_k : int, optional
            Draw only among the ``top_k`` likeliest characters at each step.

        Returns
        -------
        Tensor
            Ids (n, length), or (n, P + length) after a prompt, int64; ``model.vocabulary.decode(rows)``
            gives the texts.
        """
        n = positive_int(n, "n")
        length = self.x_dim if length is None else positive_int(length, "length")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or not 1 <= top_k <= self.vocab_size):
            raise ValueError(f"top_k must be an int in [1, {self.vocab_size}] or None, got {top_k!r}")
        return self._generate(n, length, self._prompt(prompt, n), temperature, top_k)

    def _prompt(self, prompt, n: int) -> torch.Tensor | None:
        if prompt is None:
            return None
        if isinstance(prompt, (str, bytes, bytearray)):
            if self.vocabulary is None:
                raise TypeError(f"a text prompt needs a model built with a Vocabulary; {type(self).__name__} has "
                                "only a number of symbols: pass the prompt's ids")
            prompt = self.vocabulary.encode(prompt, name="prompt")
        if isinstance(prompt, torch.Tensor) and prompt.dim() == 1:
            prompt = prompt.expand(n, -1)
        prompt = self.check_data(prompt, "prompt", any_length=True)
        if prompt.shape[0] != n:
            raise ValueError(f"prompt has {prompt.shape[0]} rows, but n = {n} rows are drawn")
        return prompt.to(self.device)

    def _generate(self, n: int, length: int, prompt: torch.Tensor | None = None, temperature: float = 1.0,
                  top_k: int | None = None, sites: bool = False) -> torch.Tensor:
        step = self._stepper(n)
        prompt = torch.empty(n, 0, dtype=torch.long, device=self.device) if prompt is None else prompt
        logits = step(prompt)
        drawn = []
        for t in pyro.markov(range(length)):
            logits = at_least_float32(logits)
            if sites:
                value = pyro.sample(f"x_{t}", dist.Categorical(logits=logits))
            else:
                logits = logits / temperature
                if top_k is not None:
                    logits = logits.masked_fill(logits < logits.topk(top_k, -1).values[:, -1:], -math.inf)
                value = torch.multinomial(F.softmax(logits, -1), 1).squeeze(-1)
            drawn.append(value)
            if t + 1 < length:
                logits = step(value[:, None])
        return torch.cat([prompt, torch.stack(drawn, 1)], 1)

    def check_data(self, x, name: str = "x", *, any_length: bool = False) -> torch.Tensor:
        """``x`` as rows (N, L) of int64 ids in [0, V) (L at most :attr:`context`), or raise naming
        what is wrong. Any integer dtype is accepted, and floats holding whole numbers (as a
        Bayesian network's rows of states are): both convert exactly."""
        if hasattr(x, "__array__") and not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of character ids (N, L), got {type(x).__name__}")
        if x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer ids (int64) of symbols in [0, {self.vocab_size}), "
                            f"got dtype {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (N, L), got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty: it has shape {tuple(x.shape)}")
        if self.context is not None and x.shape[1] > self.context and not any_length:
            raise ValueError(f"{name} has rows of {x.shape[1]} characters, longer than the model's context "
                             f"({self.context}); cut them into windows")
        if x.is_floating_point() and (x != x.round()).any():  # NaN too
            row, col = (int(i) for i in (x != x.round()).nonzero()[0])
            raise ValueError(f"{name} holds {x[row, col].item():g} at row {row}, column {col}: ids of symbols "
                             "are whole numbers")
        bad = (x < 0) | (x >= self.vocab_size)
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{name} holds id {x[row, col].item()} at row {row}, column {col}, outside "
                             f"[0, {self.vocab_size}) for a vocabulary of {self.vocab_size} symbols")
        return x.long()

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, length={self.x_dim}" + (
            f", context={self.context}" if self.context else "")
