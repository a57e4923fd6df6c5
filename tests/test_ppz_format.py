""".ppz streams under attack, and plain storage: every damaged or crafted stream (byte flips, truncations,
headers crafted with their CRC recomputed, field by field) decodes to the original or is refused with a
CompressedFormatError, quickly and before a crafted size is allocated; data the model would code in more than
their own bytes are stored plainly; models compress cannot code are refused with a ValueError."""

import dataclasses
import json
import math
import random
import struct
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ppgen
from ppgen.cli import build_model, main
from ppgen.compression import (CompressedFormatError, PlainStorageWarning, UnsupportedModelError, compress,
                               decompress)
from ppgen.compression import container, stored
from ppgen.models import FVSBN, VAE, BayesNet, FlowPriorVAE, IAFVAE, IndependentBernoulli
from test_compress import _perturbed  # random weights: conditionals far from 1/2


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the layout, read and written a second time (from the table in container's docstring) ----------------------


def parse(data: bytes) -> tuple[dict, bytes]:
    """The header's fields and the stream of a well-formed file."""
    pos = 38
    ndim = data[pos]
    shape = list(struct.unpack_from(f"<{ndim}I", data, pos + 1))
    pos += 1 + 4 * ndim
    count, length = struct.unpack_from("<QB", data, pos)
    dtype = data[pos + 9:pos + 9 + length]
    pos += 9 + length
    prob_bits, latent_bits, seed, init_words = struct.unpack_from("<BBQI", data, pos)
    num_words, stream_crc = struct.unpack_from("<QI", data, pos + 22)
    return (dict(version=data[4], method=data[5], fingerprint=data[6:38], shape=shape, count=count, dtype=dtype,
                 prob_bits=prob_bits, latent_bits=latent_bits, seed=seed, init_words=init_words,
                 digest=data[pos + 14:pos + 22], num_words=num_words, stream_crc=stream_crc), data[pos + 38:])


def write(f: dict, stream: bytes, *, stream_crc: int | None = None) -> bytes:
    """A file with the fields ``f`` and ``stream``, both CRCs recomputed (as a forger would)."""
    head = (b"PPGZ" + bytes([f["version"], f["method"]]) + f["fingerprint"]
            + struct.pack(f"<B{len(f['shape'])}I", len(f["shape"]), *f["shape"])
            + struct.pack("<QB", f["count"], len(f["dtype"])) + f["dtype"]
            + struct.pack("<BBQI", f["prob_bits"], f["latent_bits"], f["seed"], f["init_words"]) + f["digest"]
            + struct.pack("<QI", f["num_words"], zlib.crc32(stream) if stream_crc is None else stream_crc))
    return head + struct.pack("<I", zlib.crc32(head)) + stream


def crafted(data: bytes):
    """(label, file): every field set to values around and far beyond its range, CRCs recomputed; then the
    coded words damaged, shortened, lengthened, zeroed, reversed, with the CRCs and word count made to match."""
    f, stream = parse(data)
    n, w = f["count"], f["num_words"]
    values = {
        "version": [0, 2, 255], "method": [0, 1, 2, 3, 4, 255], "fingerprint": [bytes(32)],
        "shape": [[], [0], [17], [4, 5], [2**32 - 1], [65536, 65536], [1] * 40, [1] * 255, [4, 4], [16, 1],
                  [2, 2, 2, 2]],
        "count": [0, max(n - 1, 0), n + 1, 2 * n + 1, 2**31, 2**40, 2**63, 2**64 - 1],
        "dtype": [b"<U5", b"|O", b"zzz", b"", b"<c8", b"|V8", b"<M8[s]", b"\xff\xfe", b"f4", b"<f2", b">f4",
                  b"|b1", b"<i8", b"x" * 255],
        "prob_bits": [0, 1, 15, 17, 24, 25, 64, 255], "latent_bits": [0, 1, 7, 9, 16, 17, 31, 255],
        "seed": [1, 2**64 - 1], "init_words": [0, 1, 2**31, 2**32 - 1], "digest": [bytes(8)],
        "num_words": [0, max(w - 1, 0), w + 1, 2**62, 2**64 - 1],
    }
    for name, options in values.items():
        for value in options:
            if value != f[name]:
                yield f"{name}={value!r:.40}", write({**f, name: value}, stream)
    yield "stream_crc wrong", write(f, stream, stream_crc=f["stream_crc"] ^ 1)
    rng = random.Random(len(data))
    for _ in range(20 if stream else 0):
        at = rng.randrange(len(stream))
        yield f"stream byte {at} flipped", write(f, stream[:at] + bytes([stream[at] ^ rng.randrange(1, 256)])
                                                 + stream[at + 1:])
    for label, bad in (("zero words", bytes(len(stream))), ("0xff words", b"\xff" * len(stream)),
                       ("a word short", stream[:-4]), ("a word more", stream + b"\x01\0\0\0"),
                       ("words reversed", b"".join(stream[i:i + 4] for i in range(len(stream) - 4, -1, -4)))):
        yield label, write({**f, "num_words": len(bad) // 4}, bad)


def cases(data: bytes, seed: int = 0):
    """(label, file): every byte flipped (CRCs left as they are), every truncation, junk appended, and
    :func:`crafted`."""
    rng = random.Random(seed)
    for at in range(len(data)):
        yield f"byte {at} flipped", data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1:]
    for length in range(len(data)):
        yield f"truncated to {length}", data[:length]
    yield "junk appended", data + bytes(rng.randrange(256) for _ in range(7))
    yield from crafted(data)


# --- the streams attacked ----------------------------------------------------------------------------------------


def _bayesnet() -> BayesNet:
    """4 variables of 2-4 states, c = (a + b) mod 4: CPTs with zeros."""
    net = BayesNet({"a": ["0", "1", "2"], "b": ["0", "1"], "c": ["0", "1", "2", "3"], "d": ["0", "1"]},
                   {"b": ["a"], "c": ["a", "b"], "d": ["c"]})
    generator = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randint(k, (400,), generator=generator) for k in (3, 2, 4, 2)], 1).float()
    rows[:, 2] = (rows[:, 0] + rows[:, 1]) % 4
    return net.fit_mle(rows)


