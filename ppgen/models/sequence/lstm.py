"""The character LSTM (Graves 2013; Karpathy's char-rnn)."""

from __future__ import annotations

import torch
from torch import nn

from ppgen.checks import positive_int
from ppgen.data.text import Vocabulary
from ppgen.models.sequence.base import SequenceModel, Stepper, shift_right

__all__ = ["CharLSTM"]


class CharLSTM(SequenceModel):
    r"""Character-level LSTM language model.

    Generative story, with s_0 = the start symbol and (h_0, c_0) = 0:

    .. math::
        (h_t, c_t) = \mathrm{LSTM}(E[x_{t-1}], (h_{t-1}, c_{t-1})), \qquad
        p(x_t \mid x_{<t}) = \mathrm{Categorical}(\mathrm{softmax}(W h_t + b)),

    with E an embedding of the V + 1 input symbols (V characters and the start, x_0), a stack of
    ``num_layers`` LSTM layers of width H, and a linear read-out. The state carries the whole
    past, so rows of any length are scored. Parameters: (V + 1) H + 8 H^2 L + 8 H L + V (H + 1)
    (6.4 M for H = 512, L = 3, V = 80).

    The defaults are Karpathy's char-rnn Shakespeare network (3 layers of 512; "The Unreasonable
    Effectiveness of Recurrent Neural Networks", 2015), trained on rows of 100 characters as
    Graves (2013) truncated back-propagation through time.

    References: A. Graves, "Generating Sequences With Recurrent Neural Networks",
    arXiv:1308.0850, 2013; S. Hochreiter and J. Schmidhuber, "Long Short-Term Memory", 1997.

    Parameters
    ----------
    vocabulary : int or Vocabulary
    length : int
        The rows' length L (see :class:`~ppgen.models.sequence.SequenceModel`).
    hidden_size, num_layers : int
        H and the number of layers.
    dropout : float
        Dropout between LSTM layers while the module is in training mode (char-rnn uses 0.5 for
        its larger networks). ``fit`` trains in training mode and validates in evaluation mode, and
        ``log_likelihood`` scores in evaluation mode; to sample without dropout, call ``model.eval()``.

    Examples
    --------
    >>> model = CharLSTM(5, length=8, hidden_size=16, num_layers=1)
    >>> model.num_parameters, model.sample(2).shape
    (2357, torch.Size([2, 8]))
    """

    def __init__(self, vocabulary: int | Vocabulary, length: int = 100, hidden_size: int = 512,
                 num_layers: int = 3, dropout: float = 0.0):
        super().__init__(vocabulary, length)
        hidden_size, num_layers = positive_int(hidden_size, "hidden_size"), positive_int(num_layers, "num_layers")
        self.embed = nn.Embedding(self.vocab_size + 1, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden_size, self.vocab_size)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(shift_right(x, self.start)))  # (N, L, H)
        return self.head(hidden)  # (N, L, V)

    def _stepper(self, n: int) -> Stepper:
        state, begun = None, False

        def step(new: torch.Tensor) -> torch.Tensor:
            nonlocal state, begun
            if not begun:  # the start symbol comes first
                new, begun = torch.cat([new.new_full((n, 1), self.start), new], 1), True
            hidden, state = self.lstm(self.embed(new), state)
            return self.head(hidden[:, -1])

        return step

    def extra_repr(self) -> str:
        return super().extra_repr() + f", hidden_size={self.lstm.hidden_size}, num_layers={self.lstm.num_layers}"
