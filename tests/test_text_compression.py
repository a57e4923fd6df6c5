"""Text compression with sequence models: exact round trips for every model type, the code length against
-log2 p computed by NumPy from the teacher-forced conditionals (not the coder's stepping), characters outside
the vocabulary coded by their code points, plain storage, and every damaged or crafted text stream refused."""

import copy
import dataclasses
import functools
import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.compression import (CompressedFormatError, PlainStorageWarning, compress, decompress, model_nll_bits,
                               model_fingerprint)
from ppgen.compression import container, stored, text as coding
from ppgen.data.text import Vocabulary
from ppgen.models import FVSBN
from ppgen.models.sequence import CharLSTM, CharNGram, CharTransformer
from test_ppz_format import cases, parse, write  # the .ppz layout read a second time, and its attacks

KINDS = ("ngram", "lstm", "transformer")
LETTERS = Vocabulary("abcdefghijklmnopqrstuvwxyz .,;:!?'ABCDEFGHIJ")  # 44 characters, 45 symbols: 6 bits stored


pytestmark = pytest.mark.usefixtures("one_thread")


def _peaked(model, scale: float, seed: int = 1):
    """Parameters drawn N(0, scale^2): conditionals far from uniform that differ from position to position."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
    return model.requires_grad_(False)


@functools.cache
def random_model(kind: str):
    """A tiny model of each kind over LETTERS with random parameters, in rows of 7 (a text is cut into several)."""
    make = {"ngram": lambda: CharNGram(LETTERS, order=2, length=7),
            "lstm": lambda: CharLSTM(LETTERS, length=7, hidden_size=8, num_layers=2),
            "transformer": lambda: CharTransformer(LETTERS, context=7, num_layers=2, num_heads=2, width=8)}
    return _peaked(make[kind](), scale={"ngram": 2.0, "lstm": 1.0, "transformer": 1.0}[kind])


@functools.cache
def shakespeare(split: str):
    return ppgen.load_dataset("shakespeare", split)


@functools.cache
def trained_model(kind: str):
    """A tiny model of each kind fitted to 6,000 characters of the training plays: the n-gram counted, the
    networks by 4 epochs of ppgen.fit (3.9 to 4.7 bits a character on the test plays: under the 7 bits of plain
    storage)."""
    train = shakespeare("train")
    vocabulary, ids = train.vocabulary, train.ids[:6000]
    if kind == "ngram":
        return CharNGram.fit_counts(ids[None], vocabulary, order=3, length=64)
    model = (CharLSTM(vocabulary, length=32, hidden_size=32, num_layers=1) if kind == "lstm" else
             CharTransformer(vocabulary, context=32, num_layers=1, num_heads=2, width=32))
    ppgen.fit(model, ids[:len(ids) // 32 * 32].view(-1, 32), epochs=4, batch_size=16, lr=1e-2, seed=0, progress=False)
    return model.requires_grad_(False)


def coded_bits(model, rows: list[torch.Tensor]) -> float:
    """-log2 of the rows under the coder's grid, in NumPy from the teacher-forced conditionals: each row's
    softmax in float64, rounded to counts of 2**-16, at least 1, renormalised."""
    total, model = 0.0, float64(model)
    for x in rows:
        logits = model.conditional_logits(x).detach().numpy()
        p = np.exp(logits - logits.max(-1, keepdims=True))
        counts = np.maximum(np.round(p / p.sum(-1, keepdims=True) * 2**16), 1)
        q = np.take_along_axis(counts, x.numpy()[..., None], -1)[..., 0] / counts.sum(-1)
        total -= np.log2(q).sum()
    return total


def float64(model):
    """A float64 copy (the cached models stay as they are)."""
    return copy.deepcopy(model).double()


def stream_words(data: bytes) -> int:
    return len(container.unpack(data)[1])


# --- round trips ------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), text=st.text(alphabet=LETTERS.characters, min_size=1, max_size=40))
def test_random_strings_of_the_vocabulary_round_trip(kind, text):
    model = random_model(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlainStorageWarning)  # a string the model finds unlikely is stored
        data = compress(model, text)
    assert decompress(model, data) == text


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), text=st.text(min_size=1, max_size=30))
def test_random_strings_of_any_characters_round_trip(kind, text):
    """Any Unicode text (surrogates aside: a str of them has no UTF-8), most characters outside the vocabulary."""
    model = random_model(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlainStorageWarning)
        data = compress(model, text)
    assert decompress(model, data) == text


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_hundred_characters_of_the_test_plays_round_trip_within_a_few_bits_of_their_probability(kind):
    model, text = trained_model(kind), shakespeare("test").text[1000:1700]
    data = compress(model, text)
    assert data.method == "text" and decompress(model, data) == text
    rows = coding.text_rows(model.vocabulary.encode(text), model.x_dim)
    assert [r.shape for r in rows] == [(700 // model.x_dim, model.x_dim), (1, 700 % model.x_dim)]
    nll, kind_of_bound = model_nll_bits(model, text)
    expected = -sum(float64(model).log_prob(r).sum().item() for r in rows) / math.log(2)
    assert kind_of_bound == "NLL" and nll == pytest.approx(expected, rel=1e-12)
    grid = coded_bits(model, rows)
    # rounding to 2**-16 moves -log2 p by well under a bit on 700 characters; the range coder adds at most
    # its two final words, and the stream is whole 32-bit words
    assert abs(grid - nll) < 1.0
    assert grid - 1 <= 32 * stream_words(data) <= grid + 64 + 1
    assert 2.5 < nll / len(text) < 5.5  # the fitted model, not uniform (log2 80 = 6.3 bits)


@pytest.mark.parametrize("kind", KINDS)
def test_rows_of_ids_round_trip_across_the_coders_batches(kind):
    """70 rows of 5 drawn from the model (more than the ROWS = 32 stepped together), the unknown symbol's id 0
    among them: coded (not stored), within the range coder's last two words of -log2 p on the coder's grid."""
    model = random_model(kind)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        x = model.sample(70, 5)
    x[4, 2] = 0
    assert coding.ROWS < 70
    data = compress(model, x.int())
    back = decompress(model, data)
    assert data.method == "text" and back.dtype == torch.int64 and torch.equal(back, x)
    grid = coded_bits(model, [x])
    assert grid - 1 <= 32 * stream_words(data) <= grid + 64 + 1


def test_a_text_longer_than_the_transformers_context_is_coded_in_rows_of_its_length():
    model = random_model("transformer")  # context 7
    text = "the quick brown fox, jumps over the lazy dog!"
    data = compress(model, text)
    assert decompress(model, data) == text
    model64, ids = float64(model), LETTERS.encode(text)
    expected = -(model64.log_prob(ids[:42].view(6, 7)).sum() + model64.log_prob(ids[42:][None]).sum()) / math.log(2)
    assert len(text) == 45 and model_nll_bits(model, text)[0] == pytest.approx(expected.item(), rel=1e-12)


def test_utf8_bytes_are_the_text_they_encode_and_the_bytes_come_back_as_that_text():
    vocabulary = Vocabulary("aé€😀 ")
    model = _peaked(CharLSTM(vocabulary, length=4, hidden_size=4, num_layers=1), 0.5)
    text = "é€ a😀€ éa"
    data = compress(model, text.encode("utf-8"))
    assert data == compress(model, text) and decompress(model, data) == text


# --- characters outside the vocabulary, bad input ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_characters_outside_the_vocabulary_cost_their_unknown_symbol_and_a_uniform_code_point(kind):
    """Each comes back as itself, the unknown symbol's replacement character included, at the model's -log2 p
    of the text's ids (the unknown symbol in its place) plus log2 0x110000 bits a character."""
    model = random_model(kind)
    with torch.random.fork_rng():  # letters likely under the model, so that the text is coded, not stored
        torch.manual_seed(0)
        likely = LETTERS.decode(model.sample(1, 56)[0].clamp(min=1))
    odd = "éZ\U0001F600é\ufffdZë"  # "Z" is no letter of LETTERS; \ufffd is what the unknown symbol prints as
    text = "".join(likely[8 * i:8 * i + 8] + odd[i] for i in range(7))
    ids = LETTERS.encode(text, errors="replace")
    assert int((ids == 0).sum()) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # coded, not stored
        data = compress(model, text)
    assert data.method == "text" and decompress(model, data) == text
    rows = coding.text_rows(ids, model.x_dim)
    nll = -sum(float64(model).log_prob(r).sum().item() for r in rows) / math.log(2)
    assert coding.ESCAPE_BITS == pytest.approx(20.087, abs=1e-3)
    assert model_nll_bits(model, text) == (pytest.approx(nll + 7 * coding.ESCAPE_BITS, rel=1e-12), "NLL")
    # constriction's uniform rounds 1 / 0x110000 to its 24-bit grid (15 or 16 parts of 2**24: 20.0 to 20.1 bits)
    grid = coded_bits(model, rows)
    assert grid + 7 * 20.0 - 1 <= 32 * stream_words(data) <= grid + 7 * 20.1 + 64 + 1
    # stored, they follow the ids in 21 bits each
    sure = _peaked(CharLSTM(LETTERS, length=7, hidden_size=8, num_layers=2), 30.0)  # and wrong: stored
    with pytest.warns(PlainStorageWarning):
        stored_data = compress(sure, text)
    assert stored_data.method == "stored" and decompress(sure, stored_data) == text
    assert stream_words(stored_data) == math.ceil(len(text) * 6 / 32) + math.ceil(7 * 21 / 32)


