"""A small causal Transformer over characters (GPT-2's block, nanoGPT's sizes), with a KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ppgen.checks import positive_int
from ppgen.data.text import Vocabulary
from ppgen.models.sequence.base import SequenceModel, Stepper, shift_right

__all__ = ["CharTransformer"]

Cache = list  # per layer: None, or the keys and values (N, heads, T, head width) of the positions read


class CharTransformer(SequenceModel):
    r"""Character-level causal Transformer (a GPT).

    Generative story, with x_0 the start symbol and positions t = 1..L <= T (the context):

    .. math::
        h^0_t = E[x_{t-1}] + P_t, \qquad
        h^{l} = h^{l-1} + \mathrm{MLP}(\mathrm{LN}(u^l)) \text{ with }
        u^l = h^{l-1} + \mathrm{Attn}(\mathrm{LN}(h^{l-1})),

    .. math::
        p(x_t \mid x_{<t}) = \mathrm{Categorical}(\mathrm{softmax}(E_{1..V} \, \mathrm{LN}(h^{\mathrm{layers}}_t))),

    where Attn is multi-head self-attention in which position t attends to positions <= t only,
    MLP is Linear(4 d) - GELU - Linear(d), E (V + 1 rows: V characters and the start) and the
    positional table P (T rows) are learned, and the read-out shares E's character rows (weight
    tying). About 12 d^2 per layer: 10.8 M parameters at the defaults (V = 80).

    The defaults are nanoGPT's ``shakespeare_char`` configuration (6 layers, 6 heads, width 384,
    context 256; 1.47 validation loss in nats per character, with dropout 0.2, on Karpathy's
    tiny-shakespeare). Sampling keeps each layer's keys and values (a KV cache) so that a new
    character costs one position; beyond the context it slides a window of T characters, as
    nanoGPT's ``generate`` does.

    References: A. Vaswani et al., "Attention Is All You Need", NeurIPS 2017; A. Radford et al.,
    "Language Models are Unsupervised Multitask Learners" (GPT-2), 2019; A. Karpathy, nanoGPT, 2023.

    Parameters
    ----------
    vocabulary : int or Vocabulary
    context : int
        T, the longest row (the positional table's size).
    length : int
        The rows' length L (see :class:`~ppgen.models.sequence.SequenceModel`); default T.
    num_layers, num_heads, width : int
        Blocks, attention heads, and the width d (a multiple of the heads).
    dropout : float
        Dropout on attention weights and residual branches in training mode (nanoGPT uses 0.2).
        ``fit`` trains in training mode and validates in evaluation mode, and ``log_likelihood``
        scores in evaluation mode; to sample without dropout, call ``model.eval()``.

    Examples
    --------
    >>> model = CharTransformer(5, context=8, num_layers=1, num_heads=2, width=8)
    >>> model.num_parameters, model.sample(2, 12).shape  # longer than the context: a sliding window
    (1000, torch.Size([2, 12]))
    """

    def __init__(self, vocabulary: int | Vocabulary, context: int = 256, length: int | None = None,
                 num_layers: int = 6, num_heads: int = 6, width: int = 384, dropout: float = 0.0):
        context = positive_int(context, "context")  # before the length it defaults
        super().__init__(vocabulary, context if length is None else length, context)
        width, num_heads, num_layers = (positive_int(value, name) for value, name in (
            (width, "width"), (num_heads, "num_heads"), (num_layers, "num_layers")))
        if width % num_heads:
            raise ValueError(f"width ({width}) must be a multiple of num_heads ({num_heads})")
        self.embed = nn.Embedding(self.vocab_size + 1, width)
        self.position = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(width, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)
        for name, p in self.named_parameters():  # GPT-2's initialisation, as nanoGPT's
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * num_layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif "norm" not in name:
                nn.init.zeros_(p)

    def conditional_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(shift_right(x, self.start))

    def _forward(self, inputs: torch.Tensor, cache: Cache | None = None, offset: int = 0) -> torch.Tensor:
        """Logits (N, k, V) after the input symbols ``inputs`` (N, k) at positions offset..offset+k-1,
        reading and extending ``cache`` where given."""
        if offset + inputs.shape[1] > self.context:
            raise ValueError(f"rows of {offset + inputs.shape[1]} positions are longer than the context "
                             f"({self.context})")
        positions = torch.arange(offset, offset + inputs.shape[1], device=inputs.device)
        h = self.drop(self.embed(inputs) + self.position(positions))  # (N, k, d)
        for i, block in enumerate(self.blocks):
            h = block(h, cache, i)
        return self.norm(h) @ self.embed.weight[:self.vocab_size].T  # (N, k, V)

    def _stepper(self, n: int) -> Stepper:
        history = torch.empty(n, 0, dtype=torch.long, device=self.device)
        cache: Cache = [None] * len(self.blocks)
        cached, window = 0, None  # positions in the cache; the sliding window once past the context

        def step(new: torch.Tensor) -> torch.Tensor:
            nonlocal history, cached, window
            if window is not None:
                return window(new)
            history = torch.cat([history, new], 1)
            if history.shape[1] >= self.context:  # the next position is past the positional table
                window = super(CharTransformer, self)._stepper(n)
                return window(history)
            if not cached:  # the start symbol comes first
                new = torch.cat([new.new_full((n, 1), self.start), new], 1)
            logits = self._forward(new, cache, offset=cached)[:, -1]
            cached += new.shape[1]
            return logits

        return step

    def extra_repr(self) -> str:
        attn = self.blocks[0].attn if len(self.blocks) else None
        return super().extra_repr() + (f", num_layers={len(self.blocks)}, num_heads={attn.num_heads}, "
                                       f"width={self.embed.embedding_dim}" if attn else "")


class _Block(nn.Module):
    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm_1, self.norm_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = _CausalSelfAttention(width, num_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU())
        self.mlp_proj = nn.Linear(4 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, cache: Cache | None, layer: int) -> torch.Tensor:
        h = h + self.attn(self.norm_1(h), cache, layer)
        return h + self.drop(self.mlp_proj(self.mlp(self.norm_2(h))))


class _CausalSelfAttention(nn.Module):
    def __init__(self, width: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, cache: Cache | None, layer: int) -> torch.Tensor:
        n, k, width = h.shape
        q, key, value = (t.view(n, k, self.num_heads, -1).transpose(1, 2)  # (N, heads, k, d / heads)
                         for t in self.qkv(h).split(width, -1))
        if cache is None or cache[layer] is None:
            mask, causal = None, True
        else:  # the new positions attend to every cached one and to the new ones up to themselves
            read = cache[layer][0].shape[2]
            key, value = torch.cat([cache[layer][0], key], 2), torch.cat([cache[layer][1], value], 2)
            mask = torch.arange(read + k, device=h.device) <= read + torch.arange(k, device=h.device)[:, None]
            causal = False
        if cache is not None:
            cache[layer] = (key, value)
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(out.transpose(1, 2).reshape(n, k, width)))
