"""The architecture the README and ARCHITECTURE.md describe, checked on the code itself.

- Layers: gmm_dask_cli -> flows -> gmm_dask.app -> (gmm_dask.report | gmm_dask.storage) ->
  gmm_dask.segmentation -> gmm_dask.mixture -> gmm_dask.errors, nothing importing upward, and no
  import cycle between the modules of a package (import-linter's contracts in pyproject.toml).
- Types: mypy passes on the package (strict on the engine and the domain; see [tool.mypy]).
- Size: no module over 600 lines and no function over 80 (compiled kernels aside).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PACKAGES = ("gmm_dask", "gmm_dask_cli", "flows")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
#: Functions allowed to be longer, with the reason.
LONG_FUNCTIONS: dict[str, str] = {}


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, check=False)


def test_layers_and_acyclic_packages_hold():
    out = _run(str(BIN / "lint-imports"), "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


@pytest.mark.slow
def test_mypy_passes_on_the_package():
    out = _run(sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache"))
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def _sources():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function, its docstring not counted."""
    n = fn.end_lineno - fn.lineno + 1
    if ast.get_docstring(fn) is not None:
        doc = fn.body[0]
        n -= doc.end_lineno - doc.lineno + 1
    return n


def test_no_module_or_function_is_too_long_to_hold_in_mind():
    too_long = []
    for path in _sources():
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {text.count(chr(10))} lines (> {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = _code_lines(node)
                key = f"{rel}:{node.name}"
                if n > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    too_long.append(f"{key}: {n} lines of code (> {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)
