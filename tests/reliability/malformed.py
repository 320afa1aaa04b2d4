"""Malformed inputs at every boundary of spattn, generated from a seed.

Each case is one call with one bad (or odd) argument among good ones:
  dlpack      hand-made DLPack producers: wrong or reused capsule names, versions, devices,
              dtypes, ranks, sizes, strides (negative, zero, overlapping, huge), byte offsets,
              misaligned and null pointers, outputs overlapping inputs, producers that raise
              or return something else;
  syntax      pattern text: mutations of valid strings, random tokens, deep nesting, huge
              numbers, random unicode;
  cu_seqlens  offsets of every wrong kind (values, lengths, dtypes, ranks, strides);
  decode      cache_len and block_table values and shapes;
  values      NaN and Inf inside q, k, v (the documented rule is checked: RELIABILITY.md).

The rule: every call returns or raises ValueError, TypeError or RuntimeError (a
BufferError from a producer is re-raised as one of them); anything else is a failure, and so
is a crash or a hang (seen by the runner, run_malformed.py, which runs cases in a child
process). A call that is accepted is checked against the float64 reference where it computes
attention, so a bad input can not slip through as a silently wrong answer either.

The producer promise (DLPack: a tensor describes memory that exists) is kept: when a crafted
tensor's metadata is valid, its buffer covers every element it addresses.
"""
from __future__ import annotations

import ctypes
import math
import random

import numpy as np

import spattn

ALLOWED = (ValueError, TypeError, RuntimeError)


class Skip(Exception):
    """A drawn case that would break the producer's promise (memory that does not exist)."""

# --------------------------------------------------------------------------------------------
# DLPack structures (the ABI, version 1.1)


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


_CapsuleNew = ctypes.pythonapi.PyCapsule_New
_CapsuleNew.restype = ctypes.py_object
_CapsuleNew.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_NAMES = [b"dltensor_versioned", b"dltensor", b"used_dltensor_versioned", b"used_dltensor", b"tensor", b""]


class Producer:
    """A hand-made DLPack producer. Its capsules have no destructor; its deleter counts."""

    def __init__(self, buf, data, shape, strides, dtype, device, byte_offset, ndim, versioned=True,
                 name=None, major=1, read_only=False, reuse=False, returns=None, raises=None, dev_answer=None):
        self.buf = buf          # keeps the memory alive
        self.deletes = 0
        n = max(len(shape), 1, ndim if 0 < ndim < 64 else 1)
        self._shape = (ctypes.c_int64 * n)(*(list(shape) + [1] * (n - len(shape))))
        self._strides = None if strides is None else (ctypes.c_int64 * n)(*(list(strides) + [1] * (n - len(strides))))
        self._deleter = _DELETER(self._delete)
        t = DLTensor()
        t.data = data
        t.device = DLDevice(*device)
        t.ndim = ndim
        t.dtype = DLDataType(*dtype)
        t.shape = self._shape if shape is not None else None
        t.strides = self._strides
        t.byte_offset = byte_offset
        if versioned:
            self.managed = DLManagedTensorVersioned()
            self.managed.version = DLPackVersion(major, 1)
            self.managed.flags = 1 if read_only else 0
        else:
            self.managed = DLManagedTensor()
        self.managed.dl_tensor = t
        self.managed.deleter = self._deleter
        self.name = name if name is not None else (b"dltensor_versioned" if versioned else b"dltensor")
        self.reuse, self.returns, self.raises, self.dev_answer = reuse, returns, raises, dev_answer
        self.capsule = None

    def _delete(self, _ptr):
        self.deletes += 1

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if self.raises is not None:
            raise self.raises
        if self.returns is not None:
            return self.returns
        if self.capsule is not None and self.reuse:
            return self.capsule  # the same capsule again: consumed already
        self.capsule = _CapsuleNew(ctypes.addressof(self.managed), self.name, None)
        return self.capsule

    def __dlpack_device__(self):
        if self.dev_answer is not None:
            return self.dev_answer
        d = self.managed.dl_tensor.device
        return (d.device_type, d.device_id)


# --------------------------------------------------------------------------------------------
# helpers


