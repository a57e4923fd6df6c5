"""The README's "Write your own model" runs as written (with fewer epochs), and its models learn."""

import re
from pathlib import Path

import pyro
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code() -> str:
    text = README.read_text()
    section = text.split("\n## Write your own model\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


@pytest.mark.slow
def test_write_your_own_model_runs_and_learns(capsys):
    code = section_code().replace("epochs=10", "epochs=2")
    assert code.count("epochs=2") == 2 and "class LogisticPCA" in code and "def story" in code
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    model, test = namespace["model"], namespace["test"]
    # both versions beat the factorised baseline's exact test log-likelihood (about -205 nats, README)
    scores = [float(m) for m in re.findall(r"log-likelihood (-?\d+\.\d+) nats/example \(IWAE K=100", printed)]
    assert len(scores) == 2 and all(-200 < s < -100 for s in scores), printed
    assert printed.count("ok: data plate") == 2 and "ELBOReport" not in printed  # print() shows the summary
    # the subclass samples binary images of the data's shape; the plain pair through Predictive
    assert namespace["images"].shape == (16, 784) and set(namespace["images"].unique().tolist()) <= {0.0, 1.0}
    # the fitted IWAE estimate sits above the ELBO of the same model (a bound, not a coincidence)
    result = namespace["ppgen"].log_likelihood(model, test[:300], num_samples=50)
    assert result.mean > result.elbo and not result.exact
    assert {"W", "b", "A", "c"} <= set(pyro.get_param_store().keys())
    assert torch.isfinite(pyro.param("W")).all()
