"""Leaks: resident memory stays within 1% over 10,000 calls of each entry point (after a
warm-up that fills caches and pools), and no file descriptor or thread is left behind. Each
entry point runs in its own child interpreter, so one's growth never hides behind another's.
Device memory is checked the same way on a GPU (skipped without one)."""
import pytest

from _helpers import run_isolated

CHILD = r'''
import gc, os, sys
import numpy as np
import spattn

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def fds():
    return len(os.listdir("/proc/self/fd"))

def threads():
    return len(os.listdir("/proc/self/task"))

rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, 64, 2, 16)).astype(np.float32) for _ in range(3))
o, l = spattn.attention(q, k, v, pattern=spattn.Causal(), return_lse=True)
do = np.ones_like(o)
kc = rng.standard_normal((2, 200, 1, 16)).astype(np.float32)
lens = np.array([200, 77], np.int32)
pages = rng.standard_normal((30, 16, 1, 16)).astype(np.float32)
table = np.arange(26, dtype=np.int32).reshape(2, 13)
topk = spattn.TopKBlocks(2, block_size=16)
entry = {
    "attention": lambda: spattn.attention(q, k, v, pattern=spattn.Sink(2) | spattn.SlidingWindow(15, 0), return_lse=True),
    "attention_residue": lambda: spattn.attention(q, k, v, pattern=spattn.Strided(3) | spattn.SlidingWindow(7, 0)),
    "attention_topk": lambda: spattn.attention(q, k, v, pattern=topk),
    "backward": lambda: spattn.attention_backward(do, q, k, v, o, l, pattern=spattn.Causal()),
    "decode": lambda: spattn.decode(q[:, :1].repeat(2, 0), kc, kc, lens, pattern=spattn.SlidingWindow(31, 0), return_lse=True),
    "decode_paged": lambda: spattn.decode(q[:, :1].repeat(2, 0), pages, pages, lens, block_table=table),
    "merge": lambda: spattn.merge([o, o], [l, l]),
    "varlen": lambda: spattn.attention(q[0], k[0], v[0], pattern=spattn.Causal(),
                                       cu_seqlens_q=np.array([0, 30, 64], np.int32), cu_seqlens_k=np.array([0, 20, 64], np.int32)),
    "mask_layout": lambda: (spattn.BigBird(8, 3, 1, 1).block_layout(200, 200, block=(16, 16)).density,),
    "errors": lambda: [f() for f in (lambda: _refused(lambda: spattn.attention(q, k[:, :, :1, :3], v)),
                                      lambda: _refused(lambda: spattn.decode(q[:, :1], kc, kc, np.array([999, 1], np.int32))))],
}
def _refused(f):
    try:
        f()
    except (ValueError, TypeError, RuntimeError):
        return
    raise AssertionError("not refused")

f = entry[sys.argv[1]]
for _ in range(1500):  # warm-up: thread pool, caches, allocator arenas
    f()
gc.collect()
r0, fd0, t0 = rss_kb(), fds(), threads()
for _ in range(10000):
    f()
gc.collect()
r1, fd1, t1 = rss_kb(), fds(), threads()
print(f"RSS {r0} -> {r1} kB ({100.0 * (r1 - r0) / r0:+.2f}%), fds {fd0} -> {fd1}, threads {t0} -> {t1}")
assert r1 <= r0 * 1.01, "RSS grew by more than 1%"
assert fd1 == fd0, "file descriptors leaked"
assert t1 == t0, "threads leaked"
'''

ENTRIES = ["attention", "attention_residue", "attention_topk", "backward", "decode", "decode_paged", "merge",
           "varlen", "mask_layout", "errors"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_no_growth_over_10000_calls(entry):
    rc, out, err = run_isolated(CHILD.replace("sys.argv[1]", repr(entry)), timeout=600)
    assert rc == 0, f"{entry}: rc {rc}\n{out}\n{err[-3000:]}"
    print(entry, out.strip())


GPU_CHILD = r'''
import torch, spattn
q, k, v = (torch.randn(1, 256, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
def run():
    o, l = spattn.attention(q, k, v, pattern=spattn.SlidingWindow(63, 0), return_lse=True)
    spattn.attention_backward(torch.ones_like(o), q, k, v, o, l, pattern=spattn.SlidingWindow(63, 0))
for _ in range(200):
    run()
torch.cuda.synchronize()
free0, total = torch.cuda.mem_get_info()
for _ in range(10000):
    run()
torch.cuda.synchronize()
free1, _ = torch.cuda.mem_get_info()
used0, used1 = total - free0, total - free1
print(f"device memory in use {used0 >> 20} -> {used1 >> 20} MiB")
assert used1 <= used0 * 1.01 + (2 << 20), "device memory grew"
'''


def test_device_memory_does_not_grow():
    import spattn

    torch = pytest.importorskip("torch")
    if spattn.info().get("cuda_compiled") != "yes" or not spattn.info().get("cuda_backward_kernels"):
        pytest.skip("spattn was built without CUDA kernels")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rc, out, err = run_isolated(GPU_CHILD, timeout=600)
    assert rc == 0, f"rc {rc}\n{out}\n{err[-3000:]}"
    print(out.strip())
