"""Recipes: patterns for common model layouts, built from the pattern classes.

    p = spattn.vision_language([32, (16, 16), 8, (16, 16), 40], window=7)
"""
from __future__ import annotations

import math

import numpy as np

from .patterns import BlockSparse, Causal, Neighborhood, Pattern, Union, _index, _ints

__all__ = ["vision_language"]


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
