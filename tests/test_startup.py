"""Start-up: `ppgen --help` without torch, `import ppgen` without its heavy dependencies, names on first use."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "pyro", "arviz_base", "xarray", "matplotlib", "scipy", "pandas")


def modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["sample"], ["compress"]])
def test_help_does_not_import_torch(command):
    code = ("import contextlib, io\nfrom ppgen.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    try: main({[*command, '--help']!r})\n"
            "    except SystemExit as stop: assert stop.code == 0")
    assert modules_after(code) == set()


def test_import_ppgen_is_light_and_the_core_needs_no_arviz_or_matplotlib():
    assert modules_after("import ppgen") == set()
    assert modules_after("import ppgen; ppgen.fit; ppgen.VAE; ppgen.elbo_report; ppgen.compress") == {"torch", "pyro"}
    assert {"arviz_base", "xarray"} <= modules_after("import ppgen.inference as i; i.to_arviz")


def test_lazy_names_are_the_real_objects():
    import ppgen
    import ppgen.inference
    from ppgen.inference import fit as fit_module
    from ppgen.inference.posterior import to_arviz

    assert ppgen.fit is fit_module is ppgen.inference.fit  # the function, not the submodule of that name
    assert callable(ppgen.fit) and ppgen.inference.to_arviz is to_arviz
    assert set(ppgen.__all__) <= set(dir(ppgen)) and "to_arviz" in dir(ppgen.inference)
    for name in ppgen.__all__:
        assert getattr(ppgen, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        ppgen.fitt


def test_cli_dataset_names_match_the_loader():
    from ppgen import cli, data

    assert cli.DATASETS == data.DATASETS
