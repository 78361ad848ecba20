"""What stays fixed across fits and days: feature kinds, count bins, parent and cap links.

:func:`infer_structure` reads it from a sample, :func:`check_values` validates a block of rows
against it, and :class:`Layout` turns it into the flat index arrays the compiled kernel reads.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

KINDS = ("count", "amount", "continuous", "binary")

#: Counts get one bin per integer 0 … SINGLE_BINS − 1, then bins growing by BIN_RATIO up to the
#: TAIL_QUANTILE of the sample, then an open bin with a geometric tail.
SINGLE_BINS = 8
BIN_RATIO = 1.3
TAIL_QUANTILE = 0.995
#: An amount's parent is the count whose zero pattern agrees with its own on ≥ this share.
PARENT_AGREEMENT = 0.99
#: A count x has a *zero parent* c (another count) when, in the sample, c = 0 on ≥ ZERO_MIN_SHARE
#: of the rows, x = 0 on ≥ ZERO_FOLLOW of the rows where c = 0 (x > 0 happens (almost) only
#: when c > 0), and x > 0 on ≥ ZERO_INFORMATIVE of the rows where c > 0 (else x is mostly 0
#: anyway and the link says nothing). Of several such c, the one with the most zeros wins
#: (ties: the first); c must not depend on x through other links (the links stay acyclic, so
#: the product of conditionals is a distribution), and a capped count gets no zero parent (its
#: cap already bounds it).
ZERO_FOLLOW = 0.99
ZERO_MIN_SHARE = 0.01
ZERO_INFORMATIVE = 0.05
#: A count x is capped by count c when x ≤ c on ≥ CAP_AT_MOST of the sample and x = c > 0 on
#: ≥ CAP_AT_CAP of it (active days ≤ sessions).
CAP_AT_MOST = 0.999
CAP_AT_CAP = 0.05

_ARTICLE = {
    "count": "a count",
    "amount": "an amount",
    "continuous": "a continuous feature",
    "binary": "a binary",
}


@dataclass(frozen=True)
class Structure:
    """Feature kinds and the fixed parts of the model (hashable, JSON-safe).

    Attributes
    ----------
    kinds : tuple of str, one of :data:`KINDS` per feature
    names : tuple of str, feature names (for messages)
    edges : tuple of tuple of int
        Per feature: the lower edges of its bins (counts; the last bin is open), else ().
    parent : tuple of int
        Per feature: for an amount, the index of the count whose zero pattern and log value it
        depends on; for a count, the index of its *zero parent*, the count whose zeros its own
        follow (P(x = 0 | parent = 0) is a separate probability); else −1.
    cap : tuple of int
        Per feature: for a count, the index of the count that caps it (x = min(Y, cap)), else −1.
    """

    kinds: tuple[str, ...]
    names: tuple[str, ...]
    edges: tuple[tuple[int, ...], ...]
    parent: tuple[int, ...]
    cap: tuple[int, ...]

    def __post_init__(self) -> None:
        d = len(self.kinds)
        if any(len(a) != d for a in (self.names, self.edges, self.parent, self.cap)):
            raise ValueError("Structure: kinds, names, edges, parent and cap need one entry per feature")
        for j, kind in enumerate(self.kinds):
            if kind not in KINDS:
                raise ValueError(f"feature {self.names[j]!r}: kind must be one of {KINDS}, got {kind!r}")
            if kind == "count" and (len(self.edges[j]) < 2 or self.edges[j][0] != 0):
                raise ValueError(f"count {self.names[j]!r} needs at least two bin edges starting at 0")
            p = self.parent[j]
            if p >= 0 and (kind not in ("amount", "count") or self.kinds[p] != "count" or p == j):
                raise ValueError(
                    f"feature {self.names[j]!r}: only an amount or a count may have a parent, another count"
                )
            c = self.cap[j]
            if p >= 0 and c >= 0:
                raise ValueError(
                    f"count {self.names[j]!r} cannot be both capped (by {self.names[c]!r}) and have a zero "
                    f"parent ({self.names[p]!r}): give it one link (a cap already bounds its zeros)"
                )
            if kind == "count" and _depends_on(self.parent, self.cap, p, j):
                raise ValueError(
                    f"count {self.names[j]!r}: its zero parent {self.names[p]!r} depends on it through "
                    "other links (the links must not form a cycle)"
                )
            if c >= 0 and (kind != "count" or c == j or self.kinds[c] != "count" or self.cap[c] == j):
                raise ValueError(f"feature {self.names[j]!r}: only a count may be capped, by another count")

    @property
    def n_features(self) -> int:
        return len(self.kinds)

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "names": list(self.names),
            "edges": [list(e) for e in self.edges],
            "parent": list(self.parent),
            "cap": list(self.cap),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Structure:
        return cls(
            kinds=tuple(str(k) for k in d["kinds"]),
            names=tuple(str(n) for n in d["names"]),
            edges=tuple(tuple(int(v) for v in e) for e in d["edges"]),
            parent=tuple(int(p) for p in d["parent"]),
            cap=tuple(int(c) for c in d["cap"]),
        )


def count_edges(x: NDArray[np.float64]) -> tuple[int, ...]:
    """Bin lower edges of one count feature from its sample values."""
    finite = x[np.isfinite(x)]
    hi = max(float(np.quantile(finite, TAIL_QUANTILE)) if finite.size else 0.0, SINGLE_BINS + 1.0)
    edges = list(range(SINGLE_BINS))
    v = float(SINGLE_BINS)
    while v < hi:
        edges.append(round(v))
        v = max(v * BIN_RATIO, v + 1)
    return tuple(sorted(set(edges)))


def _depends_on(parent: Sequence[int], cap: Sequence[int], start: int, target: int) -> bool:
    """Whether feature ``start`` is, or depends through parent and cap links on, ``target``."""
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f == target:
            return True
        if f < 0 or f in seen:
            continue
        seen.add(f)
        todo += [parent[f], cap[f]]
    return False


def _zero_parent(
    sample: NDArray[np.float64], kinds: Sequence[str], j: int, parents: Sequence[int], caps: Sequence[int]
) -> int:
    """The zero parent of count j (see :data:`ZERO_FOLLOW`), −1, given the links so far."""
    xz = sample[:, j] == 0
    best, best_zeros = -1, max(ZERO_MIN_SHARE * sample.shape[0], 1.0)
    for c, kc in enumerate(kinds):
        if c == j or kc != "count" or _depends_on(parents, caps, c, j):
            continue
        cz = sample[:, c] == 0
        n_zero, n_pos = float(cz.sum()), float((~cz).sum())
        if n_zero < best_zeros or (n_zero == best_zeros and best >= 0) or n_pos == 0:
            continue
        if (xz & cz).sum() >= ZERO_FOLLOW * n_zero and (~xz & ~cz).sum() >= ZERO_INFORMATIVE * n_pos:
            best, best_zeros = c, n_zero
    return best


def _auto_parents(sample: NDArray[np.float64], kinds: Sequence[str], caps: Sequence[int]) -> list[int]:
    """Amounts' parents and (uncapped) counts' zero parents."""
    parents = [-1] * len(kinds)
    for j, kind in enumerate(kinds):
        if kind == "count" and caps[j] < 0:
            parents[j] = _zero_parent(sample, kinds, j, parents, caps)
        if kind != "amount":
            continue
        best, best_agree = -1, PARENT_AGREEMENT
        for c, kc in enumerate(kinds):
            if kc == "count":
                agree = float(np.mean((sample[:, j] == 0) == (sample[:, c] == 0)))
                if agree >= best_agree:
                    best, best_agree = c, agree
        parents[j] = best
    return parents


def _auto_caps(sample: NDArray[np.float64], kinds: Sequence[str], skip: Sequence[int]) -> list[int]:
    """Counts' caps; counts with ``skip[j] >= 0`` (an explicit zero parent) get none."""
    caps = [-1] * len(kinds)
    for j, kind in enumerate(kinds):
        if kind != "count" or skip[j] >= 0:
            continue
        best, best_eq = -1, CAP_AT_CAP
        for c, kc in enumerate(kinds):
            if c == j or kc != "count" or caps[c] == j:
                continue
            at_most = float(np.mean(sample[:, j] <= sample[:, c]))
            at_cap = float(np.mean((sample[:, j] == sample[:, c]) & (sample[:, c] > 0)))
            if at_most >= CAP_AT_MOST and at_cap >= best_eq:
                best, best_eq = c, at_cap
        caps[j] = best
    return caps


