"""What the degenerate-component report says: atoms printed as users read them, warnings that
name segments as the published tables do."""

from __future__ import annotations

import math

from gmm_dask.app.fitting import Degenerate, atom_value

FEATURES = ["sessions_30d", "purchases_90d"]


def test_an_atom_at_zero_reads_zero_not_minus_zero():
    # a component whose mean sits just under half a step above 0 rounds onto the grid from below
    assert math.copysign(1.0, atom_value(0.4, 1.0)) == 1.0
    assert atom_value(0.4, 1.0) == 0.0
    assert atom_value(2.6, 1.0) == 2.0
    why = Degenerate({}, {0: [1]}, {0: [-0.0]}).reason(0, FEATURES, 0.01)
    assert why == "atom at purchases_90d=0 (variance at the resolution floor)"
