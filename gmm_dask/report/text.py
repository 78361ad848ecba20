"""Numbers as text for the report's pages and charts: a missing or undefined number shows as '–',
never 'nan'."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

DASH = "–"  # shown for a missing or undefined number (never 'nan')


def is_finite(v: Any) -> bool:
    """Whether ``v`` is a finite number (``None``, ``pd.NA``, NaN, ±inf and non-numbers are not)."""
    try:
        return v is not None and v is not pd.NA and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def fmt_int(v: Any) -> str:
    """12345.6 -> '12,346'."""
    return f"{round(float(v)):,}" if is_finite(v) else DASH


def fmt_pct(v: Any, digits: int = 1) -> str:
    """0.2471 -> '24.7%'; a share too small to show -> '<0.1%' (not '0.0%')."""
    if not is_finite(v):
        return DASH
    p, least = 100 * float(v), 10.0**-digits
    if 0 < p < least / 2:
        return f"<{least:.{digits}f}%"
    return f"{p:.{digits}f}%"


def fmt_count(v: Any) -> str:
    """A count in little room: 8,421 or 12.3k."""
    return fmt_int(v) if is_finite(v) and abs(float(v)) < 10_000 else fmt_compact(v)


def fmt_num(v: Any, fmt: str = ",.2f") -> str:
    """A number in ``format`` spec ``fmt``."""
    return format(float(v), fmt) if is_finite(v) else DASH


def fmt_signed_pct(v: float) -> str:
    """0.052 -> '+5.2%', -0.052 -> '−5.2%' (a true minus sign)."""
    return f"{100 * v:+.1f}%".replace("-", "−")


def fmt_compact(v: Any) -> str:
    """1234 -> '1.2k', 0.3512 -> '0.35', 12.34 -> '12.3', 0.0042 -> '0.0042', 3e-9 -> '≈0';
    a missing value -> '–'."""
    if not is_finite(v):
        return DASH
    v = float(v)
    a = abs(v)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            s = f"{v / scale:.1f}" if a < 100 * scale else f"{v / scale:.0f}"
            return s.removesuffix(".0") + suffix
    if a == 0:
        return "0"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.2g}" if a >= 1e-3 else "≈0"  # a mean at an atom of zeros is 1e-18, not news


def fmt_plain(v: Any) -> str:
    """A small value (number, list, dict) as one line of text, with no 'nan'."""
    if isinstance(v, float):
        return fmt_num(v, "g")
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt_plain(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(fmt_plain(x) for x in v)
    return str(v)


def fmt_gamma_pair(a: Any, b: Any) -> str:
    """Two mean memberships: '0.41 / 0.38'."""
    return f"{fmt_num(a, '.2f')} / {fmt_num(b, '.2f')}"
