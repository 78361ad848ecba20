"""How one pass over the partitions runs: the only module that talks to Dask's schedulers.

A *runner* holds partitioned data and offers one operation, :meth:`map_reduce`: apply a pure
per-partition function ``fn(X_block, w_block, partition_index, row_offset)`` to every partition
and fold the small results with ``reduce_fn(list_of_results)``. Every EM iteration, every
initialisation pass and the input validation are one such call.

* :class:`DistributedRunner` — an active ``distributed.Client``: the data are persisted once
  (with lineage, so a lost worker's partitions are recomputed from source), and each pass
  submits ONE task per worker thread over partitions that worker holds (grouping rebuilt from
  ``who_has`` every pass, so it follows worker loss; see :func:`plan_groups`), then folds the
  per-task results.
* :class:`GraphRunner` — Dask's local scheduler (threads by default), or a client when data
  are streamed (``persist=False``): one ``dask.compute`` of a small graph per pass.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from dask.base import compute
from dask.base import persist as dask_persist
from dask.delayed import delayed

from gmm_dask.mixture.arrays import FloatArray

if TYPE_CHECKING:
    import dask.array as da
    from dask.delayed import Delayed
    from dask.typing import Key
    from distributed import Client, Future
    from threadpoolctl import ThreadpoolController

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: ``fn(X_block, w_block, partition_index, row_offset)``: one partition's small result.
ChunkFn = Callable[[FloatArray, FloatArray | None, int, int], R]
#: Folds a list of results (of partitions, or of folds) into one.
ReduceFn = Callable[[list[R]], R]


class Runner(Protocol):
    """The seam between the algorithms and Dask: map a pure per-partition function over the
    partitions and fold the results (see the module docstring)."""

    @property
    def passes(self) -> int:
        """Passes over the data so far (:meth:`map_reduce` calls)."""
        ...

    def map_reduce(self, fn: ChunkFn[R], reduce_fn: ReduceFn[R]) -> R: ...

    def close(self) -> None: ...


@dataclass
class ChunkedData:
    """Row-partitioned float64 data: X of shape (N, D) and optional weights of shape (N,)."""

    X: da.Array
    w: da.Array | None
    feature_names: list[str] | None = None

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.X.chunks[0])

    @property
    def offsets(self) -> list[int]:
        return [int(o) for o in np.concatenate([[0], np.cumsum(self.lengths)[:-1]])] if self.lengths else []

    @property
    def n_rows(self) -> int:
        return int(sum(self.lengths))

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def active_client() -> Client | None:
    """The default ``distributed.Client`` if one is active, else None (never starts one)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client: Client = default_client()  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
    except ValueError:
        return None
    return client


def _apply_group(
    fn: ChunkFn[R], reduce_fn: ReduceFn[R], metas: Sequence[tuple[int, int]], *blocks: FloatArray
) -> R:
    """Run ``fn`` over several partitions held by one worker and fold their results."""
    n = len(metas)
    xs = blocks[:n]
    ws: Sequence[FloatArray | None] = blocks[n:] if len(blocks) > n else [None] * n
    with _single_blas_thread():
        results = [fn(x, w, i, off) for x, w, (i, off) in zip(xs, ws, metas, strict=True)]
    return reduce_fn(results)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def _single_blas_thread() -> Iterator[None]:
    """One BLAS thread inside a partition task: EM's tall-skinny products run faster that way,
    and parallelism comes from running partitions side by side."""
    ctl = _blas_controller()
    if all(info.get("num_threads", 1) <= 1 for info in ctl.info() if info.get("user_api") == "blas"):
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


class GraphRunner:
    """Passes as ``dask.compute`` calls on Dask's current scheduler."""

    def __init__(self, data: ChunkedData, *, persist: bool = True) -> None:
        X, w = data.X, data.w
        if persist:
            X, w = dask_persist(X, w) if w is not None else (dask_persist(X)[0], None)  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        self.data = ChunkedData(X, w, data.feature_names)
        self._xb: list[Delayed] = list(X.to_delayed().ravel())  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        self._wb: list[Delayed | None] = (
            list(w.to_delayed().ravel()) if w is not None else [None] * len(self._xb)  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        )
        self._metas = list(zip(range(len(self._xb)), self.data.offsets, strict=True))

    passes = 0  # passes over the data so far (map_reduce calls)

    def map_reduce(self, fn: ChunkFn[R], reduce_fn: ReduceFn[R]) -> R:
        self.passes += 1
        # Few, large tasks: partitions are grouped so the graph stays small however many there are.
        n = len(self._xb)
        group = max(1, int(np.ceil(n / 64)))
        tasks = []
        for start in range(0, n, group):
            sl = slice(start, start + group)
            blocks = list(self._xb[sl]) + ([b for b in self._wb[sl]] if self.data.w is not None else [])
            tasks.append(delayed(_apply_group, pure=False)(fn, reduce_fn, self._metas[sl], *blocks))
        total = delayed(reduce_fn, pure=False)(tasks)
        result: R = compute(total)[0]  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        return result

    def close(self) -> None:
        self._xb, self._wb = [], []