def _links(
    spec: str | Mapping[str, str] | None,
    auto: list[int],
    names: Sequence[str],
    what: str,
) -> list[int]:
    """Links from 'auto', None (none) or an explicit {feature name: linked feature name}."""
    if spec == "auto":
        return auto
    out = [-1] * len(names)
    if spec is None:
        return out
    if isinstance(spec, str):
        raise ValueError(f"{what} must be 'auto', None or a mapping of feature names, got {spec!r}")
    for child, target in spec.items():
        for name in (child, target):
            if name not in names:
                raise ValueError(f"{what}: unknown feature {name!r} (features: {', '.join(names)})")
        out[list(names).index(child)] = list(names).index(target)
    return out


#: How a structure's links are given: 'auto' (detected in the sample), None (no links), or
#: a mapping of feature name -> feature name (an amount's parent count or a count's zero
#: parent; a count's cap).
Links = str | Mapping[str, str] | None


def infer_structure(
    sample: NDArray[np.float64],
    kinds: Sequence[str],
    names: Sequence[str],
    *,
    parents: str | Mapping[str, str] | None = "auto",
    caps: str | Mapping[str, str] | None = "auto",
) -> Structure:
    """Bins, parents and caps from a sample of rows (n, D) in original units.

    ``parents`` / ``caps``: 'auto' (detected, see the module constants), None (none), or a
    mapping {amount or count name: parent count name} / {capped count name: capping count
    name}. Caps are detected first (skipping counts given a zero parent explicitly), then
    zero parents (skipping capped counts); a count given both explicitly is refused.
    """
    sample = np.asarray(sample, dtype=np.float64)
    if sample.ndim != 2 or sample.shape[1] != len(kinds) or len(names) != len(kinds):
        raise ValueError(f"sample of shape {sample.shape} does not match {len(kinds)} kinds and names")
    edges = tuple(count_edges(sample[:, j]) if k == "count" else () for j, k in enumerate(kinds))
    explicit = _links(parents, [], names, "parents") if parents != "auto" else [-1] * len(kinds)
    cap = _links(caps, _auto_caps(sample, kinds, explicit) if caps == "auto" else [], names, "caps")
    par = _links(parents, _auto_parents(sample, kinds, cap) if parents == "auto" else [], names, "parents")
    return Structure(tuple(kinds), tuple(names), edges, tuple(par), tuple(cap))


