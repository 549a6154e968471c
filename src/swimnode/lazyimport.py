"""Package attributes imported on first use (PEP 562), so importing a package that
names many things, such as `swimnode` or `swimnode.testing`, loads none of them
(and no Trio) until one is used."""

from __future__ import annotations

import importlib
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
