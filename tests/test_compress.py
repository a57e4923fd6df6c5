"""Lossless compression: exact round trips, code lengths against the models' own likelihoods, batch-size
invariance, and one clear error per kind of bad input."""

import dataclasses
import functools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ppgen
from ppgen.cli import main
from ppgen.compression import CompressedFormatError, compress, decompress, model_fingerprint
from ppgen.compression import bitsback, container, exact
from ppgen.models import (
    FVSBN, MADE, NADE, VAE, BayesNet, ConditionalVAE, FullJointTable, IndependentBernoulli, PixelCNN,
)

BINARY = ("independent", "fvsbn", "nade", "made", "made_direct", "pixelcnn", "pixelcnn_ungated", "vae")
AUTOREGRESSIVE = ("fvsbn", "nade", "made", "made_direct", "pixelcnn", "pixelcnn_ungated")
EXACT = ("independent", "fvsbn", "nade", "made", "made_direct", "pixelcnn", "pixelcnn_ungated", "bayesnet")


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturbed(model, scale=0.7, seed=1):
    """Random weights, so that the conditionals are far from 1/2 and differ from pixel to pixel."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return model


def _crops(split: str, n: int) -> torch.Tensor:
    """Central 8 x 8 crops of the embedded digits, (n, 64) of 0/1 floats."""
    x = ppgen.load_dataset("digits", split).x[:n]
    return x.reshape(-1, 28, 28)[:, 10:18, 10:18].reshape(-1, 64).contiguous()


@functools.cache
def build(name: str, side: int = 4):
    """A small model of each kind over side x side pixels (``bayesnet``: 4 variables of 2-4 states)."""
    dim = side * side
    if name == "bayesnet":
        states = {"a": ["0", "1", "2"], "b": ["0", "1"], "c": ["0", "1", "2", "3"], "d": ["0", "1"]}
        net = BayesNet(states, {"b": ["a"], "c": ["a", "b"], "d": ["c"]})
        torch.manual_seed(0)
        rows = torch.stack([torch.randint(3, (400,)), torch.randint(2, (400,)), torch.randint(4, (400,)),
                            torch.randint(2, (400,))], 1).float()
        rows[:, 2] = (rows[:, 0] + rows[:, 1]) % 4  # a strong dependence, and a CPT with zeros
        return net.fit_mle(rows)
    if name == "independent":
        return IndependentBernoulli.from_frequencies(_crops("train", 500)[:, :dim] if side == 8 else
                                                     (torch.rand(200, dim) < 0.3).float(), pseudo_count=1.0)
    makers = {
        "fvsbn": lambda: FVSBN(dim, order="random"),
        "nade": lambda: NADE(dim, hidden=8, order="random"),
        "made": lambda: MADE(dim, hidden_sizes=(32, 16), order="random"),
        "made_direct": lambda: MADE(dim, hidden_sizes=(16,), order="random", direct=True),
        "pixelcnn": lambda: PixelCNN(channels=8, layers=3, kernel=3, height=side, width=side),
        "pixelcnn_ungated": lambda: PixelCNN(channels=8, layers=3, kernel=3, height=side, width=side, gated=False),
        "vae": lambda: VAE(dim, z_dim=3, hidden=16),
    }
    return _perturbed(makers[name](), scale=0.7 if side == 4 else 0.25)  # 8 x 8: few probabilities below 2**-16


def _bayesnet_rows(n: int, seed: int = 0) -> torch.Tensor:
    return build("bayesnet").sample(n) if n else torch.zeros(0, 4)


def _bits(model, x: torch.Tensor) -> float:
    """-log2 p(x) in total, from the model's own log_prob (float32, independent of the coder)."""
    with torch.no_grad():
        return float(-model.log_prob(x).double().sum() / math.log(2))


HEADER = len(compress(build("independent"), torch.zeros(0, 16)))  # a header with an empty stream


# --- round trips ------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(BINARY), data=st.data())
def test_round_trip_random_binary(name, data):
    model = build(name)
    n = data.draw(st.integers(0, 9), label="n")
    dtype = data.draw(st.sampled_from([np.uint8, np.float32, np.float64, np.bool_, np.int64]), label="dtype")
    shape = data.draw(st.sampled_from([(16,), (4, 4), (2, 8)]), label="shape")
    x = data.draw(hnp.arrays(dtype, (n, *shape), elements=st.sampled_from([0, 1])), label="x")
    back = decompress(model, compress(model, x, batch_size=data.draw(st.integers(1, 10), label="batch")))
    assert back.dtype == torch.from_numpy(x).dtype and tuple(back.shape) == x.shape
    assert np.array_equal(back.numpy(), x)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(0, 30), seed=st.integers(0, 2**31))
