"""Bad inputs (docs/errors.md): the exception the docs name, a message naming the argument, no crash, no hang.

Every case runs in a child interpreter (one child runs the cases in order and reports each; when
a case kills the child, that case is recorded as a crash and a fresh child goes on with the
next), so a crash or a hang shows up as the failure of that one case.
"""

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading

import pytest

from _helpers import HERE

CHILD = r'''
import json, sys, traceback
import numpy as np
import torch
import spattn
from _helpers import rand_qkv, ref_forward, window_mask, assert_close

def arr(*shape, dtype="float32"):
    return np.random.default_rng(len(shape)).standard_normal(shape).astype(dtype)

def qkv(B=1, Nq=8, Nk=8, Hq=2, Hkv=2, D=16, Dv=16, dtype="float32"):
    return arr(B, Nq, Hq, D, dtype=dtype), arr(B, Nk, Hkv, D, dtype=dtype), arr(B, Nk, Hkv, Dv, dtype=dtype)

def tqkv(dtype=torch.float32, **kw):
    return tuple(torch.from_numpy(x).to(dtype) for x in qkv(**kw))

cases = json.loads(sys.stdin.read())
for name, code in cases:
    print("@@START " + name, flush=True)
    res = {"name": name, "exc": None, "mro": [], "msg": ""}
    try:
        exec(code, {"np": np, "torch": torch, "spattn": spattn, "arr": arr, "qkv": qkv, "tqkv": tqkv,
                    "rand_qkv": rand_qkv, "ref_forward": ref_forward, "window_mask": window_mask,
                    "assert_close": assert_close})
    except BaseException as e:  # report everything, SystemExit and KeyboardInterrupt included
        res["exc"] = type(e).__name__
        res["mro"] = [c.__name__ for c in type(e).__mro__]
        res["msg"] = str(e)[:2000]
        res["tb"] = traceback.format_exc()[-3000:]
    print("@@RESULT " + json.dumps(res), flush=True)
'''

V = "q, k, v = qkv()\n"
VT = "q, k, v = tqkv()\n"
ANY_ERR = ("ValueError", "TypeError", "RuntimeError")