def test_bad_text_is_refused_naming_what_is_wrong():
    model = random_model("lstm")
    with pytest.raises(ValueError, match="text is empty"):
        compress(model, "")
    with pytest.raises(ValueError, match="text is bytes that are not UTF-8 text: byte 0xff at offset 2"):
        compress(model, b"ab\xff")
    with pytest.raises(TypeError, match="a text needs a model built with a Vocabulary"):
        compress(_peaked(CharLSTM(5, length=4, hidden_size=4, num_layers=1), 0.5), "ab")
    with pytest.raises(ValueError, match=r"x holds id 45 at row 0, column 1, outside \[0, 45\)"):
        compress(model, torch.tensor([[1, 45]]))
    with pytest.raises(ValueError, match="longer than the model's context"):
        compress(random_model("transformer"), torch.zeros(2, 8, dtype=torch.long))


# --- plain storage -------------------------------------------------------------------------------------------------


def test_text_the_model_would_code_in_more_bits_is_stored_plainly():
    """The fitted n-gram against uniformly random letters: about 8 bits a character, more than the 7 of plain
    storage (80 symbols), so the characters are stored, the stream never longer than them plus the header."""
    model = trained_model("ngram")
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list(model.vocabulary.characters), 500))
    with pytest.warns(PlainStorageWarning, match="compress stored 500 characters plainly, 7 bit"):
        data = compress(model, text)
    assert model_nll_bits(model, text)[0] > 7 * 500  # the reason: the model's -log2 p beats plain storage
    assert data.method == "stored" and data.model_bytes > len(data)
    assert stream_words(data) == math.ceil(500 * 7 / 32)
    assert decompress(model, data) == text


