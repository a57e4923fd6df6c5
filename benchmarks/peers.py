"""ppgen's flows and diffusion model beside what a user would pick instead: normflows and denoising-diffusion-pytorch.

Three pairs on MNIST grey digits (8-bit levels), each trained by its own library's training loop at the same batch
size and learning rate, one thread:

- ``glow``: ``ppgen.models.flows.Glow`` against normflows' Glow (``nf.MultiscaleFlow`` of ``nf.flows.GlowBlock``,
  assembled as in normflows' Glow example) with the same levels, steps per level and hidden width.
- ``realnvp``: ``ppgen.models.flows.RealNVP`` against the same multi-scale RealNVP built from normflows' parts
  (``nf.flows.AffineCouplingBlock`` with checkerboard and channel splits, ``nf.flows.Squeeze``, ``nf.flows.Merge``).
- ``diffusion``: ``ppgen.models.diffusion.GaussianDiffusion`` against lucidrains' ``GaussianDiffusion`` + ``Unet``
  (``denoising_diffusion_pytorch``), the same T, linear schedule and noise-prediction objective (ppgen's
  ``loss="simple"``, the peer's ``objective="pred_noise"``), U-Nets of the same base width and multipliers.

Per pair: training throughput (images/s of each library's training loop, ``ppgen.fit`` for ppgen, measured in the
same run in alternating rounds after a warm-up round, each round ``--steps`` steps of ``--batch`` rows; the ratio
is ppgen / peer), then quality at equal CPU seconds: ppgen trains for ``--minutes`` (``fit``'s ``max_minutes``),
the peer for the CPU seconds ppgen used; then test bits/dim and FID/KID/precision/recall of ``--samples`` samples
in the shipped classifier's features (``sample_quality``, real = test rows, floor = training rows).

Bits/dim. Flows: -log p(y) / (784 ln 2) with y the same seeded dequantized test rows (``dequantize(levels, seed=0)``)
and p in pixel units (y in [0, 256)). ppgen's flows model y directly. normflows' flows are given x = y / 256 in
[0, 1) (its examples' scaling), so log p(y) = log p_nf(y / 256) - 784 ln 256 (the Jacobian of y -> y / 256);
:func:`check_pixel_units` asserts this conversion on untrained flows (every coupling the identity), whose density
is the closed form of the logit pre-processing and a standard normal. Diffusion: the negative ELBO of ppgen's
discretised decoder (all T terms, ``ppgen.log_likelihood``), for the peer by wrapping its trained ``Unet`` as
ppgen's ``network=`` (:class:`PeerDenoiser`: rows (B, 784) in [-1, 1] -> images (B, 1, 28, 28), ppgen's steps
1..T -> the peer's indices 0..T-1; both scale data to [-1, 1]; :func:`check_diffusion_conventions` asserts that
the two schedules and the two noisings agree).

Differences that remain (normflows allows no closer build):

- Coupling networks: ppgen's is a 3x3 conv, one residual block (ReLU, 3x3, ReLU, 1x1) and a zero-initialised 3x3
  conv; normflows' ``ConvNet2d`` is given the same layers ([3, 3, 1, 3], ReLUs between) but has no residual
  connection. (``GlowBlock`` fixes its network to 3x3, 1x1, 3x3, one 3x3 fewer than ppgen's, so the Glow steps
  are assembled from GlowBlock's own three flows instead.)
- Coupling scales: ppgen's Glow has its paper's code's sigmoid(raw + 2), on the way to z (``scale_map="sigmoid"``,
  its default since 2026-12-07; the ``glow-tanh`` pair has the tanh-bounded scale before it), normflows' Glow a
  sigmoid on the way to x (its default; this direction diverged in ppgen's); ppgen's RealNVP ``scale *
  tanh(raw)``, normflows' ``exp(raw)`` (``scale_map="exp"``, the RealNVP paper's).
- Checkerboard couplings: the ``realnvp`` pair's use ``checkerboard="packed"``, normflows' split into two
  half-width images (H, W/2), the network seeing the kept half only (normflows also alternates the board across
  channels, ppgen does not); ``realnvp-masked`` is ppgen's default, the paper's, whose network sees the full
  image with zeros in the moved half (twice the convolutions' work), against the same peer.
- Factored-out parts and the top: both a fixed standard normal here (``nf.distributions.DiagGaussian(...,
  trainable=False)``; normflows' example learns a class-conditional Gaussian per level). Both factor out the
  second half of the channels, the one the level's last coupling moved (ppgen's ``factor_out="second"``, its
  default since 2026-12-07; with the first half, ppgen's before, its RealNVP was 0.22-0.31 bits/dim behind per step).
- Pre-processing: the same logit with alpha = 0.05 (``nf.transforms.Logit(0.05)`` on [0, 1]).
- Diffusion U-Nets: the peer has two residual blocks per level (ppgen: ``num_blocks=2`` to match), a 7x7 input
  conv, linear attention at every finer level and full attention at the coarsest and the middle; ppgen has
  attention at the coarsest level only. 28 x 28 works unpadded for both with multipliers (1, 2, 2) (28 -> 14 -> 7).
  Both use the posterior variance in the reverse step (ppgen: ``variance="posterior"``); the peer's sampler clips
  its x_0 prediction to [-1, 1], ppgen's does not. The peer's own ``Trainer`` (image folders, EMA, accelerate)
  is not used: its README's loop, ``loss = diffusion(images); loss.backward()`` and Adam, is.

    OMP_NUM_THREADS=1 python benchmarks/peers.py --root ../shared/data --minutes 4
    python benchmarks/peers.py --minutes 0.2 --test-rows 50 --samples 50 --pairs glow     # a smoke run
    python benchmarks/peers.py --root ../shared/data --pairs realnvp --per-step 800    # learning per step, 4 seeds

Needs the ``bench`` extra (``pip install 'ppgen[bench]'``). Writes benchmarks/results/peers.json and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import sys
import time
import warnings
from pathlib import Path

import denoising_diffusion_pytorch as ddp
import normflows as nf
import torch
from torch import nn

import ppgen
from ppgen.inference.checkpoint import write_json_atomic
from ppgen.inference.sample_quality import sample_quality
from ppgen.models.diffusion import GaussianDiffusion
from ppgen.models.flows import Dequantized, Glow, RealNVP, dequantize

D, SHAPE, LEVELS = 784, (1, 28, 28), 256
DEFAULT_OUT = Path(__file__).parent / "results" / "peers.json"
PRESETS = {"glow": dict(levels=2, steps=4, hidden=32, blocks=1),
           "realnvp": dict(num_scales=2, hidden=32, blocks=1, checkerboard="packed"),  # normflows' split
           "realnvp-masked": dict(num_scales=2, hidden=32, blocks=1),  # the paper's (ppgen's default)
           "diffusion": dict(num_steps=200, channels=16, multipliers=(1, 2, 2))}
# ppgen's flows as they were before 2026-12-07: factoring out the half the level's last coupling did not move, and
# Glow's coupling scales bounded by tanh (glow-tanh: the tanh alone)
PRESETS["realnvp-first"] = {**PRESETS["realnvp"], "factor_out": "first"}
PRESETS["glow-tanh"] = {**PRESETS["glow"], "scale_map": "tanh"}
PRESETS["glow-first"] = {**PRESETS["glow-tanh"], "factor_out": "first"}


# --- normflows -------------------------------------------------------------------------------------------------

def _net(c_in: int, c_out: int, hidden: int) -> nf.nets.ConvNet2d:
    """normflows' coupling network with ppgen's layers (3x3, 3x3, 1x1, zero-initialised 3x3; ReLUs between),
    returning shift and scale for ``c_out`` channels."""
    return nf.nets.ConvNet2d([c_in, hidden, hidden, hidden, 2 * c_out], [3, 3, 1, 3], leaky=0.0, init_zeros=True)


def nf_glow(levels: int, steps: int, hidden: int) -> nf.MultiscaleFlow:
    """normflows' Glow example for (1, 28, 28): level 0 is the coarsest, generated first; each level is ``steps``
    Glow steps then an (un)squeeze, and every level after the first merges in its own factored-out part. A step is
    ``nf.flows.GlowBlock``'s three flows (coupling with a sigmoid scale, LU 1x1 convolution, actnorm, in normflows'
    generative order) with :func:`_net` as the coupling network instead of GlowBlock's fixed 3x3, 1x1, 3x3."""
    c, h, w = SHAPE
    q0, merges, flows = [], [], []
    for i in range(levels):
        width = c * 2 ** (levels + 1 - i)
        flows.append([flow for _ in range(steps) for flow in (
            nf.flows.AffineCouplingBlock(_net((width + 1) // 2, width // 2, hidden), scale=True, scale_map="sigmoid",
                                         split_mode="channel"),
            nf.flows.Invertible1x1Conv(width, use_lu=True), nf.flows.ActNorm((width, 1, 1)))] + [nf.flows.Squeeze()])
        if i == 0:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        else:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        q0.append(nf.distributions.DiagGaussian(latent, trainable=False))
    return nf.MultiscaleFlow(q0, flows, merges, transform=nf.transforms.Logit(0.05), class_cond=False)


def _coupling(channels: int, hidden: int, split_mode: str) -> nf.flows.AffineCouplingBlock:
    """RealNVP's affine coupling (``exp`` scale) on a checkerboard or channel split of ``channels``."""
    c_out = channels if split_mode.startswith("checkerboard") else channels // 2
    c_in = channels if split_mode.startswith("checkerboard") else channels - c_out
    return nf.flows.AffineCouplingBlock(_net(c_in, c_out, hidden), scale=True, scale_map="exp", split_mode=split_mode)


def nf_realnvp(hidden: int) -> nf.MultiscaleFlow:
    """ppgen's two-scale RealNVP from normflows' parts, in normflows' generative order: the coarse scale (4
    checkerboard couplings on (2, 14, 14)), then merge the factored-out (2, 14, 14), 3 channel couplings on
    (4, 14, 14), unsqueeze to (1, 28, 28) and 3 checkerboard couplings."""
    boards = ("checkerboard", "checkerboard_inv")
    coarse = [_coupling(2, hidden, boards[i % 2]) for i in range(4)]
    fine = ([_coupling(4, hidden, ("channel", "channel_inv")[i % 2]) for i in range(3)] + [nf.flows.Squeeze()]
            + [_coupling(1, hidden, boards[i % 2]) for i in range(3)])
    q0 = [nf.distributions.DiagGaussian((2, 14, 14), trainable=False) for _ in range(2)]
    return nf.MultiscaleFlow(q0, [coarse, fine], [nf.flows.Merge()], transform=nf.transforms.Logit(0.05),
                             class_cond=False)


def nf_log_prob(flow: nf.MultiscaleFlow, y: torch.Tensor) -> torch.Tensor:
    """log p(y) in pixel units (y in [0, 256)^784, rows) from normflows' density of x = y / 256 on [0, 1)."""
    return flow.log_prob((y / LEVELS).view(-1, *SHAPE), None) - D * math.log(LEVELS)


def nf_samples(flow: nf.MultiscaleFlow, n: int) -> torch.Tensor:
    """``n`` samples as levels 0..255, rows."""
    with torch.no_grad():
        x = torch.cat([flow.sample(min(250, n - i))[0] for i in range(0, n, 250)])
    return (x.flatten(1) * LEVELS).nan_to_num(0.0).floor().clamp(0, LEVELS - 1)


def check_pixel_units() -> dict:
    """Assert :func:`nf_log_prob` on an untrained normflows RealNVP (zero-initialised couplings: the identity after
    the logit) against the closed form sum_i log N(h_i) + log(1 - 2a) - log 256 - log s_i - log(1 - s_i), with
    s = a + (1 - 2a) y / 256 and h = logit(s), and against ppgen's untrained RealNVP, whose density is the same."""
    torch.manual_seed(0)
    y = dequantize(torch.randint(0, LEVELS, (8, D)).float(), seed=0).double()
    a = 0.05
    s = a + (1 - 2 * a) * y / LEVELS
    h = torch.log(s) - torch.log1p(-s)
    closed = (-0.5 * h ** 2 - 0.5 * math.log(2 * math.pi) + math.log(1 - 2 * a) - math.log(LEVELS)
              - torch.log(s) - torch.log1p(-s)).sum(1)
    with torch.no_grad():
        peer = nf_log_prob(nf_realnvp(8).double(), y)
        ours = RealNVP(D, num_scales=2, hidden=8, blocks=1).double().log_prob(y)
    errors = {"normflows_vs_closed_form": (peer - closed).abs().max().item(),
              "ppgen_vs_closed_form": (ours - closed).abs().max().item()}
    # float64 throughout: a few 1e-10 nats of rounding on ~ -5,000 nats per row
    assert max(errors.values()) < 1e-6, f"pixel-unit conversion is off: {errors}"
    return errors


# --- denoising-diffusion-pytorch ------------------------------------------------------------------------------

class PeerDenoiser(nn.Module):
    """The peer's trained ``Unet`` as ppgen's ``network(x_t, t)``: rows (B, 784) in ppgen's [-1, 1] chain and steps
    1..T, to the peer's images (B, 1, 28, 28) in its [-1, 1] and time indices 0..T-1; returns the noise, rows."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t.view(-1, *SHAPE), t - 1).flatten(1)


def check_diffusion_conventions(peer: ddp.GaussianDiffusion, ours: GaussianDiffusion) -> float:
    """Assert that the peer's index t - 1 is ppgen's step t: the same alpha_bar, and the same x_t from the same
    x_0 and noise (the peer's ``q_sample`` on its [-1, 1] images against sqrt(abar) u + sqrt(1 - abar) eps)."""
    T = ours.num_steps
    gap = (peer.alphas_cumprod.double() - ours.alpha_bar.double().cpu()).abs().max().item()
    assert peer.num_timesteps == T and gap < 1e-6, f"schedules differ: max |alpha_bar gap| = {gap:g}"
    x0, eps, t = torch.rand(4, D), torch.randn(4, D), torch.tensor([1, 2, T // 2, T])
    u = ours.to_chain(x0)
    abar = ours.alpha_bar.float()[t - 1, None]
    theirs = peer.q_sample(peer.normalize(x0.view(-1, *SHAPE)), t - 1, eps.view(-1, *SHAPE)).flatten(1)
    gap = (theirs - (abar.sqrt() * u + (1 - abar).sqrt() * eps)).abs().max().item()
    assert gap < 1e-5, f"noising differs: {gap:g}"
    return gap


# --- training: each library's own loop --------------------------------------------------------------------------

def fit_options(batch: int, lr: float) -> dict:
    return dict(batch_size=batch, lr=lr, device="cpu", progress=False, convergence_tol=None)


def ppgen_rows(pair: str, rows: torch.Tensor):
    """What ``fit`` trains on: fresh dequantization every epoch for the flows, k / 255 for diffusion."""
    return Dequantized(rows) if pair != "diffusion" else rows / 255


def peer_step(pair: str, peer: nn.Module, lr: float):
    """One step of the peer's own loop (normflows' examples, the diffusion README) on a batch of levels 0..255."""
    opt = torch.optim.Adam(peer.parameters(), lr=lr)

    def step(levels: torch.Tensor) -> float:
        if pair == "diffusion":
            loss = peer((levels / 255).view(-1, *SHAPE))
        else:
            loss = peer.forward_kld(((levels + torch.rand_like(levels)) / LEVELS).view(-1, *SHAPE))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def throughput(pair: str, ours, step, train: torch.Tensor, args) -> dict:
    """Images/s of ``fit`` (one epoch of ``steps`` batches per call, timed whole) and of the peer's loop,
    alternating; beside them ``fit``'s own rate of its steps alone (``FitResult.examples_per_second``)."""
    n = args.steps * args.batch
    seconds, step_rates = {"ppgen": 0.0, "peer": 0.0}, []
    for r in range(args.rounds + 1):  # round 0 warms up (and runs the flows' data-dependent initialisation)
        rows = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(r))[:n]]
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ppgen.ConvergenceWarning)  # a few steps score worse than uniform
            result = ppgen.fit(ours, ppgen_rows(pair, rows), epochs=1, seed=r, **fit_options(args.batch, args.lr))
        if r:
            seconds["ppgen"] += time.perf_counter() - start
            step_rates.append(result.examples_per_second)
        start = time.perf_counter()
        for batch in rows.split(args.batch):
            step(batch)
        if r:
            seconds["peer"] += time.perf_counter() - start
    rate = {k: args.rounds * n / v for k, v in seconds.items()}
    return {"ppgen_images_per_s": rate["ppgen"], "peer_images_per_s": rate["peer"],
            "ratio": rate["ppgen"] / rate["peer"],
            "ppgen_steps_only_images_per_s": sum(step_rates) / len(step_rates), "batch": args.batch,
            "steps": args.steps, "rounds": args.rounds}


def train_equal_cpu(pair: str, ours, step, train: torch.Tensor, args) -> dict:
    """``fit`` for ``args.minutes``, then the peer's loop for the CPU seconds ``fit`` used."""
    cpu = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppgen.ConvergenceWarning)  # "stopped at max_minutes": expected here
        result = ppgen.fit(ours, ppgen_rows(pair, train), epochs=10_000, seed=0, max_minutes=args.minutes,
                           **fit_options(args.batch, args.lr))
    budget = time.process_time() - cpu
    cpu, steps, generator = time.process_time(), 0, torch.Generator().manual_seed(0)
    while time.process_time() - cpu < budget:
        step(train[torch.randint(len(train), (args.batch,), generator=generator)])
        steps += 1
    return {"ppgen": {"cpu_seconds": budget, "steps": result.steps},
            "peer": {"cpu_seconds": time.process_time() - cpu, "steps": steps}}