# name: (code, expected exception class names (any of), words the message must contain (any of))
# expected None: the code must run to the end (it checks its own results).
CASES = {
    # ---- ranks
    "q_rank3": (V + "spattn.attention(q[0], k, v)", ("ValueError",), ("q",)),
    "q_rank5": (V + "spattn.attention(q[None], k, v)", ("ValueError",), ("q",)),
    "q_rank1": (V + "spattn.attention(q.reshape(-1), k, v)", ("ValueError",), ("q",)),
    "q_rank0": (V + "spattn.attention(np.array(1.0, dtype=np.float32), k, v)", ("ValueError",), ("q",)),
    "k_rank3": (V + "spattn.attention(q, k[0], v)", ("ValueError",), ("k",)),
    "v_rank2": (V + "spattn.attention(q, k, v[0, 0])", ("ValueError",), ("v",)),
    "v_rank5": (V + "spattn.attention(q, k, v[None])", ("ValueError",), ("v",)),
    "torch_q_rank3": (VT + "spattn.attention(q[0], k, v)", ("ValueError",), ("q",)),
    # ---- shapes
    "batch_mismatch_k": ("q, _, _ = qkv(B=2)\n_, k, v = qkv(B=1)\nspattn.attention(q, k, v)",
                         ("ValueError",), ("q", "k")),
    "batch_mismatch_v": ("q, k, _ = qkv(B=2)\n_, _, v = qkv(B=3)\nspattn.attention(q, k, v)",
                         ("ValueError",), ("k", "v")),
    "heads_not_divisible": ("q, k, v = qkv(Hq=6, Hkv=4)\nspattn.attention(q, k, v)", ("ValueError",), ("q", "k")),
    "heads_kv_more_than_q": ("q, k, v = qkv(Hq=2, Hkv=4)\nspattn.attention(q, k, v)", ("ValueError",), ("q", "k")),
    "heads_k_v_mismatch": ("q, k, _ = qkv(Hq=4, Hkv=2)\n_, _, v = qkv(Hq=4, Hkv=1)\nspattn.attention(q, k, v)",
                           ("ValueError",), ("k", "v")),
    "nk_k_v_mismatch": ("q, k, _ = qkv(Nk=8)\n_, _, v = qkv(Nk=9)\nspattn.attention(q, k, v)",
                        ("ValueError",), ("k", "v")),
    "d_q_k_mismatch": ("q, _, v = qkv(D=16)\n_, k, _ = qkv(D=32)\nspattn.attention(q, k, v)",
                       ("ValueError",), ("q", "k")),
    "head_dim_257": ("q, k, v = qkv(D=257)\nspattn.attention(q, k, v)", ("ValueError",), ("q", "k", "D")),
    "value_dim_300": ("q, k, v = qkv(Dv=300)\nspattn.attention(q, k, v)", ("ValueError",), ("v", "Dv")),
    "torch_nk_mismatch": ("q, k, _ = tqkv(Nk=8)\n_, _, v = tqkv(Nk=5)\nspattn.attention(q, k, v)",
                          ("ValueError",), ("k", "v")),
    # ---- dtypes
    "dtype_mix_q32_k16": ("q, _, v = qkv()\n_, k, _ = qkv(dtype='float16')\nspattn.attention(q, k, v)",
                          ("TypeError",), ("k", "q")),
    "dtype_mix_v16": ("q, k, _ = qkv()\n_, _, v = qkv(dtype='float16')\nspattn.attention(q, k, v)",
                      ("TypeError",), ("v", "q")),
    "dtype_int32": ("q, k, v = qkv(dtype='int32')\nspattn.attention(q, k, v)", ("TypeError",), ("q",)),
    "dtype_int64_k": ("q, _, v = qkv()\n_, k, _ = qkv(dtype='int64')\nspattn.attention(q, k, v)",
                      ("TypeError",), ("k",)),
    # float64 runs (CPU, for gradient checks); mixed with float32 it is refused like any mix
    "dtype_mix_q64_k32": ("q, _, v = qkv(dtype='float64')\n_, k, _ = qkv()\nspattn.attention(q, k, v)",
                          ("TypeError",), ("k", "q")),
    "dtype_bool": ("q, k, v = qkv(dtype='bool')\nspattn.attention(q, k, v)", ("TypeError",), ("q",)),
    "dtype_complex64": ("q, k, v = qkv(dtype='complex64')\nspattn.attention(q, k, v)", ("TypeError",), ("q",)),
    "dtype_uint8": ("q, k, v = qkv(dtype='uint8')\nspattn.attention(q, k, v)", ("TypeError",), ("q",)),
    "torch_dtype_mix_bf16_f16": ("q, _, v = tqkv(torch.bfloat16)\n_, k, _ = tqkv(torch.float16)\n"
                                 "spattn.attention(q, k, v)", ("TypeError",), ("k", "q")),
    "torch_int": ("q, k, v = tqkv(torch.int32)\nspattn.attention(q, k, v)", ("TypeError",), ("q",)),
    # ---- not arrays
    "q_list": (V + "spattn.attention(q.tolist(), k, v)", ("TypeError",), ("q",)),
    "q_int": (V + "spattn.attention(3, k, v)", ("TypeError",), ("q",)),
    "q_none": (V + "spattn.attention(None, k, v)", ("TypeError",), ("q",)),
    "q_str": (V + "spattn.attention('q', k, v)", ("TypeError",), ("q",)),
    "k_none": (V + "spattn.attention(q, None, v)", ("TypeError",), ("k",)),
    "v_list": (V + "spattn.attention(q, k, [1.0, 2.0])", ("TypeError",), ("v",)),
    "q_object": (V + "spattn.attention(object(), k, v)", ("TypeError",), ("q",)),
    # ---- devices: torch 'meta' tensors have no data and cannot be exported (all-meta inputs
    # get meta outputs from the torch operator's fake implementation: test_torch_ops.py)
    "meta_k": (VT + "k = torch.empty(1, 8, 2, 16, device='meta')\nspattn.attention(q, k, v)", ANY_ERR, ("k",)),
    "meta_out": (VT + "spattn.attention(q, k, v, out=torch.empty(1, 8, 2, 16, device='meta'))",
                 ANY_ERR, ("out",)),
    # ---- pattern arguments
    "sw_empty_window": ("spattn.SlidingWindow(-3, 2)", ("ValueError",), ("left", "right", "window")),
    "sw_empty_window_right": ("spattn.SlidingWindow(0, -1)", ("ValueError",), ("left", "right", "window")),
    "sw_empty_window_default_right": ("spattn.SlidingWindow(-1)", ("ValueError",), ("left", "right", "window")),
    "sw_string": ("spattn.SlidingWindow('a', 0)", ("TypeError",), ("left",)),
    "sw_right_string": ("spattn.SlidingWindow(3, 'b')", ("TypeError",), ("right",)),
    "bs_layout_wrong_shape": (V + "p = spattn.BlockSparse(np.ones((1, 3, 1), bool), block_size=(4, 4))\n"
                              "spattn.attention(q, k, v, pattern=p)", ("ValueError",), ("layout", "pattern")),
    "bs_layout_too_small": (V + "p = spattn.BlockSparse(np.ones((1, 1, 2), bool), block_size=(4, 4))\n"
                            "spattn.attention(q, k, v, pattern=p)", ("ValueError",), ("layout", "pattern")),
    "bs_layout_wrong_heads": (V + "p = spattn.BlockSparse(np.ones((3, 2, 2), bool), block_size=(4, 4))\n"
                              "spattn.attention(q, k, v, pattern=p)", ("ValueError",), ("layout", "pattern", "heads")),
    "bs_mask_wrong_shape": ("p = spattn.BlockSparse(np.ones((1, 3, 1), bool), block_size=(4, 4))\np.mask(8, 8)",
                            ("ValueError",), ("layout", "pattern")),
    "bs_block_zero": ("spattn.BlockSparse(np.ones((1, 2, 2), bool), block_size=(0, 16))", ("ValueError",), ("block", "block_size")),
    "bs_block_negative": ("spattn.BlockSparse(np.ones((1, 2, 2), bool), block_size=(16, -1))", ("ValueError",), ("block", "block_size")),
    "bs_block_int_zero": ("spattn.BlockSparse(np.ones((1, 2, 2), bool), block_size=0)", ("ValueError",), ("block", "block_size")),
    "bs_layout_string": ("spattn.BlockSparse('abc', block_size=(16, 16))", ("TypeError",), ("layout",)),
    "bs_layout_none": ("spattn.BlockSparse(None, block_size=(16, 16))", ("TypeError",), ("layout",)),
    "pattern_string": (V + "spattn.attention(q, k, v, pattern='causal')", ("TypeError",), ("pattern",)),
    "pattern_int": (V + "spattn.attention(q, k, v, pattern=3)", ("TypeError",), ("pattern",)),
    "mask_negative_length": ("spattn.Causal().mask(-1, 5)", ("ValueError",), ("Nq", "nq", "length")),
    "block_layout_zero_block": ("spattn.Causal().block_layout(10, 10, block=(0, 64))", ("ValueError",), ("block", "block_size")),
    # ---- scale
    "scale_nan": (V + "spattn.attention(q, k, v, scale=float('nan'))", ("ValueError",), ("scale",)),
    "scale_string": (V + "spattn.attention(q, k, v, scale='big')", ("TypeError",), ("scale",)),
    "backward_scale_nan": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                           "spattn.attention_backward(o, q, k, v, o, l, scale=float('nan'))", ("ValueError",), ("scale",)),
    # ---- out=
    "out_read_only": (V + "o = np.zeros((1, 8, 2, 16), np.float32)\no.flags.writeable = False\n"
                      "spattn.attention(q, k, v, out=o)", ("ValueError",), ("out",)),
    "out_wrong_shape": (V + "spattn.attention(q, k, v, out=np.zeros((1, 8, 2, 15), np.float32))", ("ValueError",), ("out",)),
    "out_wrong_rank": (V + "spattn.attention(q, k, v, out=np.zeros((8, 2, 16), np.float32))", ("ValueError",), ("out",)),
    "out_wrong_dtype": (V + "spattn.attention(q, k, v, out=np.zeros((1, 8, 2, 16), np.float16))", ("TypeError",), ("out",)),
    "out_not_array": (V + "spattn.attention(q, k, v, out=[0.0] * 256)", ("TypeError",), ("out",)),
    "torch_out_wrong_shape": (VT + "spattn.attention(q, k, v, out=torch.zeros(1, 9, 2, 16))", ("ValueError",), ("out",)),
    # ---- attention_backward
    "bwd_dout_shape": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                       "spattn.attention_backward(o[:, :7], q, k, v, o, l)", ("ValueError",), ("dout",)),
    "bwd_dout_dtype": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                       "spattn.attention_backward(o.astype(np.float16), q, k, v, o, l)", ("TypeError",), ("dout",)),
    "bwd_out_shape": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                      "spattn.attention_backward(o, q, k, v, o[:, :, :1], l)", ("ValueError",), ("out",)),
    "bwd_lse_shape": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                      "spattn.attention_backward(o, q, k, v, o, l[:, :, :5])", ("ValueError",), ("lse",)),
    "bwd_lse_dtype": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                      "spattn.attention_backward(o, q, k, v, o, l.astype(np.float16))", ("TypeError",), ("lse",)),
    "bwd_lse_none": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                     "spattn.attention_backward(o, q, k, v, o, None)", ("TypeError",), ("lse",)),
    "bwd_q_int": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                  "spattn.attention_backward(o, q.astype(np.int32), k, v, o, l)", ("TypeError",), ("q",)),
    "bwd_heads_not_divisible": ("q, k, v = qkv(Hq=3, Hkv=2)\no = np.zeros((1, 8, 3, 16), np.float32)\n"
                                "l = np.zeros((1, 3, 8), np.float32)\nspattn.attention_backward(o, q, k, v, o, l)",
                                ("ValueError",), ("q", "k")),
    "bwd_bs_layout_wrong_shape": (V + "o, l = spattn.attention(q, k, v, return_lse=True)\n"
                                  "p = spattn.BlockSparse(np.ones((1, 5, 5), bool), block_size=4)\n"
                                  "spattn.attention_backward(o, q, k, v, o, l, pattern=p)", ("ValueError",),
                                  ("layout", "pattern")),
    # ---- cases that must succeed (checked inside)
    "error_leaves_out_untouched": (V + """
o = np.full((1, 8, 2, 16), 7.0, np.float32)
p = spattn.BlockSparse(np.ones((1, 3, 3), bool), block_size=(4, 4))
try:
    spattn.attention(q, k, v, pattern=p, out=o)
except ValueError:
    pass
else:
    raise AssertionError('no ValueError for a wrong layout')
assert (o == 7.0).all(), 'out= was written before the error'
""", None, ()),
    "broadcast_zero_stride_inputs": ("""
q, k, v = qkv(Nq=9, Nk=12, Hq=4, Hkv=2)
k = np.broadcast_to(k[:, :1], k.shape)   # stride 0 along the sequence, read-only
v = np.broadcast_to(v[:, :, :1], v.shape)  # stride 0 along the heads
ref, _, _ = ref_forward(q, k, v, window_mask(9, 12, None, 0)[None])
assert_close('out', spattn.attention(q, k, v, pattern=spattn.Causal()), ref, 'float32')
""", None, ()),
    "zero_length_keys": ("""
q, k, v = qkv(Nq=5, Nk=0)
try:
    out, lse = spattn.attention(q, k, v, return_lse=True)
except ValueError as e:
    assert 'k' in str(e) or 'N' in str(e), str(e)
else:
    assert out.shape == (1, 5, 2, 16) and (out == 0).all() and np.isneginf(lse).all()
""", None, ()),
    "zero_length_queries": ("""
q, k, v = qkv(Nq=0, Nk=5)
try:
    out = spattn.attention(q, k, v, pattern=spattn.Causal())
except ValueError as e:
    pass
else:
    assert out.shape == (1, 0, 2, 16)
""", None, ()),
    "zero_batch": ("""
q, k, v = qkv(B=0)
try:
    out = spattn.attention(q, k, v)
except ValueError as e:
    pass
else:
    assert out.shape == (0, 8, 2, 16)
""", None, ()),
    "huge_window_values": ("""
q, k, v = qkv(Nq=9, Nk=12)
ref, _, _ = ref_forward(q, k, v, np.ones((1, 9, 12), bool))
for w in (2**40, 2**62, 2**63 - 1, 2**70):
    try:
        p = spattn.SlidingWindow(w, w)
    except ValueError as e:  # out of range may be refused, as a ValueError naming the argument
        assert 'left' in str(e) or 'right' in str(e), str(e)
        continue
    assert_close('out', spattn.attention(q, k, v, pattern=p), ref, 'float32')
    assert p.mask(9, 12).all()
""", None, ()),
}


