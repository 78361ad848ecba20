"""Build the ahead-of-time kernels for this machine (see :mod:`gmm_dask.mixture.aot`).

``python -m gmm_dask.mixture.build_kernels [--force] [--quiet] [--dir DIR]`` — once per machine
(``./dev`` runs it after installing; a worker image runs it after ``pip install``). It calls
every kernel the way the E-steps of both families do, under numba's JIT, then compiles each
signature that recorded with ``numba.pycc`` (which needs setuptools and a C compiler) into
one extension module, written atomically beside a manifest of its exports. Where it cannot
build, fits still run: numba compiles or loads the kernels in each new process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gmm_dask.mixture import aot

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _jit_only() -> Iterator[None]:
    old = os.environ.get("GMM_DASK_KERNELS")
    os.environ["GMM_DASK_KERNELS"] = "jit"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GMM_DASK_KERNELS", None)
        else:
            os.environ["GMM_DASK_KERNELS"] = old


@contextlib.contextmanager
def _wrappers_release_the_gil() -> Iterator[None]:
    """numba.pycc compiles each export's Python wrapper with default flags, so the wrapper holds
    the GIL while the kernel runs, and threads of one process (a worker with several threads)
    would take turns. The JIT's ``nogil=True`` is the ``release_gil`` flag of the same wrapper:
    set it for the exports too (tests/test_aot.py checks another thread runs meanwhile)."""
    from numba.pycc import compiler

    base = compiler.Flags

    class Flags(base):  # type: ignore[misc, valid-type]  # numba: unannotated
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = True

    setattr(compiler, "Flags", Flags)  # noqa: B010  (a module attribute numba reads at compile time)
    try:
        yield
    finally:
        setattr(compiler, "Flags", base)  # noqa: B010


def _record_signatures() -> None:
    """Run both families' E-steps on a few rows under the JIT (the Gaussian one in both
    precisions), so that numba's dispatchers hold every signature the fits use."""
    from gmm_dask.mixture.warm import warm_up

    with _jit_only():
        warm_up(("float64", "float32"))


def _spec(t: Any) -> aot.Spec:
    """A numba type as :data:`gmm_dask.mixture.aot.Spec`."""
    from numba.core import types

    if isinstance(t, types.Array):
        return {"array": str(np.dtype(str(t.dtype))), "ndim": t.ndim, "layout": t.layout}
    if isinstance(t, types.BaseTuple):
        return {"tuple": [_spec(x) for x in t.types]}  # type: ignore[attr-defined]  # on both tuple kinds
    for kind, name in ((types.Boolean, "bool"), (types.Integer, "int"), (types.Float, "float")):
        if isinstance(t, kind):
            return name
    raise TypeError(f"no ahead-of-time export for an argument of numba type {t}")


def _signatures_to_export() -> list[tuple[str, str, Any, list[aot.Spec]]]:
    """(entry, export name, numba signature, argument specs) per distinct signature in use."""
    out = []
    for entry in aot.ENTRIES:
        dispatcher = aot.jit_kernel(entry)
        seen: list[list[aot.Spec]] = []
        for args in dispatcher.signatures:  # type: ignore[attr-defined]  # numba's Dispatcher
            specs = [_spec(a) for a in args]
            if specs in seen:  # e.g. a read-only twin of a signature
                continue
            seen.append(specs)
            sig = dispatcher.overloads[args].signature  # type: ignore[attr-defined]  # numba's Dispatcher
            out.append((entry, f"{entry}_{len(seen) - 1}", sig, specs))
        if not seen:
            raise RuntimeError(f"the warm-up did not call {entry}; nothing to compile for it")
    return out


def build(directory: Path | None = None, *, force: bool = False) -> Path:
    """Compile the kernels into ``directory`` (default :func:`gmm_dask.mixture.aot.kernel_dir`)
    unless a module for this key is there already; returns the module's path."""
    directory = directory or aot.kernel_dir()
    name = aot.module_name()
    so = directory / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    manifest = directory / f"{name}.json"
    if so.exists() and manifest.exists() and not force:
        return so
    from numba.core.errors import NumbaPendingDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
        from numba.pycc import CC

        from gmm_dask.mixture import _exports

        _record_signatures()
        found = _signatures_to_export()
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
        try:
            cc = CC(name)  # type: ignore[no-untyped-call]  # numba: unannotated
            cc.output_dir = str(tmp)
            cc.target_cpu = "host"
            cc.verbose = False
            for entry, export, sig, _ in found:
                cc.export(export, sig)(getattr(_exports, entry))  # type: ignore[no-untyped-call]  # numba: unannotated
            with contextlib.redirect_stdout(io.StringIO()), _wrappers_release_the_gil():
                cc.compile()  # (setuptools echoes each compiler command)
            (built,) = tmp.glob(f"{name}*{sysconfig.get_config_var('EXT_SUFFIX')}")
            doc = {"key": aot.key(), "exports": _manifest(found)}
            (tmp / "manifest.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
            os.replace(built, so)
            os.replace(tmp / "manifest.json", manifest)  # last: a module counts once this exists
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(directory, name)
    return so


def _manifest(found: list[tuple[str, str, Any, list[aot.Spec]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for entry, export, _, specs in found:
        out.setdefault(entry, []).append({"name": export, "args": specs})
    return out


def _remove_stale(directory: Path, keep: str) -> None:
    """Modules built under other keys (older kernels or versions) never load again from this
    install's own ``__pycache__``; a directory named by ``GMM_DASK_KERNEL_DIR`` or the user cache
    may be shared by machines of other CPUs, whose modules are theirs to keep."""
    if directory.resolve() != (aot.HERE / "__pycache__").resolve():
        return
    for path in directory.glob("gmm_dask_kernels_*"):
        if not path.name.startswith(keep):
            with contextlib.suppress(OSError):
                path.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gmm_dask.mixture.build_kernels", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if a module for this machine exists")
    ap.add_argument("--quiet", action="store_true", help="print only when building or when it fails")
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to keep it (default: GMM_DASK_KERNEL_DIR, else __pycache__ beside the package)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(message)s", level=logging.WARNING if args.quiet else logging.INFO)
    directory = args.dir or aot.kernel_dir()
    name = aot.module_name()
    if not args.force and (directory / f"{name}.json").exists():
        logger.info("gmm-dask's kernels for this machine are built: %s", directory / name)
        return 0
    logger.warning("Compiling gmm-dask's kernels for this machine (once, about 20 s) ...")
    t0 = time.perf_counter()
    try:
        so = build(directory, force=args.force)
    except Exception as exc:  # a missing compiler or setuptools, a read-only directory, ...
        logger.error(
            "Could not build gmm-dask's kernels ahead of time: %s: %s\n"
            "Fits still run: numba compiles or loads the kernels in each new process (about 2 s).",
            type(exc).__name__,
            exc,
        )
        return 1
    logger.warning("Compiled gmm-dask's kernels in %.1f s: %s", time.perf_counter() - t0, so)
    return 0


if __name__ == "__main__":
    sys.exit(main())
