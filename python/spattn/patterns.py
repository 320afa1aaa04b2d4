"""Patterns: which keys each query sees (SPEC §2).

Each class is a thin description; the meaning lives in C++ (`spattn::Pattern`), so that
`mask()`, `block_layout()` and every backend share one definition.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from . import _core

__all__ = ["Pattern", "Dense", "Causal", "SlidingWindow", "BlockSparse", "BlockLayout"]


def _index(value, what: str, allow_none: bool = False):
    """An exact integer (numpy integers too), or None where allowed; TypeError otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected an integer{' or None' if allow_none else ''}, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{what}: expected an integer{' or None' if allow_none else ''}, "
            f"got {type(value).__name__}"
        ) from None


# Window bounds at or beyond this many keys mean "unbounded" (the C++ kUnbounded); clamping
# here keeps Python's unbounded ints inside int64.
_UNBOUNDED = 1 << 60


def _bound(x: int | None) -> int | None:
    if x is None or x >= _UNBOUNDED:
        return None
    return max(x, -_UNBOUNDED)


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{what}: expected an int or a pair (bq, bk), got {value!r}")
        return _index(value[0], what), _index(value[1], what)
    n = _index(value, what)
    return n, n


@dataclass(frozen=True)
class BlockLayout:
    """A compiled layout: per (head, query block) row r = h * nqb + a, the key blocks to visit,
    in CSR form, split into full blocks (every pair kept) and partial ones."""

    full_indptr: np.ndarray
    full_indices: np.ndarray
    partial_indptr: np.ndarray
    partial_indices: np.ndarray
    heads: int
    nqb: int
    nkb: int
    block: tuple[int, int]
    density: float

    def row(self, head: int, qblock: int) -> tuple[np.ndarray, np.ndarray]:
        """(full, partial) key blocks of one query block of one head."""
        r = (0 if self.heads == 1 else head) * self.nqb + qblock
        return (
            self.full_indices[self.full_indptr[r] : self.full_indptr[r + 1]],
            self.partial_indices[self.partial_indptr[r] : self.partial_indptr[r + 1]],
        )


class Pattern:
    """Base class. Subclasses build their C++ pattern in `_build()`."""

    _compiled: _core.Pattern | None = None

    def _build(self) -> _core.Pattern:  # pragma: no cover - abstract
        raise NotImplementedError

    def _core(self) -> _core.Pattern:
        if self._compiled is None:
            self._compiled = self._build()
        return self._compiled

    def mask(self, nq: int, nk: int, heads: int = 1) -> np.ndarray:
        """Dense boolean mask [heads, Nq, Nk]: the definition every backend is tested against."""
        return self._core().mask(_index(nq, "Nq"), _index(nk, "Nk"), _index(heads, "heads"))

    def block_layout(self, nq: int, nk: int, block=(64, 64), heads: int = 1) -> BlockLayout:
        """The compiled block layout for an Nq x Nk problem, in closed form for structured
        patterns (cost proportional to the blocks kept)."""
        nq, nk, heads = _index(nq, "Nq"), _index(nk, "Nk"), _index(heads, "heads")
        bq, bk = _pair(block, "block")
        raw = self._core().block_layout(nq, nk, bq, bk, heads)
        total = float(heads) * nq * nk
        density = self._core().kept_pairs(nq, nk, heads) / total if total else 0.0
        return BlockLayout(
            full_indptr=raw["full_indptr"],
            full_indices=raw["full_indices"],
            partial_indptr=raw["partial_indptr"],
            partial_indices=raw["partial_indices"],
            heads=raw["heads"],
            nqb=raw["nqb"],
            nkb=raw["nkb"],
            block=(bq, bk),
            density=density,
        )

    def __repr__(self) -> str:
        return self._core().describe()


class Dense(Pattern):
    """Every query sees every key."""

    def _build(self):
        return _core.Pattern.dense()


class Causal(Pattern):
    """rel >= 0: each query sees its own position and the past (bottom-right aligned)."""

    def _build(self):
        return _core.Pattern.causal()


class SlidingWindow(Pattern):
    """-right <= rel <= left, None meaning unbounded. SlidingWindow(W - 1, 0) is a causal window
    of W keys, self included (FlashAttention's window_size=(W-1, 0))."""

    def __init__(self, left: int | None, right: int | None = 0):
        self.left = _bound(_index(left, "SlidingWindow: left", allow_none=True))
        self.right = _bound(_index(right, "SlidingWindow: right", allow_none=True))
        self._core()  # check the arguments now, not at the first call

    def _build(self):
        return _core.Pattern.sliding_window(self.left, self.right)


class BlockSparse(Pattern):
    """layout[h, i // bq, j // bk] decides, indexed by query row i (no offset). `layout` is a
    boolean (or 0/1 integer) array [1 or Hq, ceil(Nq/bq), ceil(Nk/bk)]; a 2-D layout is shared
    by all heads."""

    def __init__(self, layout, block_size=(64, 64)):
        self.block_size = _pair(block_size, "BlockSparse: block_size")
        arr = _layout_array(layout)
        self.layout = arr
        self._core()

    def _build(self):
        return _core.Pattern.block_sparse(self.layout, *self.block_size)


def _layout_array(layout) -> np.ndarray:
    if isinstance(layout, (str, bytes)) or layout is None:
        raise TypeError(f"BlockSparse: layout must be a boolean array, got {type(layout).__name__}")
    try:
        arr = np.asarray(layout)
    except Exception as e:  # torch tensors on other devices, ragged lists, ...
        raise TypeError(f"BlockSparse: layout must be a boolean array, got {type(layout).__name__}") from e
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"BlockSparse: layout must hold booleans or 0/1 integers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"BlockSparse: layout must be [heads, query blocks, key blocks] (or 2-D), got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr != 0)
