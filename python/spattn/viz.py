"""Pictures of patterns: the mask and its compiled block layout, side by side.

    import spattn.viz
    fig = spattn.viz.plot("sink(4) | window(255,0)", 4096)   # or a Pattern object
    fig.savefig("pattern.png")

matplotlib is an optional dependency (`pip install spattn[viz]`); it is imported only here, with
the non-interactive Agg backend unless a backend was already chosen.

Large problems are never materialised: up to `EXACT_LIMIT` mask elements the mask is computed
and mean-pooled to at most `MAX_PIXELS` per side (shade = fraction of pairs kept; any kept pair
stays visible); beyond that, the mask panel is drawn from the block layout at the resolution of
one pixel (full pixel blocks dark, partial ones light), at a cost proportional to the blocks
kept.
"""
from __future__ import annotations

import numpy as np

from . import patterns as _patterns
from .patterns import BlockSparse, Pattern

__all__ = ["plot", "neighborhood_cells", "neighborhood_text", "MissingMatplotlib", "EXACT_LIMIT", "MAX_PIXELS"]

EXACT_LIMIT = 4096 * 4096  # mask elements (heads x Nq x Nk) computed exactly
MAX_PIXELS = 1024          # per side of each picture

_FULL = np.array([0.12, 0.34, 0.62])     # blue
_PARTIAL = np.array([0.96, 0.56, 0.16])  # orange
_MASK = np.array([0.07, 0.16, 0.36])     # navy
_WHITE = np.ones(3)


class MissingMatplotlib(ImportError):
    pass


def _pyplot():
    try:
        import matplotlib

        if "matplotlib.pyplot" not in __import__("sys").modules:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as e:
        raise MissingMatplotlib("spattn show needs matplotlib: pip install spattn[viz]") from e
    return plt, Patch


def _pattern_heads(pattern: Pattern) -> int:
    try:
        return max(1, int(pattern._core().heads()))
    except Exception:
        return 1


