"""The compiled kernels, built ahead of time for this machine: no cold start in a new process.

numba compiles the E-step kernels of both families (:mod:`gmm_dask.mixture._kernels`,
:mod:`gmm_dask.mixture.behaviour._kernel`) and keeps their machine code in its cache, but every
new process still pays numba's import and its typing machinery to load it: about 2 s in each
Dask worker's first fit (``benchmarks/COLDSTART.md``). ``python -m gmm_dask.mixture.aot``
(``./dev`` runs it after installing) compiles the same kernels once into an ordinary extension
module (``numba.pycc``, the host's instruction set), which a process imports in well under a
millisecond without importing numba at all.

The module's file name carries a key of everything its machine code depends on: the kernels'
source, numba's, llvmlite's and NumPy's versions, the Python ABI and the CPU's model and
features. A changed kernel, an upgrade or another machine (a worker image, a cluster node)
finds no module under its key and uses numba's JIT as before; the results are the same either
way, because each export only calls the same numba function, compiled with the same flags
(``tests/test_aot.py`` checks they are bit-identical).

Each export is typed for one signature the E-steps call with (recorded when it was built, in a
JSON manifest beside the module); a call whose arguments differ (dtype, dimensions, C order)
goes to the JIT. ``GMM_DASK_KERNELS=jit`` turns the module off (A/B benchmarks).
A build writes the module to ``GMM_DASK_KERNEL_DIR`` if set, else to ``__pycache__/`` beside this
file where that is writable, else to ``~/.cache/gmm-dask/kernels`` (``XDG_CACHE_HOME``); a process
looks in ``GMM_DASK_KERNEL_DIR`` alone if set, else in both of the others.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
#: The exported kernels: name → (module, function). Everything the E-steps call per partition.
ENTRIES: dict[str, tuple[str, str]] = {
    "estep_tiles": ("gmm_dask.mixture._kernels", "estep_tiles"),
    "behaviour_estep": ("gmm_dask.mixture.behaviour._kernel", "estep"),
    "behaviour_log_prob": ("gmm_dask.mixture.behaviour._kernel", "log_prob"),
    "behaviour_summary": ("gmm_dask.mixture.behaviour._kernel", "summary"),
}
#: Files whose text the machine code depends on.
SOURCES = tuple(HERE / f for f in ("_kernels.py", "behaviour/_kernel.py", "_exports.py", "build_kernels.py"))
#: An argument's type as an export was compiled for: "bool", "int", "float", an array
#: {"array": dtype, "ndim": n, "layout": "C" | "F" | "A"} or {"tuple": [...]}. As in numba's
#: own dispatch, an array's alignment and write flag are not part of its type (Dask may hand a
#: worker a partition at an odd address, deserialised from a network frame).
Spec = str | dict[str, Any]
Kernel = Callable[..., Any]


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gmm-dask" / "kernels"


def kernel_dir() -> Path:
    """Where a build writes the module (see the module docstring)."""
    if env := os.environ.get("GMM_DASK_KERNEL_DIR"):
        return Path(env).expanduser()
    if os.access(HERE, os.W_OK):
        return HERE / "__pycache__"
    return _user_cache()


def search_dirs() -> list[Path]:
    """Where a process looks for it: ``GMM_DASK_KERNEL_DIR`` alone if set, else beside the
    package (built there at install, perhaps by another user) and then the user's cache."""
    if env := os.environ.get("GMM_DASK_KERNEL_DIR"):
        return [Path(env).expanduser()]
    return [HERE / "__pycache__", _user_cache()]


