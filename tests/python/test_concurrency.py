"""Concurrency: 8 Python threads calling attention, backward, decode and merge at once, with
different patterns and thread limits, get what serial calls get; the CPU buffer cache stays
inside its limits meanwhile (run in a child with SPATTN_CPU_CACHE_MB=24, so that the limit is
reached: several calls make buffers of 4 MB and more)."""
import sys

from _helpers import run_isolated

CHILD = r'''
import os, re, threading, time
import numpy as np
import spattn
from spattn import _core

rng = np.random.default_rng(0)
def arr(*s):
    return rng.standard_normal(s).astype(np.float32)

def fwd(q, k, v, p, threads):
    o, l = _core.forward(q, k, v, p._core(), None, None, True, None, None, threads)
    return np.from_dlpack(o), np.from_dlpack(l)

def bwd(q, k, v, p, threads):
    o, l = fwd(q, k, v, p, threads)
    g = _core.backward(np.ones_like(o), q, k, v, o, l, p._core(), None, None, None, threads)
    return tuple(np.from_dlpack(x) for x in g)

def dec(q, k, v, lens, p, threads):
    o, l = _core.decode(q, k, v, lens, p._core(), None, None, True, None, threads)
    return np.from_dlpack(o), np.from_dlpack(l)

big = [arr(1, 2048, 4, 128) for _ in range(3)]        # outputs of 4 MB: the buffer cache
small = [arr(2, 97, 4, 32), arr(2, 130, 2, 32), arr(2, 130, 2, 24)]
cache = [arr(3, 1, 8, 32), arr(3, 700, 2, 32), arr(3, 700, 2, 32), np.array([700, 5, 333], np.int32)]
parts = [arr(2, 50, 4, 16), arr(2, 50, 4, 16), arr(2, 4, 50), arr(2, 4, 50)]
patterns = [spattn.Causal(), spattn.SlidingWindow(63, 0), spattn.Sink(4) | spattn.SlidingWindow(31, 0),
            spattn.Dilated(16, 0, 3), spattn.Strided(7) | spattn.SlidingWindow(15, 0),
            spattn.TopKBlocks(2, block_size=32, always=spattn.Sink(2)),
            spattn.PerHead([spattn.Causal(), spattn.Strided(5), spattn.Sink(3), spattn.SlidingWindow(9, 2)])]
tasks = []
for i, p in enumerate(patterns):
    tasks.append(("forward", lambda p=p, t=i % 3: fwd(*small, p, t)))
    tasks.append(("backward", lambda p=p, t=(i + 1) % 3: bwd(*small, p, t)))
    if not isinstance(p, spattn.PerHead):  # the cache's q has 8 heads, this PerHead 4
        tasks.append(("decode", lambda p=p, t=(i + 2) % 3: dec(*cache, p, t)))
tasks.append(("forward-big", lambda: fwd(*big, spattn.SlidingWindow(127, 0), 0)))
tasks.append(("backward-big", lambda: bwd(*big, spattn.SlidingWindow(63, 0), 2)))
tasks.append(("merge", lambda: tuple(np.from_dlpack(x) for x in _core.merge(parts[:2], parts[2:]))))
serial = [f() for _, f in tasks]

limit_mb = int(os.environ["SPATTN_CPU_CACHE_MB"])
over = []
stop = threading.Event()
def watch():
    while not stop.is_set():
        m = re.match(r"(\d+) MB in (\d+) blocks \(limit (\d+) MB\)", spattn.info()["cpu_buffer_cache"])
        mb, blocks, lim = map(int, m.groups())
        if mb > limit_mb or blocks > 16 or lim != limit_mb:
            over.append((mb, blocks, lim))
        time.sleep(0.002)

errors = []
def worker(w):
    order = np.random.default_rng(w).permutation(len(tasks) * 3) % len(tasks)
    for t in order:
        name, f = tasks[t]
        got = f()
        for a, b in zip(got, serial[t]):
            if not np.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True):
                errors.append((w, name, float(np.nanmax(np.abs(a - b)))))

watcher = threading.Thread(target=watch)
watcher.start()
threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
for t in threads: t.start()
for t in threads: t.join()
stop.set(); watcher.join()
assert not errors, errors[:5]
assert not over, over[:5]
print("calls", 8 * 3 * len(tasks), "cache", spattn.info()["cpu_buffer_cache"])
'''


def test_eight_threads_match_serial_calls_and_cache_stays_in_limit():
    import os

    os.environ["SPATTN_CPU_CACHE_MB"] = "24"
    try:
        rc, out, err = run_isolated(CHILD, timeout=600)
    finally:
        del os.environ["SPATTN_CPU_CACHE_MB"]
    assert rc == 0, f"rc {rc}\n{out}\n{err[-4000:]}"
    assert "calls" in out