def _run_children(cases, per_case_timeout=120.0):
    """Run [(name, code)] in child interpreters; returns {name: result dict}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    results = {}
    remaining = list(cases)
    while remaining:
        with tempfile.TemporaryFile(mode="w+") as err:
            p = subprocess.Popen([sys.executable, "-c", CHILD], cwd=HERE, env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            lines = queue.Queue()

            def pump():
                for line in p.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            p.stdin.write(json.dumps(remaining))
            p.stdin.close()
            current = None
            while True:
                try:
                    line = lines.get(timeout=per_case_timeout)
                except queue.Empty:
                    p.kill()
                    p.wait()
                    name = current or remaining[0][0]
                    results[name] = {"name": name, "hang": True}
                    break
                if line is None:
                    rc = p.wait()
                    err.seek(0)
                    tail = err.read()[-3000:]
                    if current is not None and current not in results:
                        results[current] = {"name": current, "crash": rc, "stderr": tail}
                    elif current is None:  # the child died before its first case
                        for name, _ in remaining:
                            results[name] = {"name": name, "crash": rc, "stderr": tail}
                    break
                if line.startswith("@@START "):
                    current = line[len("@@START "):].strip()
                elif line.startswith("@@RESULT "):
                    r = json.loads(line[len("@@RESULT "):])
                    results[r["name"]] = r
        remaining = [c for c in remaining if c[0] not in results]
    return results


_RESULTS = {}


@pytest.fixture(scope="module")
def results():
    if not _RESULTS:
        _RESULTS.update(_run_children([(n, c[0]) for n, c in CASES.items()]))
    return _RESULTS


def _names_argument(msg, words):
    return any(re.search(r"(?<![A-Za-z0-9_])" + re.escape(w) + r"(?![A-Za-z0-9_])", msg) for w in words)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, results):
    code, expected, words = CASES[name]
    r = results[name]
    assert not r.get("hang"), f"{name}: hung (no result within the time limit)"
    assert "crash" not in r, f"{name}: the interpreter died (rc {r['crash']})\n{r['stderr']}"
    if expected is None:
        assert r["exc"] is None, f"{name}: {r['exc']}: {r['msg']}\n{r.get('tb', '')}"
        return
    assert r["exc"] is not None, f"{name}: no exception raised, expected {expected}"
    assert any(e in r["mro"] for e in expected), (
        f"{name}: raised {r['exc']} ({r['msg']!r}), expected {' or '.join(expected)}\n{r.get('tb', '')}")
    assert _names_argument(r["msg"], words), (
        f"{name}: message {r['msg']!r} does not name the argument (any of {words})")


def test_runner_reports_crashes_and_goes_on():
    # The harness itself: a case that kills the interpreter is a crash, the next still runs.
    res = _run_children([("die", "import os\nos._exit(3)"), ("fine", "x = 1"), ("raise", "raise ValueError('q')")])
    assert res["die"]["crash"] == 3
    assert res["fine"]["exc"] is None
    assert res["raise"]["exc"] == "ValueError"
