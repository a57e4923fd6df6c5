"""Every third-party package that ppgen imports is declared in setup.cfg's install_requires."""

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "ppgen").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "ppgen"}


def declared_distributions() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = config["options"]["install_requires"].split("\n")
    return {re.split(r"[<>=!~;\[ ]", r.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements if r.strip()}


def test_every_imported_package_is_declared():
    providers = importlib.metadata.packages_distributions()  # import name -> distributions providing it
    declared = declared_distributions()
    undeclared = {}
    for module in imported_top_level_modules():
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, f"imported but not in install_requires: {undeclared}"
    assert {"xarray", "opt-einsum", "tqdm", "arviz-base", "arviz-stats"} <= declared
