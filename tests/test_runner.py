"""How a pass is spread over a Dask cluster: one task per worker thread, over balanced data."""

import dask.array as da

from gmm_dask.mixture.runner import DistributedRunner, plan_groups
from gmm_dask.mixture.validation import to_chunked

A, B = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"


def _loads(groups, sizes):
    out: dict = {}
    for worker, idx in groups:
        out.setdefault(worker, []).append(sum(sizes[i] for i in idx))
    return out


def test_data_on_one_worker_are_split_evenly_and_most_stay_put():
    sizes = [100] * 8
    groups = plan_groups([[A]] * 8, sizes, {A: 1, B: 1})
    assert _loads(groups, sizes) == {A: [400], B: [400]}
    assert sorted(i for _, idx in groups for i in idx) == list(range(8))  # each exactly once


def test_balanced_data_never_move():
    holders = [[A], [B]] * 4
    groups = plan_groups(holders, [100] * 8, {A: 1, B: 1})
    for worker, idx in groups:
        assert all(holders[i] == [worker] for i in idx)


def test_uneven_landing_moves_only_the_excess():
    holders = [[A]] * 5 + [[B]] * 3
    groups = dict(plan_groups(holders, [100] * 8, {A: 1, B: 1}))
    assert len(groups[A]) == len(groups[B]) == 4
    assert set(groups[B]) >= {5, 6, 7}  # B keeps its own


def test_replicas_let_the_plan_balance_without_moving():
    holders = [[A, B]] * 6
    groups = plan_groups(holders, [10, 20, 30, 40, 50, 60], {A: 1, B: 1})
    assert sorted(sum(v) for v in _loads(groups, [10, 20, 30, 40, 50, 60]).values()) == [100, 110]


def test_one_task_per_thread():
    groups = plan_groups([[A]] * 6 + [[B]] * 2, [100] * 8, {A: 2, B: 1})
    assert sorted(len(idx) for w, idx in groups if w == A) == [3, 3]
    assert [len(idx) for w, idx in groups if w == B] == [2]


def test_lost_and_unknown_holders():
    groups = plan_groups([[A], ["tcp://gone:9"], []], [100, 100, 100], {A: 1, B: 1})
    assert sorted(sum(v) for v in _loads(groups, [100] * 3).values()) == [100, 200]
    assert [0] in [idx[:1] for w, idx in groups if w == A]  # the held partition stays
    assert plan_groups([[A]] * 3, [1, 2, 3], {}) == [(None, [0, 1, 2])]


def test_persisted_data_on_one_worker_are_processed_on_both(dask_cluster):
    from distributed import Client, get_worker

    with Client(dask_cluster) as client:
        first = sorted(client.scheduler_info()["workers"])[0]
        X = client.persist(da.random.random((8000, 3), chunks=(1000, 3)), workers=[first])
        runner = DistributedRunner(client, to_chunked(X))
        for _ in range(2):  # the second pass sees replicas made by the first
            seen = runner.map_reduce(
                lambda x, w, i, off: [(i, get_worker().address)], lambda p: [x for part in p for x in part]
            )
            assert sorted(i for i, _ in seen) == list(range(8))
            per_worker = {a: sum(1 for _, b in seen if b == a) for _, a in seen}
            assert sorted(per_worker.values()) == [4, 4], per_worker
        runner.close()
