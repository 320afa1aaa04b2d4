"""A built wheel as a user without a compiler gets it (`.ci/wheels` builds one and runs this):
installed into a fresh virtualenv, `spattn demo` and `spattn info` run, and the C++ consumer
builds against the wheel's CMake package. Runs only when SPATTN_WHEEL names the wheel file."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WHEEL = os.environ.get("SPATTN_WHEEL", "")
pytestmark = pytest.mark.skipif(not WHEEL, reason="SPATTN_WHEEL=path/to/spattn-*.whl not set (.ci/wheels sets it)")

CONSUMER = Path(__file__).resolve().parents[1] / "cpp" / "consumer"


def _run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    _run([sys.executable, "-m", "venv", root / "venv"], cwd=root)
    python = root / "venv" / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", WHEEL], cwd=root)
    return root, python


def test_demo_and_info_run_from_the_wheel(venv):
    root, python = venv
    out = _run([python.parent / "spattn", "demo", "--n", "2048"], cwd=root)
    assert " ok" in out, out
    where = _run([python, "-c", "import spattn; print(spattn.__file__)"], cwd=root)
    assert str(root) in where  # the wheel's copy, not the source tree
    assert "version" in _run([python.parent / "spattn", "info"], cwd=root)


def test_cpp_consumer_builds_against_the_wheel(venv):
    root, python = venv
    cmake, ninja = shutil.which("cmake"), shutil.which("ninja")
    if not (cmake and ninja):
        pytest.fail("cmake and ninja are needed on PATH (pip install cmake ninja)")
    cmake_dir = _run([python, "-c", "import spattn._cmake as c; print(c.cmake_dir())"], cwd=root).strip()
    assert cmake_dir.startswith(str(root))
    build = root / "consumer"
    _run([cmake, "-S", CONSUMER, "-B", build, "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
          "-DCMAKE_BUILD_TYPE=Release", f"-Dspattn_DIR={cmake_dir}"], cwd=root)
    _run([cmake, "--build", build], cwd=root)
    assert "max error" in _run([build / "consumer"], cwd=root)
