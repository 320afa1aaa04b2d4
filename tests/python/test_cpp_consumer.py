"""The C++ library as a C++ user gets it from the installed wheel: tests/cpp/consumer is
configured with CMake against spattn's package config (find_package(spattn CONFIG)), built with
Ninja and run. Needs cmake, ninja and a C++ compiler (the `test` extra brings cmake and ninja).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import spattn._cmake as spattn_cmake

CONSUMER = Path(__file__).resolve().parents[1] / "cpp" / "consumer"


def _tool(name: str) -> str:
    """A tool from PATH or from the running interpreter's scripts directory."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail(f"{name} not found: install the test extra (pip install '.[test]')")
    return found


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def test_package_config_is_installed():
    cmake_dir = Path(spattn_cmake.cmake_dir())
    for name in ("spattnConfig.cmake", "spattnConfigVersion.cmake", "spattnTargets.cmake"):
        assert (cmake_dir / name).is_file(), f"{name} missing from {cmake_dir}"
    assert (Path(spattn_cmake.include_dir()) / "spattn" / "spattn.hpp").is_file()
    assert Path(spattn_cmake.prefix()) == cmake_dir.parents[2]


@pytest.mark.parametrize("how", ["prefix_path", "prefix_path_cmake_dir", "spattn_dir"])
def test_cpp_consumer_builds_and_runs(tmp_path: Path, how: str):
    cmake, ninja = _tool("cmake"), _tool("ninja")
    build = tmp_path / "build"
    if how == "prefix_path":
        locate = f"-DCMAKE_PREFIX_PATH={spattn_cmake.prefix()}"
    elif how == "prefix_path_cmake_dir":  # what the README shows
        locate = f"-DCMAKE_PREFIX_PATH={spattn_cmake.cmake_dir()}"
    else:
        locate = f"-Dspattn_DIR={spattn_cmake.cmake_dir()}"
    _run(
        [cmake, "-S", str(CONSUMER), "-B", str(build), "-G", "Ninja",
         f"-DCMAKE_MAKE_PROGRAM={ninja}", "-DCMAKE_BUILD_TYPE=Release", locate],
        cwd=tmp_path, timeout=300,
    )
    _run([cmake, "--build", str(build), "-j", str(min(4, os.cpu_count() or 1))],
         cwd=tmp_path, timeout=600)
    exe = build / ("consumer.exe" if os.name == "nt" else "consumer")
    proc = _run([str(exe)], cwd=tmp_path, timeout=120)
    assert "max error" in proc.stdout
