"""Row bookkeeping for sums and merges over parts: rows that one part covers are written
straight into the result (in its dtype); only rows that several parts cover get a float32
accumulator, so a window's extra memory is its halo rows, not a float32 copy of everything."""
from __future__ import annotations

import numpy as np
import torch


def _runs(mask):
    m = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


class Coverage:
    """Which rows of [0, n) are covered by more than one of the registered ranges."""

    def __init__(self, n: int, ranges):
        cov = np.zeros(n + 1, dtype=np.int64)
        for r0, r1 in ranges:
            cov[r0] += 1
            cov[r1] -= 1
        depth = np.cumsum(cov[:-1])
        self.multi = _runs(depth >= 2)
        self.uncovered = _runs(depth == 0)

    def split(self, r0: int, r1: int):
        """[(a, b, run index or None)]: the pieces of [r0, r1), with the multi-covered run each
        lies in (None: covered once)."""
        out, pos = [], r0
        for i, (a, b) in enumerate(self.multi):
            if b <= pos or a >= r1:
                continue
            if a > pos:
                out.append((pos, a, None))
            out.append((max(a, pos), min(b, r1), i))
            pos = min(b, r1)
        if pos < r1:
            out.append((pos, r1, None))
        return out


class SumRows:
    """result[:, r0:r1] += part over parts, along dimension 1 of `result`."""

    def __init__(self, result: torch.Tensor, ranges):
        self.result = result
        self.cov = Coverage(result.shape[1], ranges)
        self.acc = [torch.zeros(result.shape[0], b - a, *result.shape[2:], dtype=torch.float32, device=result.device)
                    for a, b in self.cov.multi]

    def add(self, r0: int, part: torch.Tensor):
        for a, b, run in self.cov.split(r0, r0 + part.shape[1]):
            src = part[:, a - r0:b - r0]
            if run is None:
                self.result[:, a:b] = src
            else:
                self.acc[run][:, a - self.cov.multi[run][0]:b - self.cov.multi[run][0]] += src

    def finish(self) -> torch.Tensor:
        for (a, b), acc in zip(self.cov.multi, self.acc):
            self.result[:, a:b] = acc
        return self.result