def test_round_trip_bayesnet(n, seed):
    torch.manual_seed(seed)
    x = _bayesnet_rows(n)
    model = build("bayesnet")
    assert torch.equal(decompress(model, compress(model, x)), x)


@pytest.mark.parametrize("name", EXACT[:-1] + ("vae",))
def test_round_trip_real_digits(name):
    model = build(name, side=8)
    x = _crops("test", 60)
    assert torch.equal(decompress(model, compress(model, x, batch_size=25), batch_size=7), x)
    assert torch.equal(decompress(model, compress(model, x[:1])), x[:1])  # a single image


def test_empty_batch_gives_an_empty_result():
    for name in ("fvsbn", "vae", "bayesnet"):
        model = build(name)
        empty = torch.zeros(0, model.x_dim, dtype=torch.float64)
        data = compress(model, empty)
        assert len(data) == HEADER
        back = decompress(model, data)
        assert back.shape == (0, model.x_dim) and back.dtype == torch.float64


# --- code length ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXACT)
def test_code_length_is_the_models_nll(name):
    """Range coding spends -log2 p(x) bits, within 1% + 64 bytes (header excluded), on 200 images."""
    if name == "bayesnet":
        model, x = build(name), _bayesnet_rows(400)
    else:
        model, x = build(name, side=8), _crops("test", 200)
    nll = _bits(model, x)
    code = 8 * (compress(model, x).model_bytes - HEADER)  # the code's length, also where plain storage is shorter
    assert abs(code - nll) <= 0.01 * nll + 8 * 64, (code, nll)


def test_bits_back_stream_grows_by_the_information_it_codes():
    """Per image the stack grows by -log2 p(x | z) + latent_bits * Z + log2 q(z | x) for the buckets z drawn
    (recovered by the decoder), computed here from the quantised densities: exactly, up to ANS's final state."""
    model = _perturbed(VAE(16, z_dim=2, hidden=16), scale=0.5)
    torch.manual_seed(3)
    x = (torch.rand(300, 16) < 0.3).double()
    data = compress(model, x, seed=5, fallback=False)  # a random model: its code, not plain storage
    header, words = container.unpack(data)
    m64 = exact.float64_copy(model)
    back, buckets = bitsback.decode_bbans(m64, words, len(x), seed=5, init_words=header.init_words, prob_bits=16,
                                          latent_bits=bitsback.LATENT_BITS, q_bits=bitsback.Q_BITS,
                                          return_buckets=True)
    assert torch.equal(back, x)
    edges, centres = bitsback.prior_buckets(bitsback.LATENT_BITS)
    with torch.no_grad():
        loc, scale = m64.posterior_params(x)
        counts = torch.from_numpy(bitsback.posterior_counts(loc, scale, edges, bitsback.Q_BITS))  # (N, Z, 256)
        p1 = torch.from_numpy(exact.quantised_probs(m64.decoder(centres[torch.from_numpy(buckets)]), 16))
    log2_q = (counts.gather(-1, torch.from_numpy(buckets)[..., None])[..., 0] / 2**bitsback.Q_BITS).log2().sum(-1)
    log2_px = (x * p1.log2() + (1 - x) * (1 - p1).log2()).sum(-1)
    information = float((-log2_px + 2 * bitsback.LATENT_BITS + log2_q).sum())
    grown = 32 * (len(words) - header.init_words)
    assert abs(grown - information) <= 64 + 0.002 * information, (grown, information)


def test_bits_back_on_digits_costs_the_negative_elbo():
    """A VAE trained for a few seconds on the digits: the stream (initial words included) is within 2% of
    the total -ELBO in bits, a Monte Carlo estimate computed here from the model's own densities."""
    torch.manual_seed(0)
    vae = VAE(784, z_dim=8, hidden=64)
    train = ppgen.load_dataset("digits", "train").x
    optim = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for epoch in range(2):
        for batch in train[torch.randperm(len(train))].split(100):
            loc, scale = vae.posterior_params(batch)
            z = loc + scale * torch.randn_like(loc)
            kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)
            loss = (kl - vae.likelihood_dist(z).log_prob(batch)).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
    x = ppgen.load_dataset("digits", "test").x[:300]
    with torch.no_grad():
        loc, scale = vae.posterior_params(x)
        z = torch.distributions.Normal(loc, scale).sample((200,))
        log_w = (vae.likelihood_dist(z).log_prob(x) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 - torch.distributions.Normal(loc, scale).log_prob(z).sum(-1))
    neg_elbo = float(-log_w.mean(0).sum() / math.log(2))
    data = compress(vae, x)
    stream = 8 * (len(data) - HEADER)
    assert abs(stream - neg_elbo) <= 0.02 * neg_elbo, (stream, neg_elbo)
    assert torch.equal(decompress(vae, data), x)