def _one_head(pattern: Pattern, head: int, heads: int):
    """(a single-head pattern for `head`, True) where the pattern can be split, else (pattern, False)."""
    if heads == 1:
        return pattern, True
    per_head = getattr(_patterns, "PerHead", None)
    if per_head is not None and isinstance(pattern, per_head):
        parts = getattr(pattern, "parts", None)
        if isinstance(parts, (list, tuple)) and len(parts) == heads:
            return parts[head], True
    if isinstance(pattern, BlockSparse) and pattern.layout.shape[0] == heads:
        return BlockSparse(pattern.layout[head : head + 1], pattern.block_size), True
    return pattern, False


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b)."""
    return -(-a // b)


def _pool_mean(m: np.ndarray, fq: int, fk: int) -> np.ndarray:
    """Mean of fq x fk tiles (edge tiles averaged over the elements that exist)."""
    nq, nk = m.shape
    pq, pk = -(-nq // fq), -(-nk // fk)
    pad = np.zeros((pq * fq, pk * fk), dtype=np.float32)
    cnt = np.zeros_like(pad)
    pad[:nq, :nk] = m
    cnt[:nq, :nk] = 1
    s = pad.reshape(pq, fq, pk, fk).sum(axis=(1, 3))
    c = cnt.reshape(pq, fq, pk, fk).sum(axis=(1, 3))
    return s / np.maximum(c, 1)


def _layout_grid(layout, head: int, fq: int, fk: int):
    """Fractions of full and of partial blocks per pixel, pixels being fq x fk blocks."""
    nqb, nkb = layout.nqb, layout.nkb
    pq, pk = _cdiv(nqb, fq), _cdiv(nkb, fk)
    full = np.zeros(pq * pk, dtype=np.float64)
    part = np.zeros(pq * pk, dtype=np.float64)
    h = 0 if layout.heads == 1 else head
    base = h * nqb
    for ptr, idx, acc in ((layout.full_indptr, layout.full_indices, full),
                          (layout.partial_indptr, layout.partial_indices, part)):
        ptr = np.asarray(ptr[base : base + nqb + 1], dtype=np.int64)
        counts = np.diff(ptr)
        cols = np.asarray(idx[ptr[0] : ptr[-1]], dtype=np.int64)
        rows = np.repeat(np.arange(nqb, dtype=np.int64), counts)
        np.add.at(acc, (rows // fq) * pk + cols // fk, 1.0)
    # blocks per pixel (edge pixels hold fewer)
    rq = np.minimum(fq, nqb - np.arange(pq) * fq)
    rk = np.minimum(fk, nkb - np.arange(pk) * fk)
    area = (rq[:, None] * rk[None, :]).astype(np.float64)
    return full.reshape(pq, pk) / area, part.reshape(pq, pk) / area, int(full.sum()), int(part.sum())


def _rgb(*layers) -> np.ndarray:
    """White blended towards each (fraction, colour) layer."""
    first = layers[0][0]
    img = np.ones(first.shape + (3,), dtype=np.float64)
    for frac, colour in layers:
        f = np.clip(frac, 0.0, 1.0)[..., None]
        img = img * (1 - f) + colour * f
    return img


_LIGHT = 0.5  # the lightest shade of anything kept


def _visible(v: np.ndarray) -> np.ndarray:
    """Shade for a kept fraction: 0 stays white, any kept pair is at least clearly tinted."""
    return np.where(v > 0, _LIGHT + (1 - _LIGHT) * v, 0.0)


def _panel_pixels(fig, ax, nq: int, nk: int, aspect: str) -> int:
    """Pixels along the longer side of the picture in `ax` (at most MAX_PIXELS): pooling to it
    keeps one-pair-wide lines visible instead of leaving them to the resampler."""
    pos = ax.get_position()
    w = pos.width * fig.get_figwidth() * fig.dpi
    h = pos.height * fig.get_figheight() * fig.dpi
    if aspect == "equal":
        side = min(w / nk, h / nq) * max(nq, nk)
    else:
        side = max(w, h)
    return int(max(16, min(MAX_PIXELS, side)))


def _draw_grid(ax, nqb: int, nkb: int, bq: int, bk: int, nq: int, nk: int):
    if nqb <= 64 and nkb <= 64:
        for a in range(1, nqb):
            ax.axhline(a * bq, color="0.8", lw=0.4, zorder=2)
        for c in range(1, nkb):
            ax.axvline(c * bk, color="0.8", lw=0.4, zorder=2)


# ---- grid patterns: one query's neighbourhood drawn on the grid -------------------------------

_QUERY = np.array([0.85, 0.20, 0.15])  # red


def grid_of(pattern):
    """(grid shape, cell_of) for a grid pattern (Neighborhood, SlidingTile), else None.
    cell_of maps grid token t (0-based from the pattern's start) to its row-major cell index."""
    if isinstance(pattern, _patterns.Neighborhood):
        return pattern.grid, np.arange(int(np.prod(pattern.grid)))
    if isinstance(pattern, _patterns.SlidingTile):
        return pattern.grid, pattern.tile_order()
    return None


def _query_row(pattern, nq: int, nk: int, head: int, heads: int, i: int) -> np.ndarray:
    """Kept keys [Nk] of query row i (one row through the C++ rule: no quadratic mask)."""
    return np.asarray(pattern._core().mask_row(nq, nk, heads, head, i), dtype=bool)


def neighborhood_cells(pattern, n: int, nk: int | None = None, query: int | None = None,
                       head: int = 0, heads: int = 1):
    """(cells, query_cell): a grid pattern's kept keys of one query as a boolean array of the
    grid's shape (row-major cells), and the query's cell. `query` is the query's token (a key
    position; default: the token at the middle cell of the grid)."""
    found = grid_of(pattern)
    if found is None:
        raise ValueError(f"{pattern!r} is not a grid pattern (Neighborhood, SlidingTile)")
    grid, cell_of = found
    nq = int(n)
    nk = nq if nk is None else int(nk)
    size = int(np.prod(grid))
    start = pattern.start
    if query is None:
        middle = int(np.ravel_multi_index(tuple(g // 2 for g in grid), grid))
        query = start + int(np.flatnonzero(cell_of == middle)[0])
    if not start <= query < start + size:
        raise ValueError(f"query: expected a token of the grid, {start} <= query < {start + size}, got {query}")
    i = query - (nk - nq)
    if not 0 <= i < nq:
        raise ValueError(f"query: token {query} is not a query row of an Nq={nq}, Nk={nk} problem")
    row = _query_row(pattern, nq, nk, head, heads, i)[start:start + size]
    cells = np.zeros(size, dtype=bool)
    cells[cell_of] = row
    return cells.reshape(grid), int(cell_of[query - start])


def neighborhood_text(pattern, n: int, nk: int | None = None, query: int | None = None,
                      head: int = 0, heads: int = 1) -> str:
    """The query's neighbourhood on the grid as text: '#' kept, '.' not kept, 'Q' the query
    (kept or not); a 3D grid as one block of lines per frame."""
    cells, qcell = neighborhood_cells(pattern, n, nk, query, head, heads)
    flat = np.where(cells.reshape(-1), "#", ".").astype("<U1")
    flat[qcell] = "Q"
    g = flat.reshape(cells.shape)
    if g.ndim == 1:
        return "".join(g)
    if g.ndim == 2:
        return "\n".join("".join(r) for r in g)
    return "\n\n".join(f"frame {t}:\n" + "\n".join("".join(r) for r in g[t]) for t in range(g.shape[0]))


def _draw_neighborhood(ax, pattern, nq, nk, query, head, heads):
    cells, qcell = neighborhood_cells(pattern, nq, nk, query, head, heads)
    grid = cells.shape
    qc = np.unravel_index(qcell, grid)
    if cells.ndim == 1:
        cells = cells[None]
        qc = (0,) + tuple(qc)
    frames = None
    if cells.ndim == 3:  # frames side by side, those that hold kept keys or the query
        keep = [t for t in range(grid[0]) if cells[t].any() or t == qc[0]][:12]
        frames = keep
        h, w = grid[1], grid[2]
        img = np.ones((h, len(keep) * (w + 1) - 1, 3))
        for x, t in enumerate(keep):
            tile = _rgb((cells[t].astype(float), _MASK))
            if t == qc[0]:
                tile[qc[1], qc[2]] = _QUERY
            img[:, x * (w + 1):x * (w + 1) + w] = tile
        for x in range(1, len(keep)):
            img[:, x * (w + 1) - 1] = 0.8
    else:
        img = _rgb((cells.astype(float), _MASK))
        img[qc[-2], qc[-1]] = _QUERY
    ax.imshow(img, interpolation="nearest")
    token = pattern.start + int(np.flatnonzero(grid_of(pattern)[1] == qcell)[0])
    where = ", ".join(str(int(c)) for c in np.unravel_index(qcell, grid))
    note = f" (frames {frames[0]}..{frames[-1]} shown)" if frames and len(frames) > 1 else ""
    ax.set_title(f"query {token} at ({where}): {int(cells.sum())} keys kept{note}\n"
                 f"grid {'x'.join(map(str, grid))}, red: the query, navy: its keys", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot(pattern, n: int, nk: int | None = None, head: int = 0, block=64, ax=None,
         heads: int | None = None, title: str | None = None, dpi: int = 110, query: int | None = None):
    """Draw `pattern` (a Pattern, or pattern text for spattn.pattern_syntax.parse) for an
    n x nk problem: the mask of head `head` and its block layout with blocks of `block`
    (an int or (bq, bk)); full blocks blue, partial ones orange. Returns the figure.

    ax: None (a new figure with two panels, three for a grid pattern: the third draws the
    neighbourhood of the query token `query` on the grid, default the middle cell), a pair of
    Axes (mask, layout), or one Axes (the mask only). heads: the number of query heads (default: the pattern's own, 1 if shared).
    dpi: of a new figure; save it with the same dpi (the pictures are pooled to its pixels).
    """
    plt, Patch = _pyplot()
    text = None
    nq = int(n)
    nk = nq if nk is None else int(nk)
    if nq <= 0 or nk <= 0:
        raise ValueError(f"n, nk: expected positive sizes, got n={nq}, nk={nk}")
    if isinstance(pattern, str):
        from .pattern_syntax import parse

        text = pattern
        pattern = parse(pattern, n=nq, nk=nk)
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern: expected a spattn pattern or pattern text, got {type(pattern).__name__}")
    own = _pattern_heads(pattern)
    heads = own if heads is None else int(heads)
    if own > 1 and heads != own:
        raise ValueError(f"heads: the pattern has {own} heads, got heads={heads}")
    if not 0 <= head < heads:
        raise ValueError(f"head: expected 0 <= head < {heads}, got {head}")
    bq, bk = (block, block) if np.ndim(block) == 0 else tuple(block)
    bq, bk = int(bq), int(bk)
    if bq <= 0 or bk <= 0:
        raise ValueError(f"block: expected positive block sizes, got {block!r}")

    single, split = _one_head(pattern, head, heads)
    mheads = 1 if split else heads

    # ---- figure first: the pictures are pooled to the pixels the panels have ------------------
    on_grid = ax is None and grid_of(pattern) is not None
    if on_grid:
        fig, axes = plt.subplots(1, 3, figsize=(18, 6.9), dpi=dpi)
        fig.subplots_adjust(left=0.05, right=0.98, top=0.86, bottom=0.13, wspace=0.18)
    elif ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(12.5, 6.9), dpi=dpi)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.13, wspace=0.18)
    elif isinstance(ax, (list, tuple, np.ndarray)):
        axes = list(np.ravel(ax))
        fig = axes[0].figure
    else:
        axes = [ax]
        fig = ax.figure
    aspect = "equal" if max(nq, nk) <= 4 * min(nq, nk) else "auto"
    target = _panel_pixels(fig, axes[0], nq, nk, aspect)

    # ---- the mask panel -------------------------------------------------------------------
    fq, fk = _cdiv(nq, target), _cdiv(nk, target)
    if aspect == "equal":
        fq = fk = max(fq, fk)
    if mheads * nq * nk <= EXACT_LIMIT:
        m = single.mask(nq, nk, heads=mheads)[0 if split else head]
        kept = int(np.count_nonzero(m))
        density = kept / (nq * nk)
        pooled = _pool_mean(m, fq, fk) if (fq > 1 or fk > 1) else m.astype(np.float32)
        mask_img = _rgb((_visible(pooled), _MASK))
        mask_note = ("mask" if fq == fk == 1 else
                     f"mask, {fq}x{fk} pairs per pixel (darker: more of them kept)")
        del m
    else:
        px = single.block_layout(nq, nk, block=(fq, fk), heads=mheads)
        full, part, _, _ = _layout_grid(px, 0 if split else head, 1, 1)
        mask_img = _rgb((_LIGHT * part, _MASK), (full, _MASK))
        mask_note = f"mask, {fq}x{fk} pairs per pixel from the layout (dark: all kept, light: some)"
        density = px.density if split else None
        kept = None if density is None else int(round(density * nq * nk))
    mask_ext = (0, mask_img.shape[1] * fk, mask_img.shape[0] * fq, 0)

    # ---- the block layout panel -------------------------------------------------------------
    lay = single.block_layout(nq, nk, block=(bq, bk), heads=mheads)
    gq, gk = _cdiv(lay.nqb, _cdiv(target, 2)), _cdiv(lay.nkb, _cdiv(target, 2))
    if aspect == "equal" and bq == bk:
        gq = gk = max(gq, gk)
    full, part, nfull, npart = _layout_grid(lay, 0 if split else head, gq, gk)
    lay_img = _rgb((_visible(part), _PARTIAL), (_visible(full), _FULL))
    if density is None:  # all heads together (this pattern cannot be split per head)
        density = lay.density
        kept = int(round(density * heads * nq * nk))
        dens_note = " (all heads)"
    else:
        dens_note = ""

    a0 = axes[0]
    a0.imshow(mask_img, extent=mask_ext, interpolation="nearest", aspect=aspect)
    a0.set_xlim(0, nk)
    a0.set_ylim(nq, 0)
    a0.set_title(mask_note, fontsize=9)
    a0.set_xlabel("key j")
    a0.set_ylabel("query i")
    if len(axes) > 1:
        a1 = axes[1]
        a1.imshow(lay_img, extent=(0, lay_img.shape[1] * gk * bk, lay_img.shape[0] * gq * bq, 0),
                  interpolation="nearest", aspect=aspect)
        a1.set_xlim(0, nk)
        a1.set_ylim(nq, 0)
        _draw_grid(a1, lay.nqb, lay.nkb, bq, bk, nq, nk)
        total = lay.nqb * lay.nkb
        a1.set_title(f"block layout {bq}x{bk}: {nfull:,} full, {npart:,} partial of {total:,} blocks"
                     + ("" if gq == gk == 1 else f"\n({gq}x{gk} blocks per pixel, darker: more of them)"),
                     fontsize=9)
        a1.set_xlabel("key j")
        handles = [Patch(color=_FULL, label="full block"), Patch(color=_PARTIAL, label="partial block")]
        if ax is None:
            fig.legend(handles=handles, loc="lower right", bbox_to_anchor=(0.98, 0.01), ncol=2, fontsize=8,
                       frameon=False)
        else:
            a1.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    if on_grid:
        _draw_neighborhood(axes[2], pattern, nq, nk, query, head, heads)
    name = title or text or repr(pattern)
    size = f"N={nq}" if nk == nq else f"Nq={nq}, Nk={nk}"
    head_note = f", head {head}/{heads}" if heads > 1 else ""
    suptitle = (f"{name}\n{size}{head_note}  ·  density {density:.2%}{dens_note}  ·  "
                f"{kept:,} kept pairs{dens_note}")
    if ax is None:
        fig.suptitle(suptitle, fontsize=11, y=0.985)
    else:
        axes[0].set_title(suptitle + "\n" + mask_note, fontsize=9)
    return fig