def _stored(model, x: torch.Tensor) -> bytes:
    """The stream compress writes when it stores ``x`` plainly (forced here, for a model that would code it)."""
    header, _ = container.unpack(compress(model, x, fallback=False))
    cards = model.cards if isinstance(model, BayesNet) else [2]
    values = x.reshape(len(x), -1).long().numpy()
    return container.pack(dataclasses.replace(header, method="stored", prob_bits=0, latent_bits=0, seed=0,
                                              init_words=0), stored.store(values, stored.value_bits(cards)))


@pytest.fixture(scope="module")
def streams():
    """name -> (model, x, file): each kind of stream compress writes, 20 images of 16 values (or 4 states)."""
    torch.manual_seed(0)
    bits = (torch.rand(20, 16) < 0.3).float()
    fvsbn, vae, net = _perturbed(FVSBN(16, order="random")), _perturbed(VAE(16, z_dim=3, hidden=16)), _bayesnet()
    independent = IndependentBernoulli.from_frequencies(bits, pseudo_count=1.0)
    states = net.sample(20)
    made = {"range (FVSBN)": (fvsbn, bits), "range (BayesNet)": (net, states), "bits-back (VAE)": (vae, bits),
            "range (IndependentBernoulli)": (independent, bits), "empty": (fvsbn, bits[:0])}
    # random models code these rows in more bits than plain storage: keep their code, the stream under attack
    out = {name: (model, x, bytes(compress(model, x, fallback=False))) for name, (model, x) in made.items()}
    out["stored (pixels)"] = (fvsbn, bits, _stored(fvsbn, bits))
    out["stored (BayesNet states)"] = (net, states, _stored(net, states))
    return out


# --- fuzzing -----------------------------------------------------------------------------------------------------


FUZZED = ("range (FVSBN)", "range (BayesNet)", "bits-back (VAE)", "range (IndependentBernoulli)", "empty",
          "stored (pixels)", "stored (BayesNet states)")


@pytest.mark.parametrize("name", FUZZED)
def test_every_damaged_or_crafted_stream_decodes_right_or_is_refused(streams, name):
    """Each case decodes to the original values (a forged header may give them another shape or dtype) or
    raises CompressedFormatError: no other exception, no wrong values, each case under a second."""
    model, x, data = streams[name]
    raw, silent, slow, tried = [], [], [], 0
    for label, case in cases(data):
        tried += 1
        start = time.perf_counter()
        try:
            back = decompress(model, case)
        except CompressedFormatError:
            pass
        except Exception as err:  # a raw error: what this test counts
            raw.append(f"{label}: {type(err).__name__}: {err}")
        else:
            if not (len(back) == len(x) and np.array_equal(back.double().reshape(-1).numpy(),
                                                           x.double().reshape(-1).numpy())):
                silent.append(label)
        if time.perf_counter() - start > 1.0:
            slow.append(label)
    assert tried > 200
    assert raw == [] and silent == [] and slow == [], (raw, silent, slow)


