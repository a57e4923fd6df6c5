"""Deferred imports: names that import their module on first use (PEP 562).

``import ppgen`` and ``ppgen --help`` stay fast because torch, Pyro, ArviZ, xarray and matplotlib
are imported only when a name that needs them is first used. ``benchmarks/startup.py`` measures it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], submodules: Iterable[str] = ()
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` that import ``exports[name]`` on first use.

    ``exports`` maps a public name to the module that defines it; ``submodules`` are the package's
    own submodules, reachable as attributes (``ppgen.inference.posterior``) without importing them
    up front. A resolved name is cached in the package's namespace, so the hook runs once per name.
    """
    exports, submodules = dict(exports), frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports) | submodules)

    return __getattr__, __dir__


class LazyObject:
    """Stands for ``module.name`` (or the module itself) and imports it on first attribute access or call.

    For module-level names of a light module whose functions need heavy ones (``ppgen.cli``:
    the parser must answer ``--help`` before torch is imported).

    >>> json = LazyObject("json")
    >>> json.dumps([1])
    '[1]'
    >>> LazyObject("collections", "OrderedDict")(a=1)
    OrderedDict({'a': 1})
    """

    __slots__ = ("_module", "_name", "_target")

    def __init__(self, module: str, name: str | None = None):
        self._module, self._name, self._target = module, name, None

    def resolve(self) -> Any:
        """The module or object itself, imported now if it was not yet."""
        if self._target is None:
            target = importlib.import_module(self._module)
            self._target = target if self._name is None else getattr(target, self._name)
        return self._target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.resolve(), attr)

    def __call__(self, *args, **kwargs) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy {self._module}{'.' + self._name if self._name else ''}>"
