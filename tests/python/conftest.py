"""pytest configuration for the spattn suite (tests/python)."""

import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `import _helpers`

# Bounded property tests: no deadline (the first call may be slow). Under CI (CI=true) the
# examples are derandomized, so a landing is judged on the same cases every time; local runs
# draw new ones (and keep failures in .hypothesis/ to replay).
settings.register_profile(
    "spattn",
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    derandomize=os.environ.get("CI", "").lower() == "true",
)
settings.load_profile(os.environ.get("SPATTN_HYPOTHESIS_PROFILE", "spattn"))


def pytest_report_header(config):
    try:
        import spattn

        return f"spattn info: {spattn.info()}"
    except Exception as e:  # pragma: no cover - shown in the header only
        return f"spattn not importable: {e!r}"