# --- each field, by name ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, fields, message", [
    ("range (FVSBN)", {"count": 2**40}, r"count is 1099511627776, expected at most 16,777,216 images of shape "
                                        r"\(16,\) \(MAX_VALUES"),
    ("range (FVSBN)", {"count": 2**63}, r"count is 9223372036854775808, expected at most"),
    ("range (FVSBN)", {"count": 2**23}, r"count is 8388608, expected at most [\d,]+: the stream's \d+ words hold "
                                        r"32 bits each, and an image costs at least 0.000352 bits"),
    ("range (FVSBN)", {"shape": [4, 5]}, r"shape is \(4, 5\), expected 16 values per image \(FVSBN's x_dim\)"),
    ("range (FVSBN)", {"shape": []}, r"ndim \(the axes of one image\) is 0, expected 1..31"),
    ("range (FVSBN)", {"shape": [1] * 40}, r"ndim \(the axes of one image\) is 40, expected 1..31"),
    ("range (FVSBN)", {"shape": [16, 0]}, r"shape is \(16, 0\), expected axes of at least 1, at most 268,435,456"),
    ("range (FVSBN)", {"shape": [65536, 65536]}, r"shape is \(65536, 65536\), expected axes of at least 1, at most"),
    ("range (FVSBN)", {"dtype": b"<U5"}, r"dtype is '<U5', expected one of \['<f2', "),
    ("range (FVSBN)", {"dtype": b"|O"}, r"dtype is '\|O', expected one of"),
    ("range (FVSBN)", {"dtype": b"zzz"}, r"dtype is 'zzz', expected one of"),
    ("range (FVSBN)", {"dtype": b"\xff"}, r"dtype is '\\\\xff', expected one of"),
    ("range (FVSBN)", {"prob_bits": 0}, r"prob_bits is 0, expected 1..16 for method 'range'"),
    ("range (FVSBN)", {"seed": 1}, r"seed is 1, expected 0 for method 'range'"),
    ("range (FVSBN)", {"method": 9}, r"corrupt header: version 1, method 9 \(expected version 1..1, method one of"),
    ("bits-back (VAE)", {"latent_bits": 0}, r"latent_bits is 0, expected 1..16 for method 'bbans'"),
    ("bits-back (VAE)", {"latent_bits": 17}, r"latent_bits is 17, expected 1..16 for method 'bbans'"),
    ("bits-back (VAE)", {"init_words": 2**31}, r"init_words is 2147483648, expected 4 for z_dim = 3"),
    ("bits-back (VAE)", {"count": 41}, r"count is 41, but the stream ends on its initial words after 20 images"),
    ("bits-back (VAE)", {"method": 1}, r"latent_bits is 8, expected 0 for method 'range'"),
    ("empty", {"num_words": 1}, r"stream_words is 1, expected 0 for a stream of no images"),
    ("stored (pixels)", {"num_words": 11}, r"stream_words is 11, expected 10 for 20 images of 16 values stored in 1 "),
    ("stored (pixels)", {"prob_bits": 16}, r"prob_bits is 16, expected 0 for method 'stored'"),
    ("range (BayesNet)", {"dtype": b"|b1"}, r"dtype is '\|b1', expected a type that holds the decoded values "
                                            r"\(up to 3\)"),
])
def test_each_crafted_field_is_named_and_refused_before_allocating(streams, name, fields, message):
    """The refusal names the field, its value and what was expected; numbers from the layout's own limits
    (an image of 16 binary values costs at least 16 * -log2(1 - 2**-16) = 0.000352 bits). Python's traced
    allocations (NumPy's included) stay under 1 MB: a crafted size is never allocated."""
    model, _, data = streams[name]
    f, stream = parse(data)
    f.update(fields)
    if "num_words" in fields:  # the stream as long as the header says, so that the count itself is checked
        stream = (stream + bytes(4 * f["num_words"]))[:4 * f["num_words"]]
    case = write(f, stream)
    tracemalloc.start()
    try:
        with pytest.raises(CompressedFormatError, match=message):
            decompress(model, case)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_stored_values_beyond_a_state_or_in_the_padding_are_refused(streams):
    model, x, data = streams["stored (BayesNet states)"]
    f, _ = parse(data)
    values = x.long().numpy().copy()
    values[3, 1] = 3  # b has 2 states; 3 fits in the 2 bits a value gets
    with pytest.raises(CompressedFormatError, match="stored value 3 of image 3 at flat position 1 is not one of "
                                                    "its 2 states"):
        decompress(model, write(f, stored.store(values, 2).astype("<u4").tobytes()))
    model, x, _ = streams["stored (pixels)"]
    data = _stored(model, x[:3])  # 48 bits in 2 words: 16 bits of padding
    assert torch.equal(decompress(model, data), x[:3])
    f, stream = parse(data)
    with pytest.raises(CompressedFormatError, match="the padding after the stored values is not zero"):
        decompress(model, write(f, stream[:-1] + b"\x80"))