# --- precision: batch size and encoder/decoder paths ------------------------------------------------------------


@pytest.mark.parametrize("name", BINARY + ("bayesnet",))
def test_batch_of_1_and_batch_of_100_give_identical_bytes(name):
    if name == "bayesnet":
        model, x = build(name), _bayesnet_rows(100)
    else:
        model, x = build(name, side=8), _crops("valid", 100)
    one = compress(model, x, batch_size=1)
    assert one == compress(model, x, batch_size=100) == compress(model, x, batch_size=33)
    assert torch.equal(decompress(model, one, batch_size=100), x)


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
def test_encoder_and_decoder_compute_the_same_quantised_conditionals(name):
    """The encoder's teacher-forced pass (batch 200) and the decoder's sequential steps (batch 1 and 200)
    may differ in the last float bits; after quantisation they must agree exactly, value for value."""
    model = exact.float64_copy(build(name, side=8))
    torch.manual_seed(0)
    x = torch.cat([_crops("valid", 100), (torch.rand(100, 64) < 0.5).float()]).double()
    encoder = exact.exact_probs(model, x, batch_size=200, bits=16)  # (N, D) in coding order
    order = model.orders[0].tolist()
    for rows in (slice(0, 200), *(slice(i, i + 1) for i in range(0, 200, 20))):
        chunk = x[rows]
        step = model._stepper(len(chunk), 0)
        decoder = np.stack([exact.quantised_probs(step(chunk, i), 16) for i in range(len(order))], 1)
        assert np.array_equal(decoder, encoder[rows])
    assert ((0 < encoder) & (encoder < 1)).all()


def test_quantised_probabilities_never_vanish():
    p = exact.quantised_probs(torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=torch.float64), 16)
    assert p.tolist() == [2**-16, 2**-16, 0.5, 1 - 2**-16, 1 - 2**-16]
    counts = bitsback.posterior_counts(torch.tensor([0.005, 40.0]), torch.tensor([1e-3, 1e-3]),
                                       bitsback.prior_buckets(8)[0], 20)
    assert (counts >= 1).all() and (counts.sum(-1) == 2**20).all()
    assert counts[0].argmax() == 128 and counts[0].max() > 2**20 - 512  # all mass in one central bucket
    assert counts[1].argmax() == 255  # z = 40 is in the last bucket


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream():
    model = build("fvsbn")
    torch.manual_seed(0)
    x = (torch.rand(20, 16) < 0.5).float()
    return model, x, compress(model, x)


def _flip(data: bytes, position: int) -> bytes:
    return data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1:]


@pytest.mark.parametrize("damage, message", [
    (lambda d: b"GIF89a" + d[6:], "not a ppgen compressed stream"),
    (lambda d: d[:30], "truncated stream: 30 bytes end inside the header"),
    (lambda d: d[:HEADER + 3], "truncated stream: the header announces"),
    (lambda d: d[:-4], "truncated stream: the header announces"),
    (lambda d: d[:4] + bytes([container.FORMAT_VERSION + 1]) + d[5:], "format version 2 is from a newer ppgen"),
    (lambda d: _flip(d, 50), "corrupt header"),
    (lambda d: _flip(d, len(d) - 2), "corrupt stream"),
    (lambda d: d + b"\0\0\0\0", "4 unexpected bytes after the coded data"),
])
def test_each_damage_gets_its_own_error(stream, damage, message):
    model, _, data = stream
    with pytest.raises(CompressedFormatError, match=message):
        decompress(model, damage(data))


def test_another_model_is_refused_before_decoding(stream):
    model, _, data = stream
    other = _perturbed(FVSBN(16, order="random"), seed=2)
    with pytest.raises(CompressedFormatError, match="compressed with a different model"):
        decompress(other, data)
    with pytest.raises(CompressedFormatError, match="compressed with a different model"):
        decompress(build("nade"), data)


def test_the_fingerprint_survives_saving_and_loading(stream):
    model, x, data = stream
    clone = FVSBN(16, order="random")
    clone.load_state_dict(model.state_dict())
    assert model_fingerprint(clone) == model_fingerprint(model)
    assert torch.equal(decompress(clone, data), x)


