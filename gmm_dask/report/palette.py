"""The report's colours: one per segment (K ≤ 20 never share one), ink, and the entropy bands'."""

from __future__ import annotations

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
# Segments 11-20: Tableau 20's paired shades, so K ≤ 20 segments never share a colour.
_PALETTE_MORE = (
    "#a0cbe8",
    "#ffbe7d",
    "#8cd17d",
    "#b6992d",
    "#f1ce63",
    "#499894",
    "#86bcb6",
    "#d37295",
    "#fabfd2",
    "#d4a6c8",
)
GONE = "#9a9a9a"  # a segment of the previous snapshot only
INK = "#222222"
MUTED = "#666666"
BAND_COLORS = {"low": "#4e79a7", "moderate": "#f28e2b", "high": "#e15759"}


def segment_color(i: int) -> str:
    """Colour of the i-th segment (position in the segments table)."""
    allc = PALETTE + _PALETTE_MORE
    return allc[i % len(allc)]
