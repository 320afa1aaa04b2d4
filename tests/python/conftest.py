"""pytest configuration for the spattn suite (tests/python)."""

import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `import _helpers`

# Bounded, reproducible-enough property tests for CI: no deadline (the first call may be slow).
settings.register_profile(
    "spattn",
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("SPATTN_HYPOTHESIS_PROFILE", "spattn"))


def pytest_report_header(config):
    try:
        import spattn

        return f"spattn info: {spattn.info()}"
    except Exception as e:  # pragma: no cover - shown in the header only
        return f"spattn not importable: {e!r}"
