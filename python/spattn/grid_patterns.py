"""Patterns over grids (images, video) and LongNet's dilated segments (issue 15).

The meaning lives in C++ (cpp/include/spattn/grid_rules.hpp); these classes check types,
spread per-dim arguments and build the C++ pattern. The semantics in full: docs/patterns.md.
"""
from __future__ import annotations

import math

import numpy as np

from . import _core
from .patterns import BlockSparse, Causal, Pattern, Union, _flag, _index

__all__ = ["Neighborhood", "SlidingTile", "LongNet", "vision_language"]


def _ints(value, what: str) -> tuple:
    """A tuple of ints from an int or a sequence of ints (TypeError otherwise)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_index(x, what) for x in value)
    return (_index(value, what),)


def _per_dim(value, ndim: int, what: str, kind=_index) -> tuple:
    """One value per dim: a scalar is used for every dim; a sequence must have ndim entries."""
    if isinstance(value, (list, tuple, np.ndarray)):
        out = tuple(kind(x, what) for x in value)
        if len(out) != ndim:
            raise ValueError(f"{what}: expected one value or {ndim} (one per grid dim), got {len(out)}")
        return out
    return (kind(value, what),) * ndim


class Neighborhood(Pattern):
    """NATTEN's neighbourhood attention over tokens laid out row-major on a grid of 1 to 3 dims
    (the last dim fastest), starting at token `start` of the sequence (key positions; queries
    at p = i + Nk - Nq). Per dim, with extent n, window w and dilation d:

    - a query's group is the positions with its residue mod d;
    - it sees the w positions of its group around it: w // 2 before and w - 1 - w // 2 after
      (an even window leans back), shifted at the borders so that it keeps its full size;
    - causal (per dim): the w most recent positions of its group, itself included.

    A key is kept when it is a neighbour in every dim. window, dilation and causal are one
    value for every dim or one per dim; window * dilation <= extent in every dim. Tokens outside
    start .. start + prod(grid) - 1 neither see nor are seen by this pattern (combine it with
    others: see `vision_language`).
    """

    def __init__(self, grid, window, dilation=1, causal=False, start: int = 0):
        self.grid = _ints(grid, "Neighborhood: grid")
        nd = len(self.grid)
        self.window = _per_dim(window, nd, "Neighborhood: window")
        self.dilation = _per_dim(dilation, nd, "Neighborhood: dilation")
        self.causal = _per_dim(causal, nd, "Neighborhood: causal", _flag)
        self.start = _index(start, "Neighborhood: start")
        self._check()

    def _build(self):
        return _core.Pattern.neighborhood(list(self.grid), list(self.window), list(self.dilation),
                                          list(self.causal), self.start)


class SlidingTile(Pattern):
    """Sliding tile attention (video DiTs): the grid (2 or 3 dims) is cut into tiles of shape
    `tile`, and tokens are numbered tile-major: tiles row-major over the tile grid, tokens
    row-major inside a tile, so one tile is prod(tile) consecutive tokens (permute a row-major
    sequence into this order before the call). Every token of a query tile sees every token of
    the key tiles in its window of `window_tiles` tiles per dim: NATTEN's rule over the tile
    grid (centred, shifted at the borders to keep its size). With prod(tile) equal to the
    block size, every block is full or empty. grid % tile == 0 and window_tiles <= grid / tile
    in every dim; `start` as in Neighborhood.
    """

    def __init__(self, grid, tile, window_tiles, start: int = 0):
        self.grid = _ints(grid, "SlidingTile: grid")
        nd = len(self.grid)
        self.tile = _per_dim(tile, nd, "SlidingTile: tile")
        self.window_tiles = _per_dim(window_tiles, nd, "SlidingTile: window_tiles")
        self.start = _index(start, "SlidingTile: start")
        self._check()

    def _build(self):
        return _core.Pattern.sliding_tile(list(self.grid), list(self.tile), list(self.window_tiles),
                                          self.start)

    def tile_order(self) -> np.ndarray:
        """perm [prod(grid)]: token t of the tile-major order is token perm[t] of the row-major
        grid (x_tiled = x[:, perm]; x = x_tiled[:, argsort(perm)])."""
        tg = [g // t for g, t in zip(self.grid, self.tile)]
        idx = np.arange(math.prod(self.grid)).reshape(self.grid)
        shape, axes = [], []
        for d, (n, t) in enumerate(zip(tg, self.tile)):
            shape += [n, t]
        idx = idx.reshape(shape)
        nd = len(self.grid)
        axes = [2 * d for d in range(nd)] + [2 * d + 1 for d in range(nd)]
        return idx.transpose(axes).reshape(-1)


class LongNet(Pattern):
    """LongNet's dilated attention, for Nq = Nk: query i and key j of head h are kept when for
    some k, i // segments[k] == j // segments[k] and i % dilations[k] == j % dilations[k] ==
    h % dilations[k] (and j <= i if causal). Each segment size must be a multiple of its
    dilation. The heads' rules differ (h % r), so the layout is per head.
    """

    def __init__(self, segments, dilations, causal: bool = True):
        self.segments = _ints(segments, "LongNet: segments")
        self.dilations = _ints(dilations, "LongNet: dilations")
        self.causal = _flag(causal, "LongNet: causal")
        self._check()

    def _build(self):
        return _core.Pattern.longnet(list(self.segments), list(self.dilations), self.causal)


def vision_language(parts, window, dilation=1) -> Pattern:
    """The pattern of an interleaved text and image sequence (vision-language models):

    - text tokens are causal: they see every earlier token, text or image, and themselves;
    - the tokens of each image see their own image's 2D (or 3D) neighbourhood only
      (Neighborhood(shape, window, dilation), non-causal).

    `parts` lists the sequence in order: an int n for n text tokens, a tuple (h, w) (or
    (t, h, w)) for an image laid out row-major. Nq = Nk = the total length. Built from
    existing patterns: (Causal() & text rows) | Neighborhood(image, start=its offset) | ...,
    the text rows as a BlockSparse with one-row blocks spanning every key.

        p = spattn.vision_language([32, (16, 16), 8, (16, 16), 40], window=7)
        out = spattn.attention(q, k, v, p)     # q, k, v of 32 + 256 + 8 + 256 + 40 tokens
    """
    if isinstance(parts, (str, bytes)) or not hasattr(parts, "__iter__"):
        raise TypeError("vision_language: parts must be a list of ints (text) and tuples (images)")
    pos, text_rows, images = 0, [], []
    for part in parts:
        if isinstance(part, (tuple, list)):
            shape = _ints(part, "vision_language: image shape")
            images.append(Neighborhood(shape, window, dilation, start=pos))
            pos += math.prod(shape)
        else:
            n = _index(part, "vision_language: text length")
            if n < 0:
                raise ValueError(f"vision_language: text length must be >= 0, got {n}")
            text_rows.append((pos, pos + n))
            pos += n
    if pos == 0:
        raise ValueError("vision_language: the sequence is empty")
    pieces = list(images)
    if text_rows:
        rows = np.zeros((1, pos, 1), dtype=bool)
        for a, b in text_rows:
            rows[0, a:b, 0] = True
        pieces.insert(0, Causal() & BlockSparse(rows, (1, pos)))
    return pieces[0] if len(pieces) == 1 else Union(pieces)