# --- damaged and crafted streams ---------------------------------------------------------------------------------


@functools.cache
def streams():
    """name -> (model, what was compressed, stream): a text coded and stored (forced), and rows of ids coded."""
    model = random_model("lstm")
    with torch.random.fork_rng():  # text and rows likely under the model: coded, not stored
        torch.manual_seed(0)
        text, rows = LETTERS.decode(model.sample(1, 42)[0].clamp(min=1)), model.sample(3, 6)  # not the unknown id 0
    escaped = text[:20] + "é" + text[20:] + "\U0001F600"  # two characters outside the vocabulary
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coded_text, coded_rows, coded_escaped = compress(model, text), compress(model, rows), compress(model, escaped)
    found = {"text": (model, text, bytes(coded_text)), "rows": (model, rows, bytes(coded_rows)),
             "escaped text": (model, escaped, bytes(coded_escaped))}
    for name in ("text", "escaped text"):
        header, _ = container.unpack(found[name][2])
        ids, _, points = coding.text_ids(model, found[name][1])
        plain = coding.store_text(ids[None], points, stored.value_bits([len(LETTERS)]))
        found[f"stored {name}"] = (model, found[name][1],
                                   container.pack(dataclasses.replace(header, method="stored", prob_bits=0), plain))
    return found