def _problem(x: NDArray[np.float64], kind: str) -> tuple[NDArray[np.bool_], str]:
    """Mask of invalid values of one feature and what a valid value is."""
    finite = np.isfinite(x)
    if kind == "count":
        ok = finite & (x >= 0) & (np.floor(x) == x)
        return ~ok, "counts must be whole numbers ≥ 0"
    if kind == "amount":
        return ~(finite & (x >= 0)), "amounts must be finite and ≥ 0"
    if kind == "binary":
        return ~((x == 0) | (x == 1)), "binary features must be 0 or 1"
    return ~finite, "continuous features must be finite"


def check_values(X_block: NDArray[np.float64], structure: Structure, *, row_offset: int = 0) -> str | None:
    """The first invalid value of a block as a message naming the feature and row, or None.

    Rows are numbered from ``row_offset`` (the block's first global row).
    """
    return invalid_message(X_block, structure.kinds, structure.names, row_offset=row_offset)


def invalid_rows(X: NDArray[np.float64], kinds: Sequence[str]) -> NDArray[np.bool_]:
    """(n,) mask of the rows holding a value invalid for its feature's kind."""
    bad = np.zeros(X.shape[0], dtype=bool)
    for j, kind in enumerate(kinds):
        bad |= _problem(X[:, j], kind)[0]
    return bad


