"""The malformed-input campaign (tests/reliability/malformed.py) in CI: 2,000 cases of one
fixed seed across every boundary (DLPack producers, pattern text, cu_seqlens, cache_len and
block_table values, NaN and Inf), each answered by a return or a ValueError, TypeError or
RuntimeError; never a crash, a hang or a wrong accepted answer. The longer campaign
(tests/reliability/campaign.sh) runs 100,000 cases."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "reliability"))

import run_malformed  # noqa: E402


def test_two_thousand_malformed_inputs():
    res = run_malformed.campaign(2000, seed=2026, timeout=120.0, progress=False)
    tried = sum(sum(v.values()) for v in res["by_boundary"].values()) + len(res["failures"])
    assert tried == 2000
    assert not res["failures"], "\n".join(f"case {f['case']} ({f['kind']}): {f['detail'][:800]}"
                                          for f in res["failures"][:10])
    refused = sum(v["refused"] for v in res["by_boundary"].values())
    assert refused > 500, res["by_boundary"]  # the cases really are malformed, mostly
