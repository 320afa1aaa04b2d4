"""spattn as an attention implementation of Hugging Face transformers.

    import spattn.integrations.transformers as st
    st.register()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="spattn")

`register()` adds "spattn" to transformers' attention interface (the attention itself) and to
its mask interface. The mask function builds no dense mask: it hands the attention a small
`SpattnMask` (causal or not, the sliding window, the padding, the offsets), from which the
attention picks a spattn pattern:

- causal: `Causal()`; a model's `sliding_window` W (Mistral, Gemma 2/3 local layers; kv > q - W,
  W keys with self): `SlidingWindow(W - 1, 0)`; bidirectional: `Dense()` (window W:
  `SlidingWindow(W, W)`); GQA: the kv heads as they are (no repeat);
- padding masks: the valid tokens of each row form a variable-length batch (`cu_seqlens`);
  padded query rows get 0. Each row's valid tokens must be one contiguous run (left or right
  padding); holes in the middle are refused;
- a KV cache: keys beyond the valid length (a static cache) are cut off by a view; with a few
  new queries (<= 16) on the CPU and no gradient, `spattn.decode` runs them (keys split over all
  threads);
- score modifiers: Gemma 2's attention logit softcapping (`softcap`, applied to the scaled
  scores, as spattn's `softcap=`) and GPT-OSS's learned sinks (`s_aux`, spattn's `sinks=`, with
  their gradient in training);
- refused with a ValueError naming the setting: attention dropout in training, masks
  transformers builds from custom mask functions (packed sequences, image-token overlays,
  chunked attention) and precomputed 4-D masks.
"""
import torch

import spattn

__all__ = ["register", "attention_forward", "mask_interface", "SpattnMask", "NAME"]

NAME = "spattn"
_DECODE_MAX_QUERIES = 16


class SpattnMask:
    """What the mask interface hands to the attention: no dense mask, only what picks the
    pattern and the valid tokens. `padding` is bool [B, kv_length] (True: a real token) or
    None when every token is real; `window` follows transformers' sliding_window (None: none)."""

    __slots__ = ("causal", "window", "padding", "q_length", "kv_length", "q_offset", "kv_offset")

    # Generation with a static (compileable) cache prepares masks before the forward pass and
    # hands them back in as attention_mask: a prepared mask is 4-D there, and made contiguous.
    ndim = 4

    def contiguous(self):
        return self

    def __init__(self, causal, window, padding, q_length, kv_length, q_offset, kv_offset):
        self.causal, self.window, self.padding = causal, window, padding
        self.q_length, self.kv_length, self.q_offset, self.kv_offset = q_length, kv_length, q_offset, kv_offset

    def __repr__(self):
        pad = "none" if self.padding is None else f"bool{list(self.padding.shape)}"
        return (f"SpattnMask(causal={self.causal}, window={self.window}, padding={pad}, q_length={self.q_length}, "
                f"kv_length={self.kv_length}, q_offset={self.q_offset}, kv_offset={self.kv_offset})")


def _closure(fn) -> dict:
    cells = getattr(fn, "__closure__", None) or ()
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in cells)))


def _kind(mask_function):
    """(causal, window) for the mask functions transformers builds for plain attention, else None."""
    from transformers import masking_utils as mu

    if mask_function is mu.causal_mask_function:
        return True, None
    if mask_function is mu.bidirectional_mask_function:
        return False, None
    if getattr(mask_function, "__qualname__", "") == "and_masks.<locals>.and_mask":
        parts = _closure(mask_function).get("mask_functions", ())
        names = {getattr(p, "__qualname__", "") for p in parts}
        for base, overlay, causal in (
            (mu.causal_mask_function, "sliding_window_overlay.<locals>.inner_mask", True),
            (mu.bidirectional_mask_function, "sliding_window_bidirectional_overlay.<locals>.inner_mask", False),
        ):
            if len(parts) == 2 and base in parts and overlay in names:
                inner = next(p for p in parts if p is not base)
                return causal, int(_closure(inner)["sliding_window"])
    return None


def mask_interface(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                   attention_mask=None, **kwargs):
    """transformers' mask interface for "spattn": a SpattnMask instead of a dense mask."""
    from transformers import masking_utils as mu

    if isinstance(attention_mask, SpattnMask):  # prepared by generate() for this very step
        return attention_mask
    kind = _kind(mask_function if mask_function is not None else mu.causal_mask_function)
    if kind is None:
        name = getattr(mask_function, "__qualname__", type(mask_function).__name__)
        raise ValueError(
            f"attn_implementation='spattn': the model asks for a custom mask ({name}: packed sequences, "
            "token-type overlays or chunked attention), which spattn cannot express yet; use "
            "attn_implementation='sdpa' or 'eager' for this model, or pass an attention_mask instead of packing"
        )
    padding = None
    if attention_mask is not None:
        pad = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        pad = pad[:, kv_offset : kv_offset + kv_length].to(torch.bool)
        if not bool(pad.all()):
            padding = pad
    return SpattnMask(kind[0], kind[1], padding, int(q_length), int(kv_length), q_offset, int(kv_offset))


