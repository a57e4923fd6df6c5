"""The GPU path: the same answers on CUDA as on the CPU. Skipped where there is no CUDA device."""

import math

import pyro
import pytest
import torch

from ppgen import VAE, BayesNet, IndependentBernoulli, fit, log_likelihood
from ppgen.models import MADE, FactorAnalysis, NaiveBayes

pytestmark = pytest.mark.cuda


def test_exact_likelihood_on_cuda_equals_cpu(digits):
    x = digits["test"].x[:500]
    model = MADE(784, hidden_sizes=(64,))
    on_cpu = log_likelihood(model, x, device="cpu").values
    on_gpu = log_likelihood(model, x, device="cuda").values
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-3)  # float32 reductions differ in order


def test_fit_and_iwae_estimate_on_cuda(digits):
    x = digits["train"].x[:2000]
    model = VAE(784, z_dim=8, hidden=64)
    result = fit(model, x, epochs=3, batch_size=200, lr=3e-3, device="auto", progress=False)
    assert result.device.startswith("cuda") and model.device.type == "cuda"
    assert result.train_elbo[-1] > result.train_elbo[0] + 20
    estimate = log_likelihood(model, digits["test"].x[:200], num_samples=200, device="cuda")
    assert estimate.elbo < estimate.mean  # Monte Carlo: the ELBO is far below the K=200 bound


def test_independent_fit_matches_cpu_on_cuda():
    x = torch.bernoulli(torch.full((512, 10), 0.3), generator=torch.Generator().manual_seed(0))
    models = {device: IndependentBernoulli(10) for device in ("cpu", "cuda")}
    for device, model in models.items():
        fit(model, x, epochs=20, batch_size=128, lr=0.05, device=device, progress=False)
    torch.testing.assert_close(models["cuda"].logits.cpu(), models["cpu"].logits, rtol=1e-4, atol=1e-4)


def test_batched_bayes_net_queries_on_cuda():
    pgmpy = pytest.importorskip("pgmpy")
    from pathlib import Path

    path = Path(pgmpy.__file__).parent / "utils" / "example_models" / "alarm.bif.gz"
    net = BayesNet.from_bif(path)
    rows = net.sample(1000)
    rows[:, 5:] = -1
    on_cpu = net.posterior(rows)
    on_gpu = net.to("cuda").posterior(rows.cuda())
    for v, p in on_cpu.items():
        torch.testing.assert_close(on_gpu[v].cpu(), p, rtol=0, atol=1e-9)


def test_made_with_masks_and_direct_connection_on_cuda(digits):
    """Several orderings and the direct connection: the ranks and resampling indices live on the model's device."""
    x = digits["test"].x[:200]
    torch.manual_seed(0)
    model = MADE(784, hidden_sizes=(64,), num_masks=4, order="random", direct=True)
    on_cpu = log_likelihood(model, x).values
    on_gpu = log_likelihood(model.to("cuda"), x, device="cuda").values
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-3)  # float32 reductions differ in order
    observed = torch.zeros_like(x[:20], dtype=torch.bool)
    observed[:, :392] = True  # the top half; not observed first in every ordering, so importance resampling
    result = model.inpaint(x[:20].cuda(), observed.cuda(), n=3)
    assert result.method == "importance_resampling" and result.samples.shape == (3, 20, 784)
    assert torch.equal(result.samples[:, observed.cuda()].cpu(), x[:20][observed].expand(3, -1))


def test_naive_bayes_and_factor_analysis_on_cuda():
    """Priors and identity matrices made on the model's device, not the CPU."""
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((300, 8), 0.4), generator=generator)
    y = (x[:, 0] + torch.bernoulli(torch.full((300,), 0.2), generator=generator) > 0.5).long()
    on_cpu = NaiveBayes(8).condition_on(x, y)
    on_gpu = NaiveBayes(8).to("cuda").condition_on(x.cuda(), y.cuda())
    torch.testing.assert_close(on_gpu.predict_proba(x.cuda()).cpu(), on_cpu.predict_proba(x))
    assert on_gpu.sample(5).device.type == "cuda"
    loss = pyro.infer.Trace_ELBO().loss(on_gpu.model, on_gpu.guide, x.cuda(), y.cuda())  # the prior scores a CUDA theta
    assert math.isfinite(loss)

    z = torch.randn(400, 2, generator=generator)
    rows = z @ torch.randn(2, 5, generator=generator) + 0.3 * torch.randn(400, 5, generator=generator)
    models = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        models[device] = FactorAnalysis(5, 2).to(device).fit_mle(rows.to(device))
    torch.testing.assert_close(models["cuda"].log_prob(rows.cuda()).cpu(), models["cpu"].log_prob(rows),
                               rtol=1e-4, atol=1e-4)  # the same EM in float64, then float32 log densities


def test_exact_likelihood_of_a_convolutional_model_on_cuda_is_not_tf32(digits):
    # cuDNN convolutions run in TF32 by default; log_likelihood asks for IEEE float32. On the CPU, float32 is
    # within 6e-5 nats of float64 on every row here, and TF32's rounding of the weights alone moves a row by up
    # to 0.018 nats: 5e-4 leaves the GPU's other summation order 8x room and would still catch TF32.
    from ppgen.models import PixelCNN

    torch.manual_seed(0)
    model = PixelCNN(channels=32, layers=5, kernel=7)
    x = digits["test"].x[:200]
    on_cpu = log_likelihood(model.double(), x.double(), device="cpu").values.double()
    on_gpu = log_likelihood(model.float(), x, device="cuda").values.double()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=0, atol=5e-4)
