"""Exact resume after an interrupt anywhere in fit: injected at every line of the training loop,
and real SIGINT / SIGTERM signals."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ppgen import VAE, fit
from ppgen.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint
import importlib

fit_module = importlib.import_module("ppgen.inference.fit")  # the module (ppgen.inference.fit is the function)

pytestmark = pytest.mark.slow

LOOP = {"run", "update", "step", "_finish_epoch", "evaluate", "init", "_init", "_record_applied_step",
        "_check_divergence"}
FIT_FILE = fit_module.__file__


def _data():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(12, generator=g)
    return torch.bernoulli(probs.expand(64, 12), generator=g), torch.bernoulli(probs.expand(16, 12), generator=g)


def _fit(checkpoint_dir, resume=False):
    x, valid = _data()
    model = VAE(12, z_dim=2, hidden=4, seed=1)
    result = fit(model, x, valid=valid, epochs=3, batch_size=16, lr=0.05, seed=2, checkpoint_dir=checkpoint_dir,
                 resume=resume, progress=False, convergence_tol=None)
    return model, result


class Injector:
    """A tracer that raises KeyboardInterrupt at the ``target``-th line event of the loop's code
    in fit.py (or only records the events when ``target`` is None)."""

    def __init__(self, target=None):
        self.target, self.events = target, []

    def __call__(self, frame, event, arg):
        code = frame.f_code
        if code.co_filename != FIT_FILE or code.co_name not in LOOP:
            return None
        return self._local

    def _local(self, frame, event, arg):
        if event == "line":
            self.events.append((frame.f_code.co_name, frame.f_lineno))
            if self.target is not None and len(self.events) - 1 == self.target:
                raise KeyboardInterrupt("injected")
        return self._local


def _traced(injector, checkpoint_dir):
    sys.settrace(injector)
    try:
        return _fit(checkpoint_dir)
    finally:
        sys.settrace(None)


def test_an_interrupt_at_every_line_of_the_loop_resumes_to_the_same_parameters(tmp_path):
    straight, straight_result = _fit(tmp_path / "straight")
    recorder = Injector()
    _traced(recorder, tmp_path / "recorded")
    # every distinct line, interrupted at its first occurrence in the second epoch (or its first at all)
    epoch_two = recorder.events.index(next(e for e in recorder.events if e[0] == "_finish_epoch"))
    targets = {}
    for i, event in enumerate(recorder.events):
        if event not in targets or (targets[event] < epoch_two <= i):
            targets[event] = i
    assert len(targets) > 100  # the loop really was traced (128 distinct lines when written)
    for n, (line, target) in enumerate(sorted(targets.items(), key=lambda kv: kv[1])):
        folder = tmp_path / f"cut{n}"
        with pytest.raises(KeyboardInterrupt):
            _traced(Injector(target), folder)
        resumed, result = _fit(folder, resume=True)
        for name, value in straight.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[name]), (line, name)
        assert result.valid_elbo == straight_result.valid_elbo, line
        assert result.losses == straight_result.losses, line


SIGNALLED = textwrap.dedent("""
    import sys, time, torch
    from ppgen import VAE, fit
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(12, generator=g)
    x, valid = torch.bernoulli(probs.expand(64, 12), generator=g), torch.bernoulli(probs.expand(16, 12), generator=g)
    slow = int(sys.argv[3])
    if slow:  # give the parent time to send its signal in the middle of the run
        import importlib
        f = importlib.import_module("ppgen.inference.fit")
        step = f.Trainer.step
        def slow_step(self, *a, **k):
            time.sleep(0.02)
            return step(self, *a, **k)
        f.Trainer.step = slow_step
    print("ready", flush=True)
    model = VAE(12, z_dim=2, hidden=4, seed=1)
    try:
        fit(model, x, valid=valid, epochs=40, batch_size=16, lr=0.05, seed=2, checkpoint_dir=sys.argv[1],
            resume=sys.argv[2] == "resume", progress=False, convergence_tol=None)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise SystemExit(130)
    torch.save(model.state_dict(), sys.argv[1] + "/final.pt")
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_leaves_a_checkpoint_that_resumes_exactly(tmp_path, signum):
    script = tmp_path / "train.py"
    script.write_text(SIGNALLED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "straight"), "new", "0"], check=True, env=env,
                   timeout=300)
    run = subprocess.Popen([sys.executable, str(script), str(tmp_path / "cut"), "new", "1"], env=env,
                           stdout=subprocess.PIPE, text=True)
    assert run.stdout.readline().strip() == "ready"
    import time
    time.sleep(3.0)  # well into the run (160 steps of >= 20 ms)
    run.send_signal(signum)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130 and "interrupted" in out
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "cut"), "resume", "0"], env=env, timeout=300)
    assert done.returncode == 0
    straight, resumed = (torch.load(tmp_path / f / "final.pt") for f in ("straight", "cut"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_hard_stop_mid_epoch_resumes_exactly_from_the_last_timed_checkpoint(tmp_path, monkeypatch):
    """checkpoint_minutes: a stop that writes nothing (here an error fit does not catch, as SIGKILL or a machine
    taken back would leave it) loses only the steps since the last timed checkpoint, mid-epoch, and a resume from it
    reaches the unbroken run's parameters and figures."""
    straight, straight_result = _fit(tmp_path / "straight")
    step, calls = fit_module.Trainer.step, []

    def failing_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # the 3rd of 4 steps of epoch 2
            raise RuntimeError("machine gone")
        return step(self, *args, **kwargs)

    x, valid = _data()
    options = dict(valid=valid, epochs=3, batch_size=16, lr=0.05, seed=2, checkpoint_dir=tmp_path / "cut",
                   progress=False, convergence_tol=None, checkpoint_minutes=1e-9)
    monkeypatch.setattr(fit_module.Trainer, "step", failing_step)
    with pytest.raises(RuntimeError, match="machine gone"):
        fit(VAE(12, z_dim=2, hidden=4, seed=1), x, **options)
    monkeypatch.setattr(fit_module.Trainer, "step", step)
    saved = load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)
    assert saved["state"]["step"] == 6 and saved["state"]["batch"] == 2  # mid-epoch, the last step done
    resumed = VAE(12, z_dim=2, hidden=4, seed=1)
    result = fit(resumed, x, **{**options, "resume": True})
    assert result.resumed_from_step == 6
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert result.valid_elbo == straight_result.valid_elbo and result.losses == straight_result.losses
