"""Sequence models of text: a character n-gram, an LSTM and a causal Transformer.

Each is a :class:`SequenceModel`: an exact chain rule over the positions of rows (N, L) of
character ids, written as ``conditional_logits(x) -> (N, L, V)``.
"""

from ppgen.models.sequence.base import SequenceModel, shift_right
from ppgen.models.sequence.lstm import CharLSTM
from ppgen.models.sequence.ngram import CharNGram
from ppgen.models.sequence.transformer import CharTransformer

__all__ = ["SequenceModel", "CharNGram", "CharLSTM", "CharTransformer", "shift_right"]