# --- plain storage ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_fvsbn():
    """An FVSBN fitted to 1,000 digits (10 Adam steps on its conditionals' cross-entropy): sure enough of the
    digits that their negatives cost ~9 bits a pixel on the coder's grid (probabilities clipped at 2**-16)."""
    torch.manual_seed(0)
    model = FVSBN(784)
    optim = torch.optim.Adam(model.parameters(), lr=2e-2)
    for batch in ppgen.load_dataset("digits", "train").x[:1000].split(100):
        loss = F.binary_cross_entropy_with_logits(model.conditional_logits(batch), batch, reduction="sum")
        optim.zero_grad()
        loss.backward()
        optim.step()
    return model.requires_grad_(False)


def _code_bits(model, x: np.ndarray) -> float:
    """-log2 p(x) with the model's teacher-forced conditionals on the coder's grid: P(1) rounded to a
    multiple of 2**-16 in [2**-16, 1 - 2**-16] (NumPy, not the coder)."""
    logits = model.conditional_logits(torch.from_numpy(x).float()).double().numpy()
    p1 = np.clip(np.round(2**16 / (1 + np.exp(-logits))), 1, 2**16 - 1) / 2**16
    return float(-np.where(x == 1, np.log2(p1), np.log2(1 - p1)).sum())


HEADER = 93  # bytes before the stream of 784-pixel images stored as uint8 (checked below)


def test_data_unlike_the_training_data_are_stored_plainly(digits_fvsbn):
    """The negatives of 200 test digits: the model's code would exceed the uint8 array (8 bits a pixel), so
    compress stores 1 bit a pixel: the header + ceil(N D / 32) words exactly. What the model's code would have
    taken agrees with -log2 p(x) on the coder's grid (:func:`_code_bits`) within 64 bytes (the range coder's
    termination) + 0.1% (float32 conditionals here, float64 in the coder: a probability near a rounding
    boundary may fall the other way); the round trip is exact."""
    x = 1 - ppgen.load_dataset("digits", "test").x[:200].numpy().astype(np.uint8)
    assert len(compress(digits_fvsbn, x[:0])) == HEADER
    with pytest.warns(PlainStorageWarning, match="stored 200 images plainly, 1 bit"):
        data = compress(digits_fvsbn, x)
    assert data.method == "stored"
    assert len(data) == HEADER + 4 * math.ceil(200 * 784 / 32) <= HEADER + x.nbytes
    bits = _code_bits(digits_fvsbn, x)
    assert bits > 8 * x.nbytes and data.model_bytes > HEADER + x.nbytes
    assert abs(8 * (data.model_bytes - HEADER) - bits) <= 8 * 64 + 0.001 * bits, (data.model_bytes, bits)
    back = decompress(digits_fvsbn, data)
    assert back.dtype == torch.uint8 and np.array_equal(back.numpy(), x)


