"""The extension surface: every hook the core uses is declared on GenerativeModel, the layers import one
way, every public model works in float64, and log_likelihood scores or refuses every model by every method."""

import ast
import inspect
import math
from pathlib import Path

import pytest
import torch

import ppgen
from ppgen.models.base import GenerativeModel

PPGEN = Path(ppgen.__file__).parent

# --------------------------------------------------------------------------- a. hooks

# What fit, log_likelihood, restore, compress and the figures ask of a model beyond model/guide/log_prob/sample.
HOOKS = ["has_exact_likelihood", "data_support", "is_normalised", "guide_is_proposal", "likelihood_method",
         "check_sample_kwargs", "z_dim", "num_levels", "y_dim", "default_objective", "estimate_log_likelihood",
         "observation_log_prob", "restore"]
# Where the core meets models; a model reaches them as one of these names (or as program.generative_model).
CORE = ["inference", "inverse", "compression", "plots.py"]
MODEL_NAMES = {"gm", "model", "generative_model"}


def _is_model(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in MODEL_NAMES
            or isinstance(node, ast.Attribute) and node.attr == "generative_model")


def test_every_hook_the_core_uses_is_declared_and_documented():
    annotations = inspect.get_annotations(GenerativeModel)
    undeclared = [h for h in HOOKS if h not in GenerativeModel.__dict__ and h not in annotations]
    assert not undeclared, f"hooks the core uses but GenerativeModel does not declare: {undeclared}"
    undocumented = [h for h in HOOKS if h not in GenerativeModel.__doc__
                    and h not in (getattr(GenerativeModel.__dict__.get(h), "__doc__", None) or "")]
    assert not undocumented, f"hooks without a word in GenerativeModel's docstring or their own: {undocumented}"
    found = []
    for path in sorted(p for name in CORE for p in ([PPGEN / name] if name.endswith(".py")
                                                    else (PPGEN / name).rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and node.args and _is_model(node.args[0])):
                found.append(f"{path.relative_to(PPGEN.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "hooks looked up on a model instead of declared:\n" + "\n".join(found)


# --------------------------------------------------------------------------- b. import graph

LAYERS = {"checks": 0, "data": 1, "models": 2, "inference": 3, "inverse": 4, "compression": 4, "plots": 5, "demo": 5,
          "cli": 5, "__main__": 5}
EXEMPT = {"ppgen", "ppgen._lazy"}  # the lazy front door and its helper import nothing at import time


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PPGEN.rglob("*.py"):
        parts = path.relative_to(PPGEN.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


class _Imports(ast.NodeVisitor):
    """The ppgen modules a module imports, at its top level and inside functions (``if TYPE_CHECKING:``
    blocks left out: they import nothing when the code runs)."""

    def __init__(self, name: str, is_package: bool, modules: dict[str, Path]):
        self.package = name if is_package else name.rpartition(".")[0]
        self.modules, self.found = modules, set()

    def _add(self, module: str, names=()):
        if module == "ppgen":  # `from ppgen import fit`: the module that defines the lazy name
            self.found.update(ppgen._EXPORTS.get(n, f"ppgen.{n}") for n in names)
        elif module.startswith("ppgen."):
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in self.modules]
            self.found.update(subs or [module])

    def visit_If(self, node):
        if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            self.generic_visit(node)

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            package = self.package
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        self._add(base, [a.name for a in node.names])


def _import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = {m for m in visitor.found if m != name and m not in EXEMPT}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_layers_import_one_way_and_no_modules_import_each_other():
    graph = _import_graph()
    unplaced = sorted({name.split(".")[1] for name in graph if name not in EXEMPT} - set(LAYERS))
    assert not unplaced, f"modules of ppgen in no layer: {unplaced}; give each a place in LAYERS"
    layer = {name: LAYERS[name.split(".")[1]] for name in graph if name not in EXEMPT}
    upward = sorted(f"{a} ({a.split('.')[1]}) imports {b} ({b.split('.')[1]})" for a in layer for b in graph[a]
                    if b in layer and layer[b] > layer[a])
    pairs = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    longer = [", ".join(c) for c in _cycles(graph) if len(c) > 2]  # strongly connected: each reaches the others
    assert not (upward or pairs or longer), (
        "layers: " + " < ".join(", ".join(k for k in LAYERS if LAYERS[k] == r) for r in sorted(set(LAYERS.values())))
        + "\n"
        f"imports against the layers ({len(upward)}):\n  " + "\n  ".join(upward) +
        f"\nmodules that import each other ({len(pairs)}):\n  " + "\n  ".join(pairs) +
        f"\nlonger import cycles, as the modules in each ({len(longer)}):\n  " + "\n  ".join(longer))


# --------------------------------------------------------------------------- the public models, tiny

def _public_models() -> list[str]:
    from ppgen.models.energy import EBM, RBM
    from ppgen.models.classifiers import NaiveBayes
    from ppgen.models.implicit import GAN

    names = {n for n in ppgen.__all__ if isinstance(getattr(ppgen, n), type)
             and issubclass(getattr(ppgen, n), GenerativeModel) and getattr(ppgen, n) is not GenerativeModel}
    return sorted(names | {c.__name__ for c in (RBM, EBM, GAN, NaiveBayes)})


def _rain_net():
    return ppgen.BayesNet({"rain": ["no", "yes"], "wet": ["no", "yes", "puddle"]}, {"wet": ["rain"]},
                          {"rain": [0.7, 0.3], "wet": [[0.8, 0.15, 0.05], [0.1, 0.5, 0.4]]})


def _tiny(name: str) -> GenerativeModel:
    from ppgen.models.classifiers import NaiveBayes
    from ppgen.models.energy import EBM, RBM
    from ppgen.models.implicit import GAN

    makers = {
        "IndependentBernoulli": lambda: ppgen.IndependentBernoulli(4),
        "FullJointTable": lambda: ppgen.FullJointTable(3),
        "BayesNet": _rain_net,
        "BayesianCPTs": lambda: ppgen.BayesianCPTs(_rain_net()),
        "FVSBN": lambda: ppgen.FVSBN(4),
        "NADE": lambda: ppgen.NADE(4, hidden=3),
        "MADE": lambda: ppgen.MADE(4, hidden_sizes=(6,)),
        "PixelCNN": lambda: ppgen.PixelCNN(channels=4, layers=2, kernel=3, height=2, width=2),
        "GreyPixelCNN": lambda: ppgen.GreyPixelCNN(levels=4, channels=4, layers=2, kernel=3, height=2, width=2),
        "VAE": lambda: ppgen.VAE(4, z_dim=2, hidden=4),
        "ConditionalVAE": lambda: ppgen.ConditionalVAE(4, 2, z_dim=2, hidden=4),
        "BernoulliMixture": lambda: ppgen.BernoulliMixture(4, 2),
        "GaussianMixture": lambda: ppgen.GaussianMixture(3, 2),
        "PPCA": lambda: ppgen.PPCA(3, 2),
        "FactorAnalysis": lambda: ppgen.FactorAnalysis(3, 2),
        "FlowPriorVAE": lambda: ppgen.FlowPriorVAE(4, z_dim=2, hidden=4, prior_transforms=1, prior_hidden=4),
        "IAFVAE": lambda: ppgen.IAFVAE(4, z_dim=2, hidden=4, iaf_steps=1, iaf_hidden=4, context_dim=2),
        "RealNVP": lambda: ppgen.RealNVP(4, shape=(1, 2, 2), num_scales=1, hidden=4, blocks=1),
        "Glow": lambda: ppgen.Glow(4, shape=(1, 2, 2), levels=1, steps=1, hidden=4, blocks=1),
        "MAF": lambda: ppgen.MAF(3, transforms=1, hidden=4),
        "NSF": lambda: ppgen.NSF(3, transforms=1, hidden=4),
        "VariationalDequantization": lambda: ppgen.VariationalDequantization(
            ppgen.MAF(3, transforms=1, hidden=4, num_levels=4), hidden=(4,)),
        "GaussianDiffusion": lambda: ppgen.GaussianDiffusion(4, shape=(1, 2, 2), num_steps=3, channels=4,
                                                             multipliers=(1,), attention=False),
        "BinaryDiffusion": lambda: ppgen.BinaryDiffusion(4, num_steps=3, hidden=(4,)),
        "RBM": lambda: RBM(4, hidden=3),
        "EBM": lambda: EBM(2, hidden=4, steps=2),
        "GAN": lambda: GAN(2, z_dim=2, hidden=[4], output="identity"),
        "NaiveBayes": lambda: NaiveBayes(4, num_classes=3),
        "CharNGram": lambda: ppgen.CharNGram(3, order=2, length=4),
        "CharLSTM": lambda: ppgen.CharLSTM(3, length=4, hidden_size=4, num_layers=1),
        "CharTransformer": lambda: ppgen.CharTransformer(3, context=4, num_layers=1, num_heads=1, width=4),
    }
    if name not in makers:
        pytest.fail(f"{name} is a public model without a tiny version here: add one to _tiny")
    return makers[name]()


FAST = {"num_temperatures": 4}  # an AIS estimator's own setting, small: these tests check contracts, not accuracy


def _rows(model: GenerativeModel, n: int = 3):
    """``n`` rows drawn from the model itself, so that they lie in its support (and labels for a conditional one)."""
    y = None if model.y_dim is None else torch.arange(n) % model.y_dim
    return model.sample(n, y) if y is not None else model.sample(n), y


def test_every_public_model_has_a_tiny_version_here():
    for name in _public_models():
        assert isinstance(_tiny(name), GenerativeModel), name


# --------------------------------------------------------------------------- c. float64

@pytest.mark.parametrize("name", _public_models())
def test_every_public_model_scores_and_samples_in_float64(name):
    from ppgen.inference.program import Program, sample_sites, site_log_prob

    model = _tiny(name).double()
    x, y = _rows(model, 2)
    # a Bayesian network's rows are state indices, exact in any float type: they come in the default one
    assert x.dtype == torch.float64 or model.data_support == "categorical", f"{name}.double().sample(2): {x.dtype}"
    args = (x.double(),) if y is None else (x.double(), y)
    if model.has_exact_likelihood:
        scores = {"log_prob": model.log_prob(*args)}
    elif model.likelihood_method is not None:
        options = FAST if model.likelihood_method == "ais" else {}
        scores = {"estimate": model.estimate_log_likelihood(*args, num_samples=2, seed=0, **options).values}
    else:  # what an ELBO or iwae weighs: each site of the story, model and guide
        program = Program(model)
        with program.param_scope(), torch.no_grad():
            traces = program.trace(*args)
        scores = {s["name"]: site_log_prob(s) for trace in traces for s in sample_sites(trace)}
    for what, score in scores.items():
        assert score.dtype == torch.float64 and torch.isfinite(score).all(), (name, what, score)


# --------------------------------------------------------------------------- d. every model by every method

@pytest.mark.parametrize("name", _public_models())
def test_log_likelihood_computes_or_refuses_every_method_naming_it(name):
    from ppgen.inference.likelihood import METHODS

    model = _tiny(name)
    x, y = _rows(model)
    data = x if y is None else (x, y)
    results = {}
    for method in METHODS:
        anneals = method == "ais" or (method == "auto" and model.likelihood_method == "ais"
                                      and not model.has_exact_likelihood)
        try:
            results[method] = ppgen.log_likelihood(model, data, method=method, num_samples=2, batch_size=2,
                                                   **(FAST if anneals else {}))
        except (ValueError, TypeError) as refusal:
            message = str(refusal)
            assert repr(method) in message and name in message and "\n" not in message, (method, message)
            continue
        result = results[method]
        assert (result.method == method) if method != "auto" else (result.method in set(METHODS) - {"auto"})
        assert result.values.shape == (len(x),) and torch.isfinite(result.values).all(), (method, result)
    assert "auto" in results or not results, f"{name}: 'auto' refused, but {sorted(results)} work"
    # a second algorithm where it must agree: without latents, each importance weight is p(x) itself (the
    # trace's site log-densities summed in float64 against log_prob in float32: 1e-4 is float32 rounding of sums)
    if "exact" in results and "iwae" in results and results["iwae"].stderr < 1e-9:
        torch.testing.assert_close(results["iwae"].values, results["exact"].values, rtol=1e-4, atol=1e-4)
        assert math.isclose(results["iwae"].mean, results["exact"].mean, rel_tol=1e-4, abs_tol=1e-4)
