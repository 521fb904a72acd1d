"""transformers (>= 5.25) imports the `kernels` distribution (Hugging Face's kernel hub) when it is installed. Our
source tree has a top-level `kernels/` folder (installed as `specdec.kernels`) that shadows that distribution
whenever the repository root is on sys.path (`python -m ...` or pytest from the root), and transformers then fails
with "cannot import name 'CUDAProperties' from 'kernels'". A finder first on `sys.meta_path` resolves the name
`kernels` to the installed distribution wherever specdec runs; it costs nothing until something imports `kernels`
(our own code only ever imports `specdec.kernels`)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


def hub_kernels_init() -> Path | None:
    """The installed `kernels` distribution's __init__.py, if there is one."""
    from importlib import metadata  # here: ~50 ms to import, needed only when `kernels` is imported

    try:
        dist = metadata.distribution("kernels")
    except metadata.PackageNotFoundError:
        return None
    init = next((f for f in dist.files or [] if f.as_posix() == "kernels/__init__.py"), None)
    path = None if init is None else Path(str(dist.locate_file(init)))
    return path if path is not None and path.exists() else None


class HubKernelsFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level name `kernels` in the installed distribution (else leaves it to the other finders)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "kernels":
            return None
        init = hub_kernels_init()
        if init is None:
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def install_hub_kernels_finder() -> None:
    if not any(isinstance(finder, HubKernelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, HubKernelsFinder())
