"""ppgen.load_fitted: a fit run's parameters and buffers into a freshly built model, in another process's way."""

import pytest
import torch

import ppgen
from ppgen import fit, load_fitted

SETTINGS = dict(batch_size=16, lr=0.02, optimizer="adam", progress=False, convergence_tol=None, seed=0)


def _glow():
    return ppgen.Glow(4, shape=(1, 2, 2), levels=1, steps=2, hidden=4, blocks=1, num_levels=None, seed=1)


def test_a_fitted_glow_loads_into_a_fresh_one_with_its_actnorm_state(tmp_path):
    """The loaded model scores every row as the fitted one does (same parameters and actnorm's data-initialised
    state: without the buffer, actnorm would initialise itself again on the first batch it sees)."""
    x = torch.randn(64, 4) * torch.tensor([1.0, 2.0, 0.5, 1.5]) + 3.0
    fitted = _glow()
    fit(fitted, x, epochs=3, checkpoint_dir=tmp_path, **SETTINGS)
    loaded = load_fitted(_glow(), tmp_path)
    probe = torch.randn(8, 4) + 3.0
    assert torch.equal(loaded.log_prob(probe), fitted.log_prob(probe))
    assert not torch.equal(_glow().log_prob(probe), fitted.log_prob(probe))  # a fresh one differs


def test_the_averages_by_default_the_trained_parameters_on_request(tmp_path):
    x = torch.randn(64, 4) + 3.0
    fitted = _glow()
    fit(fitted, x, epochs=3, checkpoint_dir=tmp_path, ema=0.5, **SETTINGS)  # leaves the averages in the model
    averaged, trained = load_fitted(_glow(), tmp_path), load_fitted(_glow(), tmp_path, averaged=False)
    for (name, a), f, t in zip(averaged.named_parameters(), fitted.parameters(), trained.parameters()):
        assert torch.equal(a, f), name
    assert any(not torch.equal(a, t) for a, t in zip(averaged.parameters(), trained.parameters()))


def test_another_model_or_other_arguments_are_refused(tmp_path):
    x = torch.randn(32, 4) + 3.0
    fit(_glow(), x, epochs=1, checkpoint_dir=tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match="written by a fit of Glow, not of MAF"):
        load_fitted(ppgen.MAF(4, transforms=1, hidden=4), tmp_path)
    other = ppgen.Glow(4, shape=(1, 2, 2), levels=1, steps=3, hidden=4, blocks=1, num_levels=None)
    with pytest.raises(ValueError, match="with steps=2, this one has steps=3"):
        load_fitted(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_fitted(_glow(), tmp_path / "nowhere")
    with pytest.raises(TypeError, match="loads into a ppgen GenerativeModel, got Linear"):
        load_fitted(torch.nn.Linear(2, 2), tmp_path)


def test_an_exported_run_loads_as_the_run_does_and_half_precision_rounds_each_parameter(tmp_path):
    """export_fitted keeps what load_fitted needs: in float32 the loaded model is the fitted one bit for bit; in
    float16 each parameter is the fitted one rounded to half precision (and nothing else), in half the bytes."""
    x = torch.randn(64, 4) * torch.tensor([1.0, 2.0, 0.5, 1.5]) + 3.0
    fitted = _glow()
    fit(fitted, x, epochs=3, checkpoint_dir=tmp_path / "run", ema=0.5, **SETTINGS)  # the averages, left in fitted
    full = ppgen.export_fitted(tmp_path / "run", tmp_path / "full.pt")
    half = ppgen.export_fitted(tmp_path / "run", tmp_path / "half.pt", dtype=torch.float16)
    probe = torch.randn(8, 4) + 3.0
    assert torch.equal(load_fitted(_glow(), full).log_prob(probe), fitted.log_prob(probe))
    rounded = load_fitted(_glow(), half)
    for (name, r), f in zip(rounded.named_parameters(), fitted.parameters()):
        assert r.dtype == torch.float32 and torch.equal(r, f.half().float()), name
    trained = ppgen.export_fitted(tmp_path / "run", tmp_path / "trained.pt", averaged=False)
    assert torch.equal(load_fitted(_glow(), trained).log_prob(probe),
                       load_fitted(_glow(), tmp_path / "run", averaged=False).log_prob(probe))
    # not a checkpoint to resume from: the optimiser's state and the data order are left out
    sizes = {p.name: p.stat().st_size for p in (full, half, tmp_path / "run" / "checkpoint.pt")}
    assert sizes["half.pt"] < sizes["full.pt"] < sizes["checkpoint.pt"]
    with pytest.raises(ValueError, match="written by a fit of Glow, not of MAF"):
        load_fitted(ppgen.MAF(4, transforms=1, hidden=4), half)


def test_a_checkpoint_from_before_an_argument_counts_as_built_with_its_legacy_value(tmp_path):
    """Glow's factor_out and scale_map came after checkpoints were written that factored out the first half and
    bounded their scales by tanh; such a checkpoint (its recorded arguments without them) must not load or resume
    into today's defaults, which would read its parameters with another latent layout or another scale, but must
    into a model built with factor_out="first", scale_map="tanh"."""
    from ppgen.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

    two_levels = dict(shape=(1, 4, 4), levels=2, steps=1, hidden=4, blocks=1, num_levels=None, seed=1)
    legacy = dict(factor_out="first", scale_map="tanh")
    x = torch.randn(64, 16) + 3.0
    fitted = ppgen.Glow(16, **legacy, **two_levels)
    fit(fitted, x, epochs=1, checkpoint_dir=tmp_path, **SETTINGS)
    payload = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    for key in ("model_arguments", "model_legacy_arguments"):  # as a checkpoint written before them
        for name in legacy:
            payload["config"][key].pop(name)
    save_checkpoint(payload, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="with factor_out='first', this one has factor_out='second'"):
        load_fitted(ppgen.Glow(16, **two_levels), tmp_path)
    with pytest.raises(ValueError, match="with scale_map='tanh', this one has scale_map='sigmoid'"):
        load_fitted(ppgen.Glow(16, factor_out="first", **two_levels), tmp_path)
    with pytest.raises(ValueError, match="cannot resume .* factor_out='first', this model has factor_out='second'"):
        fit(ppgen.Glow(16, **two_levels), x, epochs=2, checkpoint_dir=tmp_path, resume=True, **SETTINGS)
    loaded = load_fitted(ppgen.Glow(16, **legacy, **two_levels), tmp_path)
    assert torch.equal(loaded.log_prob(x[:8]), fitted.log_prob(x[:8]))
    fit(ppgen.Glow(16, **legacy, **two_levels), x, epochs=2, checkpoint_dir=tmp_path, resume=True, **SETTINGS)
