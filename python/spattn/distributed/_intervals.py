"""Half-open integer intervals [lo, hi) as sorted, disjoint lists: the sets of positions the
sharding plan reasons about (keys a query range may need, queries a key range may reach)."""
from __future__ import annotations

Intervals = list  # of (lo, hi) tuples, lo < hi, ascending, disjoint, not touching


def normalize(ivs) -> Intervals:
    """Sorts, drops empty intervals and merges overlapping or touching ones."""
    out: Intervals = []
    for lo, hi in sorted((int(a), int(b)) for a, b in ivs if b > a):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def union(*lists) -> Intervals:
    return normalize([iv for lst in lists for iv in lst])


def intersect(a: Intervals, b: Intervals) -> Intervals:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def clip(a: Intervals, lo: int, hi: int) -> Intervals:
    return intersect(a, [(lo, hi)]) if lo < hi else []


def hull(a: Intervals):
    """The smallest single interval holding all of a, or None when a is empty."""
    return (a[0][0], a[-1][1]) if a else None


def close_gaps(a: Intervals, gap: int) -> Intervals:
    """Merges neighbours separated by at most `gap` positions: fewer, slightly larger pieces
    (each piece becomes one message part and one attention call)."""
    out: Intervals = []
    for lo, hi in a:
        if out and lo - out[-1][1] <= gap:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def size(a: Intervals) -> int:
    return sum(hi - lo for lo, hi in a)
