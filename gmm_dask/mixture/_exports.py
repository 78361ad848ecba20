"""The functions ``numba.pycc`` compiles into the ahead-of-time module, one per entry of
:data:`gmm_dask.mixture.aot.ENTRIES`: each only calls the numba kernel, so the machine code is
the kernel's own (its flags included). Imported by :mod:`gmm_dask.mixture.build_kernels` only."""

from __future__ import annotations

from gmm_dask.mixture import _kernels
from gmm_dask.mixture._kernels import Floats
from gmm_dask.mixture.arrays import FloatArray, Int64Array
from gmm_dask.mixture.behaviour import _kernel
from gmm_dask.mixture.behaviour._kernel import F64, I64, Lay, Par


def estep_tiles(
    X: FloatArray, w: FloatArray, weighted: bool, shift: FloatArray, A: Floats, ia: Int64Array, ja: Int64Array,
    k: int, tile: int, tiles_per_group: int, hard: bool, scores: FloatArray, S: FloatArray, hard_nk: FloatArray,
) -> float:  # fmt: skip
    return _kernels.estep_tiles(
        X, w, weighted, shift, A, ia, ja, k, tile, tiles_per_group, hard, scores, S, hard_nk
    )


def behaviour_estep(
    X: F64, w: F64, weighted: bool, resp: F64, given: bool, censor: bool, lay: Lay, par: Par, k: int,
    block_rows: int, hard: bool, scores: F64, S: F64, EX: F64, MOM: F64, shift: F64, nk: F64, hard_nk: F64,
    bad: I64,
) -> float:  # fmt: skip
    return _kernel.estep(
        X, w, weighted, resp, given, censor, lay, par, k, block_rows, hard, scores, S, EX, MOM, shift, nk,
        hard_nk, bad,
    )  # fmt: skip


def behaviour_log_prob(X: F64, lay: Lay, par: Par, k: int, out: F64) -> None:
    _kernel.log_prob(X, lay, par, k, out)


def behaviour_summary(
    X: F64, Z: F64, w: F64, weighted: bool, lay: Lay, par: Par, k: int, block_rows: int, shift: F64,
    ia: I64, ja: I64, S: F64, bad: I64,
) -> None:  # fmt: skip
    _kernel.summary(X, Z, w, weighted, lay, par, k, block_rows, shift, ia, ja, S, bad)