def test_a_decoder_that_drifts_is_caught_by_the_digest(stream):
    model, x, data = stream
    header, words = container.unpack(data)
    forged = container.pack(dataclasses.replace(header, data_digest=b"\1" * 8), words)
    with pytest.raises(CompressedFormatError, match="fail the stream's digest"):
        decompress(model, forged)
    vae = build("vae")
    header, words = container.unpack(compress(vae, x, fallback=False))
    with pytest.raises(CompressedFormatError, match="did not end on the initial words"):
        decompress(vae, container.pack(dataclasses.replace(header, seed=header.seed + 1), words))


@pytest.mark.parametrize("name, bad, message", [
    ("fvsbn", lambda x: x.index_put((torch.tensor([3]), torch.tensor([5])), torch.tensor(0.5)),
     r"x\[3\] holds 0.5 at flat position 5, expected 0 or 1"),
    ("vae", lambda x: x.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("nan"))),
     r"x\[0\] holds nan at flat position 0, expected 0 or 1"),
    ("fvsbn", lambda x: x - 1, r"holds -1 at flat position 0, expected 0 or 1"),
    ("bayesnet", lambda x: x.index_put((torch.tensor([1]), torch.tensor([1])), torch.tensor(2.0)),
     r"x\[1\] holds 2 at flat position 1, expected a state index of 'b' \(an integer in 0..1"),
    ("bayesnet", lambda x: x.index_put((torch.tensor([0]), torch.tensor([2])), torch.tensor(-1.0)),
     "missing entries"),
    ("fvsbn", lambda x: x[:, :15], r"x must have shape \(N, ...\) with 16 values per image"),
    ("fvsbn", lambda x: x[0], r"x must have shape \(N, ...\)"),
])
def test_bad_data_is_refused(name, bad, message):
    model = build(name)
    x = _bayesnet_rows(5) if name == "bayesnet" else torch.zeros(5, 16)
    with pytest.raises(ValueError, match=message):
        compress(model, bad(x))


def test_unsupported_models_say_why():
    with pytest.raises(TypeError, match="compress supports .* Flows and diffusion models are not coded yet"):
        compress(FullJointTable(3), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="got ConditionalVAE"):
        compress(ConditionalVAE(16, y_dim=2, z_dim=2, hidden=4), torch.zeros(2, 16))
    with pytest.raises(ValueError, match="mask ensemble"):
        compress(MADE(16, hidden_sizes=(8,), num_masks=2), torch.zeros(2, 16))
    with pytest.raises(ValueError, match="likelihood='gaussian'"):
        compress(VAE(16, z_dim=2, hidden=4, likelihood="gaussian"), torch.zeros(2, 16))
    with pytest.raises(TypeError, match="torch.Tensor or a NumPy array"):
        compress(build("fvsbn"), [[0] * 16])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        compress(build("fvsbn"), torch.zeros(2, 16), batch_size=0)


# --- command line ------------------------------------------------------------------------------------------------


def test_cli_compress_and_decompress(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    model = IndependentBernoulli.from_frequencies(ppgen.load_dataset("digits", "train").x, pseudo_count=1.0)
    torch.save(model.state_dict(), run / "model.pt")
    (run / "config.json").write_text(json.dumps({"model": "independent", "options": {}, "data": "digits",
                                                 "root": None}))
    x = ppgen.load_dataset("digits", "test").x[:50].numpy().astype(np.uint8)
    np.save(tmp_path / "in.npy", x)
    assert main(["compress", str(run), str(tmp_path / "in.npy"), str(tmp_path / "out.ppz")]) == 0
    line = capsys.readouterr().out
    size = (tmp_path / "out.ppz").stat().st_size
    nll = _bits(model, torch.from_numpy(x).float()) / x.size
    assert f"into {size:,} bytes: {8 * size / x.size:.4f} bits/dim; model NLL {nll:.4f} bits/dim" in line
    assert main(["decompress", str(run), str(tmp_path / "out.ppz"), str(tmp_path / "back.npy")]) == 0
    back = np.load(tmp_path / "back.npy")
    assert back.dtype == np.uint8 and np.array_equal(back, x)
    assert "decompressed 50 images" in capsys.readouterr().out
    (tmp_path / "bad.ppz").write_bytes((tmp_path / "out.ppz").read_bytes()[:-8])
    assert main(["decompress", str(run), str(tmp_path / "bad.ppz"), str(tmp_path / "b.npy")]) == 2
    assert "ppgen decompress: error: truncated stream" in capsys.readouterr().err
