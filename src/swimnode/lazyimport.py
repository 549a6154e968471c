"""Package attributes imported on first use (PEP 562), so importing a package that
names many things, such as `swimnode` or `swimnode.testing`, loads none of them
(and no Trio) until one is used."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_getattr(
    package: str, namespace: MutableMapping[str, Any], homes: Mapping[str, tuple[str, ...]]
) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: each name of `homes[module]` comes from
    `package.module` when first asked for, then stays in `namespace` (the package's
    globals) so later look-ups skip the hook."""
    lazy = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> object:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    return __getattr__


class _Deferred(types.ModuleType):
    """Stands in for a module in `sys.modules` until one of its attributes is used."""

    def __getattr__(self, attribute: str) -> object:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        # Whoever imported the stand-in holds it, not the real module: give it the
        # real module's attributes so their later look-ups skip this hook.
        self.__dict__.update(real.__dict__)
        return getattr(real, attribute)


def defer_modules(*names: str) -> None:
    """Let `import NAME` bind a stand-in that imports the real module on first use.

    For a process that is ours alone (the `python -m swimnode` commands): Trio
    imports `ssl`, `hmac` and `hashlib` for TLS and DTLS, which swimnode never uses,
    and they load OpenSSL's libraries, a few MiB of an idle agent's RSS. Modules
    already imported, or not installed, are left alone. The standard library's
    `importlib.util.LazyLoader` does not serve here: a second `import` statement of
    the module reads its `__spec__`, which on Python 3.11 already loads it.

    For a package, `import NAME.SUB` loads that submodule alone: the stand-in
    carries the package's `__path__`, so the package's `__init__` runs only when
    one of its own attributes is used.
    """
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is not None:
            stand_in = sys.modules[name] = _Deferred(name)
            if spec.submodule_search_locations is not None:
                stand_in.__path__ = list(spec.submodule_search_locations)