def invalid_message(
    X_block: NDArray[np.float64], kinds: Sequence[str], names: Sequence[str], *, row_offset: int = 0
) -> str | None:
    """:func:`check_values` given the kinds and names only (before a structure exists)."""
    X = np.asarray(X_block, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(kinds):
        return f"expected {len(kinds)} features ({', '.join(names)}), got shape {X.shape}"
    first: tuple[int, int, str] | None = None
    for j, kind in enumerate(kinds):
        bad, rule = _problem(X[:, j], kind)
        idx = np.flatnonzero(bad)
        if idx.size and (first is None or idx[0] < first[0]):
            first = (int(idx[0]), j, rule)
    if first is None:
        return None
    i, j, rule = first
    v = X[i, j]
    what = "a non-integer" if kinds[j] == "count" and np.isfinite(v) and v >= 0 else "an invalid"
    return (
        f"feature {names[j]!r} ({_ARTICLE[kinds[j]]}) has {what} value {v:g} at row {row_offset + i}: {rule}"
    )


@dataclass(frozen=True)
class Layout:
    """The structure as flat index arrays (see :mod:`._kernel` for how they are read).

    The *table* stacks, per component column, every categorical cell: each count's bins, each
    binary's two cells, each amount's four zero cells (2·parent zero + child zero), then each
    zero-parented count's three link cells (parent > 0: log 1; parent = 0 and x = 0; parent = 0
    and x > 0). Gaussian *terms* are the amounts (log x on log parent) and continuous features
    (x, no parent).
    """

    counts: NDArray[np.int64]  # (C,) feature index of each count
    count_off: NDArray[np.int64]  # (C,) first table row of its bins
    count_nbins: NDArray[np.int64]  # (C,)
    count_open: NDArray[np.int64]  # (C,) lower edge of the open bin
    count_cap: NDArray[np.int64]  # (C,) feature index of its cap, −1
    count_cens_off: NDArray[np.int64]  # (C,) first censoring-table row (values 0 … open − 1), −1
    count_zpar: NDArray[np.int64]  # (C,) feature index of its zero parent, −1
    count_zoff: NDArray[np.int64]  # (C,) table row of its three zero-link cells, −1
    bin_of: NDArray[np.int64]  # concatenated per count: local bin of each integer below the open bin
    bin_of_off: NDArray[np.int64]  # (C,)
    log_width: NDArray[np.float64]  # (T,) log of each table cell's width (0 except closed bins)
    binaries: NDArray[np.int64]  # (NB,)
    binary_off: NDArray[np.int64]
    terms: NDArray[np.int64]  # (G,) feature index of each Gaussian term (amounts, then continuous)
    term_parent: NDArray[np.int64]  # (G,) parent feature, −1
    term_zero_off: NDArray[np.int64]  # (G,) table row of its zero cells, −1 for continuous
    n_table: int
    n_cens: int


@functools.lru_cache(maxsize=64)
def layout_of(structure: Structure) -> Layout:
    """The :class:`Layout` of a structure (cached)."""
    kinds = structure.kinds
    counts = [j for j, k in enumerate(kinds) if k == "count"]
    amounts = [j for j, k in enumerate(kinds) if k == "amount"]
    binaries = [j for j, k in enumerate(kinds) if k == "binary"]
    terms = amounts + [j for j, k in enumerate(kinds) if k == "continuous"]
    off, cens = 0, 0
    widths: list[float] = []
    bin_of: list[int] = []
    bin_of_off: list[int] = []
    count_off: list[int] = []
    cens_off: list[int] = []
    for j in counts:
        e = np.asarray(structure.edges[j], dtype=np.int64)
        count_off.append(off)
        widths.extend([*np.log(np.diff(e)).tolist(), 0.0])
        off += len(e)
        bin_of_off.append(len(bin_of))
        bin_of.extend((np.searchsorted(e, np.arange(e[-1]), side="right") - 1).tolist())
        cens_off.append(cens if structure.cap[j] >= 0 else -1)
        cens += int(e[-1]) if structure.cap[j] >= 0 else 0
    binary_off = [off + 2 * i for i in range(len(binaries))]
    zpar = [structure.parent[j] for j in counts]
    linked = np.cumsum([p >= 0 for p in zpar]) - 1
    widths.extend([0.0] * (2 * len(binaries) + 4 * len(amounts) + 3 * int(linked[-1] + 1 if counts else 0)))
    zero_off = [off + 2 * len(binaries) + 4 * i for i in range(len(amounts))]
    link_off = off + 2 * len(binaries) + 4 * len(amounts)
    zoff = [link_off + 3 * int(z) if p >= 0 else -1 for p, z in zip(zpar, linked, strict=True)]
    i64 = functools.partial(np.asarray, dtype=np.int64)
    return Layout(
        counts=i64(counts),
        count_off=i64(count_off),
        count_nbins=i64([len(structure.edges[j]) for j in counts]),
        count_open=i64([structure.edges[j][-1] for j in counts]),
        count_cap=i64([structure.cap[j] for j in counts]),
        count_cens_off=i64(cens_off),
        count_zpar=i64(zpar),
        count_zoff=i64(zoff),
        bin_of=i64(bin_of),
        bin_of_off=i64(bin_of_off),
        log_width=np.asarray(widths, dtype=np.float64),
        binaries=i64(binaries),
        binary_off=i64(binary_off),
        terms=i64(terms),
        term_parent=i64([structure.parent[j] for j in terms]),
        term_zero_off=i64(zero_off + [-1] * (len(terms) - len(amounts))),
        n_table=len(widths),
        n_cens=cens,
    )