def test_a_code_longer_than_plain_storage_is_stored_even_below_the_array_size():
    """Inverted digits under the factorised model of the digits: about 6 bits a pixel, under the 32 of the float32
    array but over the 1 bit of plain storage, so compress stores them (it compared with the array before, and
    wrote 6x the plain size); fallback=False keeps the code, whose length is -log2 p(x) on the coder's grid
    (as in the test above: within 64 bytes + 0.1%)."""
    train = ppgen.load_dataset("digits", "train").x
    model = IndependentBernoulli.from_frequencies(train, pseudo_count=1.0)
    x = 1 - ppgen.load_dataset("digits", "test").x[:200]
    plain = HEADER + 4 * math.ceil(200 * 784 / 32)
    with pytest.warns(PlainStorageWarning, match="stored 200 images plainly, 1 bit"):
        data = compress(model, x)
    coded = compress(model, x, fallback=False)
    p1 = np.clip(np.round(2**16 * model.probs.detach().double().numpy()), 1, 2**16 - 1) / 2**16  # the coder's grid
    nll_bits = float(-np.where(x.numpy() == 1, np.log2(p1), np.log2(1 - p1)).sum())
    assert data.method == "stored" and len(data) == plain and coded.method == "range"
    assert len(coded) == data.model_bytes > 5 * plain
    assert abs(8 * (len(coded) - HEADER) - nll_bits) <= 8 * 64 + 0.001 * nll_bits
    assert torch.equal(decompress(model, data), x) and torch.equal(decompress(model, coded), x)


def test_random_bits_never_take_more_than_the_array(digits_fvsbn):
    """The issue's case (random bits for a model of the digits, which took 955,889 bytes for a 784,128-byte
    .npy): whether coded or stored, the file is at most the array plus the header, and decodes exactly."""
    x = (np.random.default_rng(0).random((200, 784)) < 0.5).astype(np.uint8)
    data = compress(digits_fvsbn, x)
    assert len(data) <= HEADER + x.nbytes and data.model_bytes >= len(data)
    assert np.array_equal(decompress(digits_fvsbn, data).numpy(), x)


def test_data_like_the_training_data_are_coded_without_a_warning(digits_fvsbn):
    x = ppgen.load_dataset("digits", "test").x[:200].numpy().astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlainStorageWarning)
        data = compress(digits_fvsbn, x)
    assert data.method == "range" and data.model_bytes == len(data) < HEADER + x.nbytes / 8


def test_big_endian_arrays_come_back_in_native_order(streams):
    model, x, _ = streams["range (FVSBN)"]
    big = x.numpy().astype(">f4")
    back = decompress(model, compress(model, big))
    assert back.dtype == torch.float32 and np.array_equal(back.numpy(), big)


# --- models compress cannot code -----------------------------------------------------------------------------------


SMALL = {"cvae": {"hidden": 8, "z_dim": 2}, "realnvp": {"hidden": 4}, "glow": {"levels": 1, "steps": 1, "hidden": 4},
         "maf": {"transforms": 1, "hidden": [8]}, "rbm": {"hidden": 4}, "ebm": {"hidden": [8]},
         "gan": {"z_dim": 2, "hidden": [8]}, "diffusion": {"num_steps": 10, "channels": 4},
         "binary-diffusion": {"num_steps": 10, "hidden": [8]}}


@pytest.mark.parametrize("name", [*SMALL, "flow-prior-vae", "iaf-vae"])
def test_models_it_cannot_code_are_refused_with_a_value_error(name):
    if name == "flow-prior-vae":
        model = FlowPriorVAE(784, z_dim=2, hidden=8, prior_transforms=1, prior_hidden=4)
    elif name == "iaf-vae":
        model = IAFVAE(784, z_dim=2, hidden=8, iaf_steps=1, iaf_hidden=4, context_dim=2)
    else:
        model = build_model(name, 784, **SMALL[name])
    expected = rf"compress supports FVSBN, NADE, MADE \(one mask\), PixelCNN, .*; got {type(model).__name__}"
    for call in (lambda: compress(model, torch.zeros(2, 784)), lambda: decompress(model, b"PPGZ")):
        with pytest.raises(UnsupportedModelError, match=expected) as caught:
            call()
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)  # TypeError as before


def test_cli_compress_with_a_flow_run_is_one_line_of_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save(build_model("maf", 784, **SMALL["maf"]).state_dict(), run / "model.pt")
    (run / "config.json").write_text(json.dumps({"model": "maf", "options": SMALL["maf"], "data": "digits",
                                                 "root": None, "x_dim": 784}))
    np.save(tmp_path / "in.npy", np.zeros((3, 784), dtype=np.uint8))
    assert main(["compress", str(run), str(tmp_path / "in.npy"), str(tmp_path / "out.ppz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppgen compress: error: compress supports") and "got MAF" in err
    assert len(err.strip().splitlines()) == 1