def _cpu() -> str:
    """The CPU's model and instruction-set flags (the first processor's, from /proc/cpuinfo on
    Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = []
            for line in f:
                if not line.strip():
                    break
                if line.startswith(("model name", "flags", "Features", "CPU part", "vendor_id")):
                    lines.append(line.strip())
            return "\n".join(lines)
    except OSError:
        return f"{platform.processor()} {platform.machine()}"


@functools.cache
def key() -> str:
    """A 16-hex-digit digest of what the built machine code depends on."""
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.read_bytes())
    for dist in ("numba", "llvmlite", "numpy"):
        h.update(f"{dist}={importlib.metadata.version(dist)}\n".encode())
    h.update(f"{sys.version}\n{platform.machine()}\n{_cpu()}".encode())
    return h.hexdigest()[:16]


def module_name() -> str:
    return f"gmm_dask_kernels_{key()}"


def module_path(directory: Path | None = None) -> Path:
    """The built extension module's path in ``directory`` (default :func:`kernel_dir`),
    whether it exists or not."""
    return (directory or kernel_dir()) / f"{module_name()}{sysconfig.get_config_var('EXT_SUFFIX')}"


def manifest_path(directory: Path | None = None) -> Path:
    return (directory or kernel_dir()) / f"{module_name()}.json"


def enabled() -> bool:
    """False where ``GMM_DASK_KERNELS=jit`` asks for numba's JIT only."""
    return os.environ.get("GMM_DASK_KERNELS", "auto").strip().lower() != "jit"


@functools.cache
def _load() -> tuple[ModuleType, dict[str, list[dict[str, Any]]]] | None:
    """The built module and its exports, or None where none is built for this key."""
    found = [d for d in search_dirs() if manifest_path(d).exists() and module_path(d).exists()]
    if not found:
        logger.debug("no ahead-of-time kernels %s in %s; numba's JIT", module_name(), search_dirs())
        return None
    so, manifest = module_path(found[0]), manifest_path(found[0])
    try:
        exports = json.loads(manifest.read_text(encoding="utf-8"))["exports"]
        spec = importlib.util.spec_from_file_location(module_name(), so)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {so}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (OSError, ImportError, ValueError, KeyError) as exc:
        logger.warning("the ahead-of-time kernels at %s do not load (%s); using numba's JIT", so, exc)
        return None
    return module, exports


def loaded() -> bool:
    """Whether calls can go to the built module (it exists for this key and is enabled)."""
    return enabled() and _load() is not None


def _matches(spec: Spec, a: object) -> bool:
    if spec == "bool":
        return isinstance(a, bool | np.bool_)
    if spec == "int":
        return isinstance(a, int | np.integer) and not isinstance(a, bool | np.bool_)
    if spec == "float":
        return isinstance(a, float | np.floating)
    if isinstance(spec, dict) and "tuple" in spec:
        items = spec["tuple"]
        return isinstance(a, tuple) and len(a) == len(items) and all(map(_matches, items, a))
    if not (isinstance(spec, dict) and isinstance(a, np.ndarray)):
        return False
    flags = a.flags
    return (
        a.dtype == np.dtype(spec["array"])
        and a.ndim == spec["ndim"]
        and (spec["layout"] != "C" or bool(flags.c_contiguous))
        and (spec["layout"] != "F" or bool(flags.f_contiguous))
    )


def _describe(args: tuple[Any, ...]) -> str:
    """The arguments' types as the manifest spells them (for the log)."""

    def one(a: object) -> str:
        if isinstance(a, np.ndarray):
            order = "C" if a.flags.c_contiguous else "F" if a.flags.f_contiguous else "A"
            return f"{a.dtype}[{a.ndim}d,{order}]"
        if isinstance(a, tuple):
            return "(" + ", ".join(map(one, a)) + ")"
        return type(a).__name__

    return ", ".join(map(one, args))


def jit_kernel(entry: str) -> Kernel:
    """numba's dispatcher of ``entry`` (imports numba and compiles or loads it on first call)."""
    module, attr = ENTRIES[entry]
    fn: Kernel = getattr(importlib.import_module(module), attr)
    return fn


def kernel(entry: str, args: tuple[Any, ...]) -> Kernel:
    """The built export of ``entry`` compiled for exactly these arguments' types, else the JIT's."""
    built = _load() if enabled() else None
    if built is not None:
        module, exports = built
        for export in exports.get(entry, ()):
            if len(export["args"]) == len(args) and all(map(_matches, export["args"], args)):
                fn: Kernel = getattr(module, export["name"])
                return fn
        logger.debug("no ahead-of-time %s for argument types %s; numba's JIT", entry, _describe(args))
    return jit_kernel(entry)


def call(entry: str, *args: Any) -> Any:
    """Run kernel ``entry`` (one of :data:`ENTRIES`) on ``args``."""
    return kernel(entry, args)(*args)
