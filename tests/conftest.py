"""Test hygiene: every test starts seeded, with an empty param store and Pyro validation on."""

import importlib.util
from pathlib import Path

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Tensors made in the test are float64 by default (the default is restored after it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module whose coders make one small network call per pixel or character:
    on a shared CPU, thread hand-offs dominate such calls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    from ppgen.data import load_dataset

    return {split: load_dataset("digits", split) for split in ("train", "valid", "test")}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def load_script(path: str):
    """A script of the repository (``benchmarks/ebm_gan.py``, ...) imported as a module, for tests of its functions."""
    file = Path(__file__).resolve().parents[1] / path
    spec = importlib.util.spec_from_file_location(file.stem + "_script", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomised(model):
    """The model in float64 with all parameters drawn N(0, 0.5^2): zero-initialised weights or tables hide bugs
    that the tests of the autoregressive property and of normalisation are there to find."""
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model
