"""The steady movers rule on hand-built memberships: a user who moves away a little more at every
snapshot is a mover; one window that jumps and stays, or jumps and comes back, is not."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gmm_dask.segmentation.fluidity import steady_move, steady_movers


def _g(*rows: list[float]) -> np.ndarray:
    return np.asarray(rows, dtype=float)


def test_a_steady_move_is_flagged_with_its_total_variation_and_a_jump_is_not():
    # users: a persistent mover, a jump that comes back, a jump that stays, someone who never moves
    before = _g([1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.8, 0.0])
    middle = _g([0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.8, 0.0])
    now = _g([0.1, 0.9, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.8, 0.0])
    tv, steady = steady_move([before, middle, now])
    np.testing.assert_allclose(tv, [0.9, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(steady, [True, False, False, False])


def test_over_one_snapshot_every_move_is_steady_as_the_one_step_tv_rule():
    before = _g([1.0, 0.0], [0.5, 0.5], [0.3, 0.7])
    now = _g([0.0, 1.0], [0.5, 0.5], [0.6, 0.4])
    tv, steady = steady_move([before, now])
    np.testing.assert_allclose(tv, 0.5 * np.abs(before - now).sum(axis=1))
    np.testing.assert_array_equal(steady, [True, False, True])


def test_a_move_that_reverses_direction_midway_is_not_steady():
    # away from segment 0 towards 1, then back towards 0 though still far from the start
    path = [_g([1.0, 0.0]), _g([0.2, 0.8]), _g([0.4, 0.6]), _g([0.1, 0.9])]
    tv, steady = steady_move(path)
    assert tv[0] == pytest.approx(0.9)
    assert not steady[0]


def test_steady_move_needs_two_snapshots():
    with pytest.raises(ValueError, match="at least 2 snapshots, got 1"):
        steady_move([_g([1.0, 0.0])])


def _memberships(ids: list[int], segments: list[int], gammas: list[list[float]]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "segment": pa.array(segments, pa.int32()),
            "gamma": pa.array(gammas, pa.list_(pa.float64())),
        }
    )


def test_steady_movers_lines_up_users_and_segments_born_between_the_snapshots():
    # day 1 has segments (0, 1); day 2 and 3 add segment 7; user 3 is missing on day 2
    d1 = _memberships([1, 2, 3], [0, 0, 1], [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    d2 = _memberships([2, 1], [0, 0], [[0.9, 0.1, 0.0], [0.6, 0.1, 0.3]])
    d3 = _memberships([3, 2, 1], [7, 0, 7], [[0.0, 0.0, 1.0], [0.1, 0.9, 0.0], [0.1, 0.0, 0.9]])
    out = steady_movers([d1, d2, d3], [[0, 1], [0, 1, 7], [0, 1, 7]], "user_id")
    # user 1 moves steadily from 0 to the new 7; user 2 jumps at the last step only; 3 is absent
    assert out.column("user_id").to_pylist() == [1]
    assert out.column("segment_from").to_pylist() == [0]
    assert out.column("segment_to").to_pylist() == [7]
    assert out.column("tv_distance").to_pylist() == pytest.approx([0.9])