def per_step_curves(pair: str, train: torch.Tensor, test: torch.Tensor, args) -> dict:
    """Learning per step, apart from speed: ppgen's flow and the peer, each initialised from ``torch.manual_seed(0)``,
    trained by the same plain Adam loop on the same batches and noise (seed s: batches of ``args.batch`` rows and
    their uniform noise from one generator), test bits/dim every ``args.per_step // 4`` steps; a run whose loss
    turns non-finite stops there (its last entry NaN). A run that finishes has its ``args.samples`` samples scored
    against the test rows (``quality``: FID etc.; the same draws of z for both, ``torch.manual_seed(0)``)."""
    y, per_dim, every = dequantize(test[: args.test_rows], seed=0), 1 / (D * math.log(2)), max(1, args.per_step // 4)
    curves = {}
    for seed in args.seeds:
        for lib in ("ppgen",) if args.ppgen_only else ("ppgen", "peer"):
            torch.manual_seed(0)
            model = build(pair)[0] if lib == "ppgen" else build_peer(pair)
            log_prob = model.log_prob if lib == "ppgen" else functools.partial(nf_log_prob, model)
            opt, generator, curve = torch.optim.Adam(model.parameters(), lr=args.lr), torch.Generator(), []
            generator.manual_seed(seed)
            for step in range(1, args.per_step + 1):
                levels = train[torch.randint(len(train), (args.batch,), generator=generator)]
                loss = -log_prob(levels + torch.rand(levels.shape, generator=generator)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if not math.isfinite(loss.item()):
                    curve.append((step, float("nan")))
                    break
                if step % every == 0:
                    with torch.no_grad():
                        curve.append((step, -torch.cat([log_prob(b) for b in y.split(500)]).mean().item() * per_dim))
            curves[f"{lib}/seed{seed}"] = curve
            print(pair, lib, seed, [(s, round(b, 3)) for s, b in curve], flush=True)
            if math.isfinite(curve[-1][1]):
                curves[f"{lib}/seed{seed}/quality"] = quality = sample_quality(
                    draw(model, lib, args.samples), test, args.samples, grey=True, reference=train[-args.samples:])
                print(pair, lib, seed, {k: v for k, v in quality.items() if k != "real_vs_real"}, flush=True)
    return curves


@torch.no_grad()
def draw(flow, lib: str, n: int) -> torch.Tensor:
    """``n`` samples of a flow pair's model as levels 0..255, from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    if lib == "peer":
        return nf_samples(flow, n)
    drawn = torch.cat([flow.sample(min(250, n - i)) for i in range(0, n, 250)])
    return drawn.nan_to_num(0.0).floor().clamp(0, LEVELS - 1)


# --- evaluation ----------------------------------------------------------------------------------------------

def evaluate(pair: str, ours, peer, test: torch.Tensor, reference: torch.Tensor, args) -> dict:
    """Test bits/dim and sample quality of both (samples as levels 0..255)."""
    out, n = {}, args.diffusion_samples if pair == "diffusion" else args.samples
    per_dim = 1 / (D * math.log(2))
    ours.eval()
    peer.eval()
    if pair == "diffusion":
        rows = test[: args.diffusion_test_rows] / 255
        wrapped = GaussianDiffusion(D, num_steps=ours.num_steps, schedule="linear", variance="posterior",
                                    loss="simple", network=PeerDenoiser(peer.model))
        torch.manual_seed(0)
        out["ppgen"] = {"bits_per_dim": ppgen.log_likelihood(ours, rows).bits_per_dim}
        torch.manual_seed(0)
        out["peer"] = {"bits_per_dim": ppgen.log_likelihood(wrapped, rows).bits_per_dim}
        with torch.no_grad():
            ours_drawn = torch.cat([ours.sample(min(250, n - i), seed=i) for i in range(0, n, 250)]) * 255
            torch.manual_seed(0)
            with contextlib.redirect_stderr(io.StringIO()):  # the peer's sampler always shows a progress bar
                peer_drawn = torch.cat([peer.sample(batch_size=min(250, n - i)) for i in range(0, n, 250)])
            peer_drawn = peer_drawn.flatten(1) * 255
    else:
        y = dequantize(test[: args.test_rows], seed=0)
        with torch.no_grad():
            out["ppgen"] = {"bits_per_dim": ppgen.log_likelihood(ours, y).bits_per_dim}
            out["peer"] = {"bits_per_dim": -torch.cat([nf_log_prob(peer, b) for b in y.split(500)]).mean().item()
                           * per_dim}
            ours_drawn, peer_drawn = draw(ours, "ppgen", n), draw(peer, "peer", n)
    for name, drawn in (("ppgen", ours_drawn), ("peer", peer_drawn)):
        out[name]["quality"] = sample_quality(drawn.round(), test, n, grey=True, reference=reference[-n:])
    return out


def build_peer(pair: str) -> nf.MultiscaleFlow:
    """The normflows flow of a flow pair."""
    cfg = PRESETS[pair]
    return nf_glow(cfg["levels"], cfg["steps"], cfg["hidden"]) if pair.startswith("glow") else nf_realnvp(cfg["hidden"])


def build(pair: str):
    """ppgen's model and the peer, of the closest sizes."""
    cfg = PRESETS[pair]
    if pair.startswith("glow"):
        return Glow(D, **cfg), build_peer(pair)
    if pair.startswith("realnvp"):
        return RealNVP(D, **cfg), build_peer(pair)
    T, width, mults = cfg["num_steps"], cfg["channels"], cfg["multipliers"]
    ours = GaussianDiffusion(D, num_steps=T, schedule="linear", variance="posterior", loss="simple",
                             channels=width, multipliers=mults, num_blocks=2, attention=True)
    peer = ddp.GaussianDiffusion(ddp.Unet(dim=width, dim_mults=mults, channels=1), image_size=28, timesteps=T,
                                 objective="pred_noise", beta_schedule="linear")
    return ours, peer


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def table(results: dict) -> str:
    lines = ["| pair | library | params | train images/s | ppgen / peer | CPU s | steps | test bits/dim | FID | KID "
             "| precision | recall |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for pair, row in results["pairs"].items():
        for lib in ("ppgen", "peer"):
            r, q = row[lib], row[lib]["quality"]
            ratio = f"{row['throughput']['ratio']:.2f}x" if lib == "ppgen" else ""
            lines.append(f"| {pair} | {r['library']} | {r['params']:,} | "
                         f"{row['throughput'][lib + '_images_per_s']:.0f} | {ratio} | {r['cpu_seconds']:.0f} | "
                         f"{r['steps']} | {r['bits_per_dim']:.3f} | {q['fid']:.1f} | {q['kid']:.3f} | "
                         f"{q['precision']:.2f} | {q['recall']:.2f} |")
        floor = row["ppgen"]["quality"]["real_vs_real"]
        lines.append(f"| {pair} | real vs real (floor) | | | | | | | {floor['fid']:.1f} | {floor['kid']:.3f} | "
                     f"{floor['precision']:.2f} | {floor['recall']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--pairs", nargs="+", choices=list(PRESETS), default=["glow", "realnvp", "realnvp-masked",
                                                                              "diffusion"])
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes of each ppgen model; its peer "
                        "gets the CPU seconds it used")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=50,
                        help="throughput: steps per round (fit pays its setup, ~0.2 s, once a call)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: timed rounds (after one warm-up)")
    parser.add_argument("--test-rows", type=int, default=1000, help="test rows of the bits/dim (flows)")
    parser.add_argument("--diffusion-test-rows", type=int, default=100, help="test rows of the diffusion bound "
                        "(T network passes each)")
    parser.add_argument("--samples", type=int, default=500, help="samples for FID/KID/precision/recall")
    parser.add_argument("--diffusion-samples", type=int, default=100, help="diffusion samples for FID etc. (T "
                        "network passes each)")
    parser.add_argument("--per-step", type=int, default=0, help="flows: instead of the timed runs, learning per "
                        "step: both trained this many steps by one plain loop on the same batches, per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="--per-step: the seeds")
    parser.add_argument("--ppgen-only", action="store_true", help="--per-step: train ppgen's flows only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: results/peers.json "
                        "(results/peers_per_step.json with --per-step)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # 2 shared cores: more threads than free cores is 10x slower
    levels = {s: (ppgen.load_dataset("mnist", s, root=args.root, binarize="dynamic").x.intensities * 255).round()
              for s in ("train", "test")}
    train, test = levels["train"], levels["test"]
    reference = train[-max(args.samples, args.diffusion_samples):]  # the floor's rows: training rows
    results = {"command": " ".join(["python", *sys.argv]), "settings": {k: str(v) for k, v in vars(args).items()},
               "versions": {"torch": torch.__version__, "normflows": nf.__version__,
                            "denoising_diffusion_pytorch": ddp.version.__version__},
               "presets": {k: {n: str(v) for n, v in p.items()} for k, p in PRESETS.items()},
               "checks": {"pixel_units": check_pixel_units()}, "pairs": {}}
    print(json.dumps(results["checks"]), flush=True)
    if args.per_step:
        out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.with_name("peers_per_step.json")
        results["per_step"] = {pair: per_step_curves(pair, train, test, args) for pair in args.pairs
                               if pair != "diffusion"}
        write_json_atomic(results, out)
        return print(f"wrote {out}")
    for pair in args.pairs:
        torch.manual_seed(0)
        ours, peer = build(pair)
        if pair == "diffusion":
            results["checks"]["diffusion_noising_gap"] = check_diffusion_conventions(peer, ours)
        step = peer_step(pair, peer, args.lr)
        row = {"throughput": throughput(pair, ours, step, train, args)}
        print(pair, json.dumps(row["throughput"]), flush=True)
        ours, peer = build(pair)  # fresh models for the equal-CPU run
        step = peer_step(pair, peer, args.lr)
        budget = train_equal_cpu(pair, ours, step, train, args)
        scores = evaluate(pair, ours, peer, test, reference, args)
        libraries = {"ppgen": f"ppgen {type(ours).__name__}",
                     "peer": ("normflows " + pair.split("-")[0]) if pair != "diffusion"
                     else "denoising-diffusion-pytorch"}
        for lib, model in (("ppgen", ours), ("peer", peer)):
            row[lib] = {"library": libraries[lib], "params": num_parameters(model), **budget[lib], **scores[lib]}
        results["pairs"][pair] = row
        print(pair, json.dumps({k: row[k] for k in ("ppgen", "peer")}), flush=True)
        write_json_atomic(results, args.out)
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