def plan_groups(
    holders: Sequence[Sequence[str]], sizes: Sequence[int], nthreads: dict[str, int]
) -> list[tuple[str | None, list[int]]]:
    """Which partitions each task of a pass reads: one task per worker thread.

    Partitions stay on a worker that holds them while its threads are under their fair share of
    rows (half a partition of slack); the rest go to the least-loaded threads anywhere, so data
    are balanced across workers however they landed and otherwise never move (a moved partition
    is held twice afterwards, so it does not move again). Partitions with no live holder go to
    the least-loaded thread.

    Parameters
    ----------
    holders : sequence of sequences of str
        For each partition, the addresses of the workers holding it.
    sizes : sequence of int
        Rows of each partition.
    nthreads : dict
        Threads of each live worker.

    Returns
    -------
    list of (worker address or None, partition indices)
        Ordered by first partition index; None when no worker is known.
    """
    if not nthreads:
        return [(None, list(range(len(sizes))))] if len(sizes) else []
    slots = [(w, t) for w in sorted(nthreads) for t in range(max(1, int(nthreads[w])))]
    load = [0] * len(slots)
    members: list[list[int]] = [[] for _ in slots]
    by_worker: dict[str, list[int]] = {}
    for j, (w, _) in enumerate(slots):
        by_worker.setdefault(w, []).append(j)

    def lightest(cands: Iterable[int]) -> int:
        return min(cands, key=lambda j: (load[j], j))

    def place(i: int, j: int) -> None:
        load[j] += sizes[i]
        members[j].append(i)

    share = sum(sizes) / len(slots)
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    local = {i: [j for w in holders[i] if w in by_worker for j in by_worker[w]] for i in order}
    deferred: list[int] = []
    for i in order:
        best = lightest(local[i]) if local[i] else None
        if best is not None and load[best] + sizes[i] <= share + sizes[i] / 2:
            place(i, best)
        else:
            deferred.append(i)
    for i in deferred:
        anywhere = lightest(range(len(slots)))
        near = lightest(local[i]) if local[i] else anywhere
        place(i, near if load[near] <= load[anywhere] else anywhere)
    groups = [(slots[j][0], sorted(m)) for j, m in enumerate(members) if m]
    return sorted(groups, key=lambda g: g[1][0])


class DistributedRunner:
    """One task per worker thread per pass over persisted partitions (see module docstring)."""

    def __init__(self, client: Client, data: ChunkedData) -> None:
        from distributed import wait

        self.client = client
        X, w = data.X, data.w
        X = client.persist(X)  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        w = client.persist(w) if w is not None else None  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        self.data = ChunkedData(X, w, data.feature_names)
        self._xf = _ordered_futures(X)
        self._wf: list[Future[FloatArray]] | None = _ordered_futures(w) if w is not None else None
        self._metas = list(zip(range(len(self._xf)), self.data.offsets, strict=True))
        # Where the partitions landed decides every pass's grouping: know it before the first.
        wait(self._xf + (self._wf or []))  # type: ignore[no-untyped-call]  # dask/distributed: unannotated

    def _groups(self) -> list[tuple[str | None, list[int]]]:
        who: dict[Key, tuple[str, ...]] = self.client.who_has(self._xf)  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        holders = [sorted(who.get(f.key, ()) or ()) for f in self._xf]
        nthreads: dict[str, int] = self.client.nthreads()  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        return plan_groups(holders, self.data.lengths, nthreads)

    passes = 0  # passes over the data so far (map_reduce calls)

    def map_reduce(self, fn: ChunkFn[R], reduce_fn: ReduceFn[R]) -> R:
        self.passes += 1
        futures: list[Future[R]] = []
        for worker, idx in self._groups():
            blocks = [self._xf[i] for i in idx]
            if self._wf is not None:
                blocks += [self._wf[i] for i in idx]
            placement: dict[str, Any] = (
                {} if worker is None else {"workers": [worker], "allow_other_workers": True}
            )
            futures.append(
                self.client.submit(
                    _apply_group,
                    fn,
                    reduce_fn,
                    [self._metas[i] for i in idx],
                    *blocks,
                    pure=False,
                    **placement,
                )
            )
        results: list[R] = self.client.gather(futures)  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
        return reduce_fn(results)

    def close(self) -> None:
        self._xf, self._wf = [], []


def _ordered_futures(arr: da.Array) -> list[Future[FloatArray]]:
    from distributed import futures_of

    by_key = {f.key: f for f in futures_of(arr)}  # type: ignore[no-untyped-call]  # dask/distributed: unannotated
    return [by_key[k] for k in _flatten_keys(arr.__dask_keys__())]


def _flatten_keys(keys: list[Any]) -> list[Any]:
    """dask's nested lists of chunk keys, flattened in order (a key is a tuple)."""
    out: list[Any] = []
    for k in keys:
        if isinstance(k, list):
            out.extend(_flatten_keys(k))
        else:
            out.append(k)
    return out


def make_runner(data: ChunkedData, *, persist: bool = True) -> GraphRunner | DistributedRunner:
    """A :class:`DistributedRunner` if a client is active and data are persisted, else a
    :class:`GraphRunner` on Dask's current scheduler."""
    client = active_client()
    if client is not None and persist:
        logger.info("Running on the active Dask client %s", getattr(client, "dashboard_link", client))
        return DistributedRunner(client, data)
    return GraphRunner(data, persist=persist)