@pytest.mark.parametrize("name", ["text", "stored text", "rows", "escaped text", "stored escaped text"])
def test_every_damaged_or_crafted_text_stream_decodes_right_or_is_refused(name):
    model, original, data = streams()[name]
    assert decompress(model, data) == original if isinstance(original, str) else \
        torch.equal(decompress(model, data), original)
    raw, silent, tried = [], [], 0
    for label, case in cases(data):
        tried += 1
        try:
            back = decompress(model, case)
        except CompressedFormatError:
            continue
        except Exception as err:  # a raw error: what this test counts
            raw.append(f"{label}: {type(err).__name__}: {err}")
            continue
        ids = LETTERS.encode(original, errors="replace") if isinstance(original, str) else original
        # the original, or its ids where a forged header says rows of ids (as an image's dtype may be forged)
        if not (isinstance(back, str) and back == original
                or isinstance(back, torch.Tensor) and back.reshape(-1).tolist() == ids.reshape(-1).tolist()):
            silent.append(label)
    assert tried > 200
    assert raw == [] and silent == [], (raw, silent)


@pytest.mark.parametrize("fields, message", [
    ({"shape": [2**28]}, r"shape is \(268435456,\), expected \(T,\) with T at most [\d,]+: the stream's \d+ words "
                         r"hold 32 bits each, and a character costs at least"),
    ({"count": 2}, r"\(count, shape\) is \(2, \(42,\)\), expected \(1, \(T,\)\): one text of T characters"),
    ({"shape": [6, 7]}, r"\(count, shape\) is \(1, \(6, 7\)\), expected \(1, \(T,\)\)"),
    ({"dtype": b"<f4"}, r"dtype is '<f4', expected 'str' \(a text\) or '<i8' \(rows of ids\) for method 'text'"),
    ({"prob_bits": 17}, r"prob_bits is 17, expected 1..16 for method 'text'"),
    ({"seed": 5}, r"seed is 5, expected 0 for method 'text'"),
])
def test_each_crafted_text_field_is_named_and_refused_before_allocating(fields, message):
    model, _, data = streams()["text"]
    f, stream = parse(data)
    f.update(fields)
    tracemalloc.start()
    try:
        with pytest.raises(CompressedFormatError, match=message):
            decompress(model, write(f, stream))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak  # 2**28 characters would take 2 GiB as int64 ids


def test_rows_longer_than_the_context_and_other_models_streams_are_refused():
    model, rows, data = streams()["rows"]
    f, stream = parse(data)
    transformer = random_model("transformer")
    with pytest.raises(CompressedFormatError, match="compressed with a different model"):
        decompress(transformer, data)
    with pytest.raises(CompressedFormatError, match="compressed with a different model"):
        decompress(model, compress(_peaked(CharLSTM(LETTERS, length=7, hidden_size=8, num_layers=2), 1.0, seed=2),
                                   "abc"))
    # the same weights in another vocabulary of as many symbols read other characters: another model
    other = CharLSTM(Vocabulary(LETTERS.characters[::-1]), length=7, hidden_size=8, num_layers=2)
    other.load_state_dict(model.state_dict())
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(CompressedFormatError, match="compressed with a different model"):
        decompress(other, streams()["text"][2])
    fvsbn = FVSBN(6)
    image = compress(fvsbn, torch.zeros(2, 6))
    with pytest.raises(CompressedFormatError, match="compressed with a different model"):
        decompress(model, image)
    forged = container.pack(dataclasses.replace(container.unpack(image)[0], fingerprint=model_fingerprint(model)),
                            container.unpack(image)[1])
    with pytest.raises(CompressedFormatError, match=r"the stream was coded by 'range', but CharLSTM decodes 'text'"):
        decompress(model, forged)
    f_long = {**f, "fingerprint": model_fingerprint(transformer), "shape": [8]}
    with pytest.raises(CompressedFormatError, match=r"shape is \(8,\), expected rows of at most 7 ids"):
        decompress(transformer, write(f_long, stream))