def _edge_int(r: random.Random, lo: int, hi: int) -> int:
    c = r.randrange(8)
    if c == 0:
        return -1
    if c == 1:
        return 0
    if c == 2:
        return 2**63 - 1
    if c == 3:
        return -(2**63)
    if c == 4:
        return 2 ** r.randrange(63)
    if c == 5:
        return r.randrange(-(2**63), 2**63)
    return r.randint(lo, hi)


def _qkv(r: random.Random, b=None, nq=None, nk=None, hq=2, hkv=1, d=8, dv=8, dtype=np.float32):
    b = r.randint(1, 2) if b is None else b
    nq = r.randint(1, 12) if nq is None else nq
    nk = r.randint(1, 12) if nk is None else nk
    g = np.random.default_rng(r.randrange(2**32))
    return (g.standard_normal((b, nq, hq, d)).astype(dtype), g.standard_normal((b, nk, hkv, d)).astype(dtype),
            g.standard_normal((b, nk, hkv, dv)).astype(dtype))


def _reference(q, k, v, pattern, scale=None):
    """float64 out, lse from the pattern's mask (the documented softmax)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    m = pattern.mask(nq, nk, heads=hq)
    ke, ve = np.repeat(k, hq // hkv, axis=2), np.repeat(v, hq // hkv, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, ke) * (1 / math.sqrt(d) if scale is None else scale)
    s = np.where(m[None], s, -np.inf)
    mx = s.max(-1, keepdims=True, initial=-np.inf)
    p = np.where(m[None], np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0.0)
    l = p.sum(-1, keepdims=True)
    out = np.einsum("bhij,bjhd->bihd", p / np.where(l > 0, l, 1), ve)
    return out


def _close(got, want, what):
    got = np.asarray(got, np.float64)
    err = float(np.abs(got - want).max()) if got.size else 0.0
    if not err <= 1e-4 * max(1.0, float(np.abs(want).max()) if want.size else 1.0):
        raise AssertionError(f"{what}: accepted but wrong (max error {err:.3g})")


# --------------------------------------------------------------------------------------------
# dlpack: crafted producers in any role


def _crafted(r: random.Random, like: np.ndarray):
    """A producer for an array like `like`, with some fields changed. Returns (producer, honest
    values or None): the values it holds when its metadata is valid and unchanged in meaning."""
    shape = list(like.shape)
    es = like.dtype.itemsize
    strides = [s // es for s in like.strides]
    dtype = {np.dtype(np.float32): (2, 32, 1), np.dtype(np.float16): (2, 16, 1),
             np.dtype(np.int32): (0, 32, 1), np.dtype(np.int64): (0, 64, 1)}[like.dtype]
    device, ndim, byte_offset = (1, 0), len(shape), 0
    kw = {}
    null_shape = null_data = null_strides = False
    misalign = 0
    honest = True
    for _ in range(r.randint(1, 3)):
        c = r.randrange(17)
        if c == 0:
            shape[r.randrange(len(shape))] = _edge_int(r, -2, 40)
            honest = False
        elif c == 1:
            strides[r.randrange(len(strides))] = _edge_int(r, -40, 40)
            honest = False
        elif c == 2:
            null_strides = True
        elif c == 3:
            ndim = r.randint(-2, 12)
            honest = honest and ndim == len(shape)
        elif c == 4:
            null_shape = True
            honest = False
        elif c == 5:
            dtype = (r.randrange(256), r.choice([0, 1, 8, 16, 32, 64, 128, 255]), r.choice([0, 1, 2, 4, 65535]))
            honest = False
        elif c == 6:
            device = (r.choice([0, 2, 3, 4, 7, 8, 9, 10, 13, 14, 15, 16, 17, 99, -1]), r.randint(-1, 3))
            honest = False
        elif c == 7:
            byte_offset = r.choice([1, 2, 3, es, 2**40, 2**63])
            honest = False
        elif c == 8:
            null_data = True
            honest = False
        elif c == 9:
            misalign = r.randint(1, es - 1) if es > 1 else 0
            honest = honest and misalign == 0
        elif c == 10:  # a name the consumer must refuse unread (a valid name on the wrong struct
            # would be a lie no consumer can detect: not drawn)
            kw["name"] = r.choice(_NAMES[2:])
            honest = False
        elif c == 11:
            kw["major"] = r.choice([0, 2, 3, 2**31])
            honest = False
        elif c == 12:
            kw["versioned"] = False
            if kw.get("name") is None:
                kw["name"] = b"dltensor"
        elif c == 13:
            kw["reuse"] = True
        elif c == 14:
            kw["returns"] = r.choice([None, 3, "capsule", b"x", object()]) or ()
            honest = False
        elif c == 15:
            kw["raises"] = r.choice([BufferError("no"), TypeError("no"), ValueError("no"), RuntimeError("no")])
            honest = False
        else:
            kw["dev_answer"] = r.choice([(), (1,), (1, 0, 0), ("cpu", 0), None, 3, (2**40, 0)]) or "x"
            honest = False
    if kw.get("versioned") is False and kw.get("name") is None:
        kw["name"] = b"dltensor"
    # Memory: a buffer covering every element the (possibly changed) metadata addresses, with
    # room for elements of up to 8 bytes (a changed dtype that spattn might accept). When the
    # metadata is valid but addresses more than a sane buffer, the case is skipped: a producer
    # must describe memory that exists, and no consumer can check that.
    if null_strides and not like.flags.c_contiguous:
        honest = False
    meta_valid = (not null_shape and not null_data and 0 <= ndim <= 8 and ndim == len(shape)
                  and all(n >= 0 for n in shape))
    numel = math.prod(shape) if meta_valid else 0
    buf = np.ascontiguousarray(like).copy()
    data_offset = 0
    if meta_valid and numel > 0:
        if numel >= 2**62:
            meta_valid = False  # refused: the element count overflows
        st = list(strides) if not null_strides else None
        if st is None:
            st, acc = [], 1
            for n in reversed(shape):
                st.insert(0, acc)
                acc *= max(n, 1)
        lo = sum(s_ * (n - 1) for s_, n in zip(st, shape) if s_ < 0)
        hi = sum(s_ * (n - 1) for s_, n in zip(st, shape) if s_ > 0)
        span = hi - lo + 1
        if meta_valid and (span > 2**20 or byte_offset >= 2**20):
            raise Skip("valid metadata addressing more memory than the harness gives")
        if meta_valid:
            raw = np.zeros(span * 8 + byte_offset + 128, np.uint8)
            if honest:
                idx = np.indices(shape).reshape(len(shape), -1)
                flat = -lo + (np.asarray(st, dtype=np.int64)[:, None] * idx).sum(0)
                raw[64:64 + span * es].view(like.dtype)[flat] = np.asarray(like).reshape(-1)
            buf = raw
            data_offset = 64 + (-lo) * es - byte_offset
            if data_offset < 0:
                raise Skip("byte_offset beyond the harness's buffer")
    data = None if null_data else buf.ctypes.data + data_offset + misalign
    strides_out = None if null_strides else strides
    p = Producer(buf, data, None if null_shape else shape, strides_out, dtype, device, byte_offset, ndim, **kw)
    if null_shape:
        p.managed.dl_tensor.shape = None
    return p, (np.asarray(like) if honest else None)


def case_dlpack(r: random.Random):
    q, k, v = _qkv(r)
    entry = r.choice(["forward", "forward_out", "backward", "decode", "merge", "varlen"])
    pattern = r.choice([spattn.Dense(), spattn.Causal(), spattn.SlidingWindow(3, 1), spattn.Sink(2) | spattn.Causal()])
    if entry in ("forward", "forward_out"):
        out = np.zeros(q.shape[:3] + (v.shape[3],), np.float32)
        args = {"q": q, "k": k, "v": v, "out": out}
        role = r.choice(["q", "k", "v", "out"] if entry == "forward_out" else ["q", "k", "v"])
        prod, honest = _crafted(r, args[role])
        args[role] = prod
        use_out = entry == "forward_out"
        if use_out and r.random() < 0.3 and role != "out":  # an output overlapping an input
            args["out"] = r.choice([args["q"], args["k"], args["v"]]) if not isinstance(args["q"], Producer) else out
        res = spattn.attention(args["q"], args["k"], args["v"], pattern=pattern, out=args["out"] if use_out else None)
        if honest is not None:
            _close(res, _reference(q, k, v, pattern), f"forward with a crafted {role}")
        return
    if entry == "backward":
        o, l = spattn.attention(q, k, v, pattern=pattern, return_lse=True)
        do = np.ones_like(o)
        args = {"dout": do, "q": q, "k": k, "v": v, "out": o, "lse": l}
        role = r.choice(list(args))
        args[role], _ = _crafted(r, args[role])
        spattn.attention_backward(args["dout"], args["q"], args["k"], args["v"], args["out"], args["lse"], pattern=pattern)
        return
    if entry == "decode":
        lens = np.array([r.randint(0, k.shape[1]) for _ in range(q.shape[0])], np.int32)
        args = {"q": q[:, :4], "k": k, "v": v, "cache_len": lens}
        role = r.choice(list(args))
        args[role], _ = _crafted(r, args[role])
        spattn.decode(args["q"], args["k"], args["v"], args["cache_len"], pattern=pattern)
        return
    if entry == "merge":
        o, l = spattn.attention(q, k, v, return_lse=True)
        o2, l2 = o.copy(), l.copy()
        parts = [o, o2, l, l2]
        i = r.randrange(4)
        parts[i], _ = _crafted(r, parts[i])
        spattn.merge(parts[:2], parts[2:])
        return
    qv, kv, vv = q.reshape(-1, *q.shape[2:]), k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:])
    cq = np.array([0, qv.shape[0]], np.int32)
    ck = np.array([0, kv.shape[0]], np.int32)
    args = {"q": qv, "k": kv, "v": vv, "cu_seqlens_q": cq, "cu_seqlens_k": ck}
    role = r.choice(list(args))
    args[role], _ = _crafted(r, args[role])
    spattn.attention(args["q"], args["k"], args["v"], pattern=pattern, cu_seqlens_q=args["cu_seqlens_q"],
                     cu_seqlens_k=args["cu_seqlens_k"])


# --------------------------------------------------------------------------------------------
# pattern text

_VALID = ["dense", "causal", "window(511,0)", "window(None,4)", "window(7)", "dilated(64,0,4)", "strided(128)",
          "strided(128,causal=false)", "fixed(128,8)", "global(0,1,2)", "sink(4)", "bigbird(64,3,2,3,seed=1)",
          "blocksparse(random=0.1,block=16,seed=0,heads=2,causal=false)", "sink(4) | window(255,0)",
          "causal & (strided(64) | window(63,0))", "perhead(causal; window(127,0))"]
_TOKENS = ["(", ")", ",", ";", "|", "&", "=", "none", "true", "false", "-", "1e999", "nan", "inf", "0x10",
           "99999999999999999999999", "-7", "0", "1.5", "perhead(", "window(", "blocksparse(", "random=",
           "block=", "seed=", "heads=", "causal=", "\x00", "é", "🙂", "  ", "\n", "__import__", "'", '"']


def _text(r: random.Random) -> str:
    c = r.randrange(6)
    if c == 0:  # random tokens
        return "".join(r.choice(_TOKENS + _VALID) for _ in range(r.randint(0, 12)))
    if c == 1:  # random characters
        return "".join(chr(r.choice([r.randrange(32, 127), r.randrange(0, 0x2FFFF)])) for _ in range(r.randint(0, 30)))
    if c == 2:  # deep nesting
        depth = r.choice([10, 100, 1000, 5000, 50000])
        inner = r.choice(_VALID)
        if r.random() < 0.5:
            return "(" * depth + inner + ")" * depth
        return "perhead(" * depth + inner + ")" * depth
    if c == 3:  # a long union
        return " | ".join(r.choice(_VALID) for _ in range(r.choice([2, 50, 2000])))
    s = list(r.choice(_VALID))  # mutations of a valid string
    for _ in range(r.randint(1, 4)):
        op = r.randrange(3)
        pos = r.randrange(len(s) + 1)
        if op == 0 and s:
            del s[min(pos, len(s) - 1)]
        elif op == 1:
            s.insert(pos, r.choice(_TOKENS))
        elif s:
            s[min(pos, len(s) - 1)] = r.choice(_TOKENS)
    return "".join(s)


def case_syntax(r: random.Random):
    from spattn.pattern_syntax import parse

    text = _text(r)
    n = r.choice([None, 0, 1, 37, 256])
    p = parse(text, n=n, nk=r.choice([None, n, 17]) if n is not None else None)
    if p is not None and n:
        nq = n
        heads = 2
        try:
            m = p.mask(nq, nq, heads=heads)
        except ALLOWED:
            return
        assert m.shape == (heads, nq, nq)


# --------------------------------------------------------------------------------------------
# cu_seqlens, cache_len, block_table


def _int_values(r: random.Random, n: int, lo: int, hi: int):
    c = r.randrange(7)
    if c == 0:
        return [r.randint(lo, hi) for _ in range(n)]
    if c == 1:
        return sorted(r.randint(lo, hi) for _ in range(n))
    if c == 2:
        return [_edge_int(r, lo, hi) for _ in range(n)]
    if c == 3:
        return [r.randint(-5, 5) for _ in range(n)]
    if c == 4:
        return [2**31 - 1 - r.randrange(3) for _ in range(n)]
    if c == 5:
        return [-(2**31) + r.randrange(3) for _ in range(n)]
    return [r.randint(lo, hi) for _ in range(max(0, n + r.randint(-2, 2)))]


def _as_int_array(r: random.Random, vals, shape=None):
    kind = r.randrange(7)
    a = np.array(vals, dtype=np.int64) if vals else np.zeros(0, np.int64)
    if shape is not None and a.size == math.prod(shape):
        a = a.reshape(shape)
    if kind == 0:
        if a.size and (a.max() >= 2**31 or a.min() < -(2**31)):
            return a
        return a.astype(np.int32)
    if kind == 1:
        return a
    if kind == 2:
        return list(a.reshape(-1).tolist())
    if kind == 3:
        return a.astype(r.choice([np.float32, np.uint8, np.int16, np.bool_]))
    if kind == 4:  # strided
        big = np.repeat(a.astype(np.int32).reshape(-1), 2)
        return big[::2].reshape(a.shape)
    if kind == 5:  # an extra dimension
        return a.astype(np.int32)[None]
    import torch

    return torch.from_numpy(np.ascontiguousarray(a.astype(np.int32)))


def case_cu_seqlens(r: random.Random):
    hq, hkv = 2, 1
    lens = [r.randint(0, 6) for _ in range(r.randint(0, 3))]
    tq = sum(lens)
    tk = sum(r.randint(0, 6) for _ in lens)
    g = np.random.default_rng(r.randrange(2**32))
    q = g.standard_normal((tq, hq, 8)).astype(np.float32)
    k = g.standard_normal((tk, hkv, 8)).astype(np.float32)
    v = g.standard_normal((tk, hkv, 8)).astype(np.float32)
    good_q = [0] + list(np.cumsum(lens))
    which = r.randrange(3)
    cq = _as_int_array(r, _int_values(r, len(good_q), 0, tq)) if which != 1 else np.array(good_q, np.int32)
    ck = _as_int_array(r, _int_values(r, len(good_q), 0, tk)) if which != 0 else np.array([0] * len(good_q[:-1]) + [tk], np.int32)
    backward = r.random() < 0.3
    out, lse = spattn.attention(q, k, v, pattern=spattn.Causal(), cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    # Accepted: the offsets must have been valid; check against the per-sequence reference.
    oq = np.asarray(cq.tolist() if hasattr(cq, "tolist") else cq, np.int64).reshape(-1)
    ok_ = np.asarray(ck.tolist() if hasattr(ck, "tolist") else ck, np.int64).reshape(-1)
    assert oq[0] == 0 and oq[-1] == tq and (np.diff(oq) >= 0).all(), f"cu_seqlens_q {oq} accepted"
    assert ok_[0] == 0 and ok_[-1] == tk and (np.diff(ok_) >= 0).all(), f"cu_seqlens_k {ok_} accepted"
    for s in range(len(oq) - 1):
        a, b = oq[s], oq[s + 1]
        c, d = ok_[s], ok_[s + 1]
        if b > a and d > c:
            want = _reference(q[None, a:b], k[None, c:d], v[None, c:d], spattn.Causal())
            _close(np.asarray(out)[None, a:b], want, f"varlen sequence {s}")
    if backward:
        spattn.attention_backward(np.ones_like(out), q, k, v, out, lse, pattern=spattn.Causal(), cu_seqlens_q=cq,
                                  cu_seqlens_k=ck)


def case_decode(r: random.Random):
    B, nq, hq, hkv, d = r.randint(1, 3), r.randint(1, 4), 2, 1, 8
    g = np.random.default_rng(r.randrange(2**32))
    q = g.standard_normal((B, nq, hq, d)).astype(np.float32)
    paged = r.random() < 0.6
    if paged:
        page, pages, cols = r.randint(1, 8), r.randint(1, 10), r.randint(0, 5)
        kc = g.standard_normal((pages, page, hkv, d)).astype(np.float32)
        vc = g.standard_normal((pages, page, hkv, d)).astype(np.float32)
        table = _as_int_array(r, _int_values(r, B * cols, -1, pages), (B, cols))
        lens = _as_int_array(r, _int_values(r, B, 0, cols * page))
    else:
        ncap = r.randint(0, 12)
        kc = g.standard_normal((B, ncap, hkv, d)).astype(np.float32)
        vc = g.standard_normal((B, ncap, hkv, d)).astype(np.float32)
        table = None
        lens = _as_int_array(r, _int_values(r, B, 0, ncap))
    pattern = r.choice([spattn.Dense(), spattn.Causal(), spattn.SlidingWindow(4, 0), spattn.Sink(1) | spattn.Causal()])
    out = spattn.decode(q, kc, vc, lens, pattern=pattern, block_table=table)
    # Accepted: check every sequence against the reference on the keys it names.
    L = np.asarray(lens.tolist() if hasattr(lens, "tolist") else lens, np.int64).reshape(-1)
    for b in range(B):
        n = int(L[b])
        if n == 0:
            assert (np.asarray(out)[b] == 0).all()
            continue
        m = pattern.mask(nq, n, heads=hq)
        used = m.any(axis=(0, 1))  # keys some query keeps: only their pages must be valid
        if paged:
            T = np.asarray(table.tolist() if hasattr(table, "tolist") else table, np.int64).reshape(B, -1)
            ps = kc.shape[1]
            zk, zv = np.zeros(kc.shape[2:], kc.dtype), np.zeros(vc.shape[2:], vc.dtype)
            kk = np.stack([kc[T[b, j // ps], j % ps] if used[j] else zk for j in range(n)])[None]
            vv = np.stack([vc[T[b, j // ps], j % ps] if used[j] else zv for j in range(n)])[None]
        else:
            kk, vv = kc[b:b + 1, :n], vc[b:b + 1, :n]
        want = _reference(q[b:b + 1], kk, vv, pattern)
        _close(np.asarray(out)[b:b + 1], want, f"decode sequence {b}")


# --------------------------------------------------------------------------------------------
# NaN and Inf in the inputs


def case_values(r: random.Random):
    from nonfinite_rule import check_nonfinite_rule

    check_nonfinite_rule(r)


BOUNDARIES = {"dlpack": case_dlpack, "syntax": case_syntax, "cu_seqlens": case_cu_seqlens, "decode": case_decode,
              "values": case_values}


def run_case(seed: int, index: int) -> tuple[str, str]:
    """Run case `index` of campaign `seed`. Returns (boundary, outcome): "ok", "refused"
    (an allowed error), or raises the unexpected exception."""
    r = random.Random(seed * 1_000_003 + index)
    name = list(BOUNDARIES)[index % len(BOUNDARIES)]
    try:
        BOUNDARIES[name](r)
    except Skip:
        return name, "skipped"
    except ALLOWED:
        return name, "refused"
    return name, "ok"