_PATTERNS: dict = {}


def _pattern(causal: bool, window):
    key = (causal, window)
    p = _PATTERNS.get(key)
    if p is None:
        if window is None:
            p = spattn.Causal() if causal else spattn.Dense()
        else:
            p = spattn.SlidingWindow(window - 1, 0) if causal else spattn.SlidingWindow(window, window)
        _PATTERNS[key] = p
    return p


def _contiguous_runs(valid):
    """True when every row's True entries form one run (left or right padding)."""
    n = valid.shape[1]
    count = valid.sum(1)
    first = valid.int().argmax(1)
    last = n - 1 - valid.flip(1).int().argmax(1)
    return bool(((count == 0) | (last - first + 1 == count)).all())


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      sliding_window=None, softcap=None, **kwargs):
    """transformers' attention interface for "spattn": query [B, Hq, Nq, D], key/value
    [B, Hkv, Nk, D] (the cache's, new tokens included); returns ([B, Nq, Hq, Dv], None).
    softcap (Gemma 2) and s_aux (GPT-OSS's sinks, one logit per query head) become spattn's
    score modifiers."""
    mods = dict(softcap=softcap, sinks=kwargs.get("s_aux"))
    if dropout and getattr(module, "training", False):
        raise ValueError(
            f"attn_implementation='spattn': attention dropout ({dropout}) is not supported in training; "
            "set the config's attention_dropout to 0"
        )
    mask = attention_mask
    if mask is not None and not isinstance(mask, SpattnMask):
        raise ValueError(
            "attn_implementation='spattn': got a precomputed attention mask "
            f"({type(mask).__name__} {list(getattr(mask, 'shape', []))}); pass a 2-D padding mask (or none) "
            "so that the model builds spattn's own"
        )
    if mask is None:
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
        window, padding = sliding_window, None
    else:
        causal, window, padding = mask.causal, mask.window, mask.padding
    pattern = _pattern(causal, window)

    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, N, H, D] views
    nq = q.shape[1]
    if mask is not None:
        # A static cache holds more keys than are valid: keep the first q_offset + Nq - kv_offset
        # (the queries are the newest tokens: bottom-right alignment then holds).
        valid = int(mask.q_offset) + nq - mask.kv_offset
        if causal and valid < k.shape[1]:
            k, v = k[:, :valid], v[:, :valid]
            padding = None if padding is None else padding[:, :valid]
    if padding is not None:
        # Prefill (or training): the queries are the keys' own tokens, and a padded key is a padded
        # query. With a cache the new queries are real tokens (a static cache may list slots after
        # them that its padding mask marks empty).
        prefill = mask is not None and int(mask.q_offset) == 0 and nq == k.shape[1]
        return _padded(q, k, v, padding, pattern, scaling, prefill, mods), None
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, mods["sinks"]))
    if nq <= _DECODE_MAX_QUERIES and not wants_grad and q.device.type == "cpu" and causal:
        cache_len = torch.full((q.shape[0],), k.shape[1], dtype=torch.int32)
        return spattn.decode(q, k, v, cache_len, pattern=pattern, scale=scaling, **mods), None
    return spattn.attention(q, k, v, pattern=pattern, scale=scaling, **mods), None


def _padded(q, k, v, padding, pattern, scale, prefill, mods):
    """Padding as a variable-length batch: each row's real tokens are one sequence, the
    queries aligned with its newest keys."""
    b, nq, hq, _ = q.shape
    nk = k.shape[1]
    if padding.shape != (b, nk):
        raise ValueError(f"attention_mask: expected a padding mask [{b}, {nk}] for the keys, got {list(padding.shape)}")
    if not _contiguous_runs(padding):
        raise ValueError(
            "attention_mask: spattn needs each row's real tokens to be one contiguous run (left or right "
            "padding); this mask has padding between real tokens"
        )
    qvalid = padding[:, nk - nq :] if prefill else torch.ones((b, nq), dtype=torch.bool, device=padding.device)
    offsets = lambda m: torch.nn.functional.pad(m.sum(1).cumsum(0), (1, 0)).to(torch.int32)  # noqa: E731
    out = spattn.attention(q[qvalid], k[padding], v[padding], pattern=pattern, scale=scale,
                           cu_seqlens_q=offsets(qvalid), cu_seqlens_k=offsets(padding), **mods)
    full = out.new_zeros((b, nq, hq, out.shape[-1]))
    return full.index_put((qvalid,), out)


def register(name: str = NAME) -> None:
    """Register spattn with transformers as attn_implementation=`name` ("spattn"): in the
    attention interface and in the mask interface."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_interface)
