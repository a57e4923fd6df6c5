"""benchmarks/language_models.py --preset cpu-long: a run resumed call by call is the run that never stopped, and its
evaluation is the model's own -log2 p of the test characters."""

import argparse
import json

import pytest
import torch

from ppgen import load_dataset
from ppgen.inference.checkpoint import CHECKPOINT_NAME, load_checkpoint

from conftest import load_script


def _language_models_benchmark():
    return load_script("benchmarks/language_models.py")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_a_long_language_model_resumed_call_by_call_matches_an_unbroken_run(name, tmp_path):
    bench = _language_models_benchmark()
    train, valid, test = (load_dataset("shakespeare", s) for s in ("train", "valid", "test"))
    model = {"lstm": {"length": 16, "hidden_size": 8, "num_layers": 1},
             "transformer": {"context": 16, "num_layers": 1, "num_heads": 2, "width": 8, "dropout": 0.2}}[name]
    cfg = {"model": model, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 1, "epochs": 3, "rows_per_epoch": 8,
           "eval_every": 2, "valid_chars": 100, **({"clip_norm": 1.0} if name == "transformer" else {})}
    args = argparse.Namespace(device="cpu", seed=0, evaluate=False, test_chars=300, decode_chars=50)
    calls = []
    for runs, minutes in ((tmp_path / "broken", [1e-9] * 3), (tmp_path / "unbroken", [10.0])):
        for max_minutes in minutes:  # 1e-9: one epoch per call
            args.runs, args.max_minutes = runs, max_minutes
            calls.append(bench.long_lm(args, name, train, valid, test, cfg))
    (first, second, broken), unbroken = calls[:3], calls[3]
    assert [first["epochs"], second["epochs"], broken["epochs"]] == [1, 2, 3]
    assert second["status"].startswith("partial")
    curves = [json.loads((tmp_path / run / name / "curve.json").read_text())["epochs"]
              for run in ("broken", "unbroken")]
    # 8 windows in batches of 4: each call's fit resumed at the last step (2 steps an epoch), it did not start over
    assert [e["steps"] for e in curves[0]] == [2, 4, 6] and [e["lr"] for e in curves[0]] == pytest.approx([3e-3, 1.65e-3, 3e-4])  # warm-up, mid-cosine, lr / 10
    # the windows (and the Transformer's dropout masks) come from fit's seeded, checkpointed generators: three calls
    # train exactly what one call trains
    assert [e["train_bits_per_char"] for e in curves[0]] == [e["train_bits_per_char"] for e in curves[1]]
    saved = [load_checkpoint(tmp_path / run / name / "checkpoint" / CHECKPOINT_NAME)["params"]
             for run in ("broken", "unbroken")]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    assert broken["status"] == unbroken["status"] == "complete"
    assert [e[0] for e in broken["valid_curve"]] == [2, 3]
    # the evaluation: -log2 p of the first 300 test characters, cut into rows of 16 as compress codes them,
    # against a direct sum of the model's log-softmax per position (an independent computation)
    ids = test.ids[:300]
    net = (bench.CharLSTM if name == "lstm" else bench.CharTransformer)(train.vocabulary, **model)
    net.load_state_dict({k.removeprefix("owners.0."): v for k, v in saved[0].items()})
    net.eval()  # the evaluation scores with dropout off
    rows = [ids[:288].view(-1, 16), ids[288:].view(1, -1)]
    with torch.no_grad():
        nats = -sum(torch.log_softmax(net.conditional_logits(r), -1).gather(-1, r[..., None]).sum().item()
                    for r in rows)
    assert broken["test_characters"] == 300 and broken["compression"]["round_trip_exact"]
    assert broken["test_bits_per_char"] == pytest.approx(nats / (300 * 0.6931471805599453), rel=1e-5)  # float64 vs 32
