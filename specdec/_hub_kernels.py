"""transformers (>= 5.25) imports the `kernels` distribution (Hugging Face's kernel hub) when it is installed. Our
source tree has a top-level `kernels/` folder (installed as `specdec.kernels`) that shadows that distribution
whenever the repository root is on sys.path (`python -m ...` or pytest from the root), and transformers then fails
with "cannot import name 'CUDAProperties' from 'kernels'". Importing the installed distribution from its own file
first, before anything imports transformers, makes `import kernels` mean it wherever specdec runs."""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from pathlib import Path


def hub_kernels_init() -> Path | None:
    """The installed `kernels` distribution's __init__.py, if there is one."""
    try:
        dist = metadata.distribution("kernels")
    except metadata.PackageNotFoundError:
        return None
    init = next((f for f in dist.files or [] if f.as_posix() == "kernels/__init__.py"), None)
    return None if init is None else Path(str(dist.locate_file(init)))


def preload_hub_kernels() -> None:
    path = hub_kernels_init()
    if path is None or not path.exists():
        return
    loaded = sys.modules.get("kernels")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "") == path:
        return
    spec = importlib.util.spec_from_file_location("kernels", path, submodule_search_locations=[str(path.parent)])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)
