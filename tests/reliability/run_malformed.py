"""Run the malformed-input campaign (malformed.py) in child interpreters and report.

    python tests/reliability/run_malformed.py --cases 100000 --seed 1 [--json out.json]

A child runs cases index 0, 1, 2, ... of the seed and reports each on its stdout. A case that
kills the child (a crash) or runs past --timeout seconds (a hang) is recorded, and a new child
goes on with the next case. Exit status 0 when every case returned or raised an allowed error
(ValueError, TypeError, RuntimeError), 1 otherwise. The summary gives cases tried per boundary,
how many were accepted, refused or skipped (a drawn producer that would lie about its memory),
and every failure with its case index, which replays alone with --only INDEX.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTESTS = os.path.join(os.path.dirname(HERE), "python")

CHILD = r"""
import sys, traceback
sys.path[:0] = [{here!r}, {pytests!r}]
import malformed
seed, first, last = {seed}, int(sys.argv[1]), int(sys.argv[2])
only = {only!r}
for i in (only if only is not None else range(first, last)):
    print("@@START", i, flush=True)
    try:
        name, outcome = malformed.run_case(seed, i)
        print("@@DONE", i, name, outcome, flush=True)
    except BaseException as e:
        tb = traceback.format_exc().replace("\n", "\\n")[-1500:]
        print("@@FAIL", i, type(e).__name__, tb, flush=True)
"""


def campaign(cases: int, seed: int, timeout: float, only=None, progress=True):
    stats = {}
    failures = []
    start = time.time()
    next_case = 0
    end = cases if only is None else len(only)
    while next_case < end:
        code = CHILD.format(here=HERE, pytests=PYTESTS, seed=seed, only=None if only is None else only[next_case:])
        p = subprocess.Popen([sys.executable, "-c", code, str(next_case), str(cases)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=HERE)
        lines: queue.Queue = queue.Queue()
        err_tail = []

        def pump_out():
            for line in p.stdout:
                lines.put(line)
            lines.put(None)

        def pump_err():
            for line in p.stderr:
                err_tail.append(line)
                del err_tail[:-40]

        threading.Thread(target=pump_out, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()
        current = None
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                p.kill()
                p.wait()
                failures.append({"case": current, "kind": "hang", "detail": f"no answer within {timeout} s"})
                next_case = (current if current is not None else next_case) + 1
                break
            if line is None:
                rc = p.wait()
                if current is not None:
                    failures.append({"case": current, "kind": "crash", "detail": f"rc {rc}: " + "".join(err_tail)[-1500:]})
                    next_case = current + 1
                else:
                    next_case = end
                break
            parts = line.split(" ", 3)
            if parts[0] == "@@START":
                current = int(parts[1])
            elif parts[0] == "@@DONE":
                name, outcome = parts[2], parts[3].strip()
                stats.setdefault(name, {"ok": 0, "refused": 0, "skipped": 0})[outcome] += 1
                current = None
                next_case = int(parts[1]) + 1
            elif parts[0] == "@@FAIL":
                failures.append({"case": int(parts[1]), "kind": parts[2], "detail": parts[3] if len(parts) > 3 else ""})
                current = None
                next_case = int(parts[1]) + 1
        if only is not None:
            break
        if progress:
            done = sum(sum(v.values()) for v in stats.values())
            print(f"  {done} cases, {len(failures)} failures, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return {"seed": seed, "cases": cases if only is None else len(only), "seconds": round(time.time() - start, 1),
            "by_boundary": stats, "failures": failures}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take")
    ap.add_argument("--only", type=int, nargs="*", help="replay these case indices")
    ap.add_argument("--json", help="write the summary here too")
    a = ap.parse_args(argv)
    res = campaign(a.cases, a.seed, a.timeout, a.only)
    tried = sum(sum(v.values()) for v in res["by_boundary"].values()) + len(res["failures"])
    print(f"malformed inputs: seed {a.seed}, {tried} cases in {res['seconds']} s, {len(res['failures'])} failures")
    for name, v in sorted(res["by_boundary"].items()):
        print(f"  {name:11s} accepted {v['ok']:7d}  refused {v['refused']:7d}  skipped {v['skipped']:6d}")
    for f in res["failures"][:20]:
        print(f"  FAIL case {f['case']} ({f['kind']}): {f['detail'][:600]}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
