"""Where the C++ package of an installed spattn lies, for CMake users of the wheel.

    cmake -S . -B build -Dspattn_DIR="$(python -c 'import spattn._cmake as c; print(c.cmake_dir())')"
    cmake -S . -B build -DCMAKE_PREFIX_PATH="$(python -c 'import spattn._cmake as c; print(c.prefix())')"

then ``find_package(spattn CONFIG REQUIRED)`` and ``target_link_libraries(app PRIVATE spattn::spattn)``.
The wheel carries the headers (``include/``), the static library (``lib/libspattn.a``) and
``lib/cmake/spattn/spattnConfig.cmake``, all inside the ``spattn`` package directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cmake_dir", "prefix", "include_dir"]

_CONFIG = Path("lib") / "cmake" / "spattn" / "spattnConfig.cmake"


def _root() -> Path:
    """The directory holding include/ and lib/: this package's directory in a normal install;
    in an editable install, the directory the extension module was installed to."""
    here = Path(__file__).resolve().parent
    if (here / _CONFIG).is_file():
        return here
    try:
        from importlib.util import find_spec

        spec = find_spec(f"{__package__}._core")  # located, not imported
        if spec is not None and spec.origin:
            there = Path(spec.origin).resolve().parent
            if (there / _CONFIG).is_file():
                return there
    except (ImportError, ValueError):
        pass
    return here


def prefix() -> str:
    """The install prefix of the C++ package (for ``CMAKE_PREFIX_PATH``)."""
    return str(_root())


def cmake_dir() -> str:
    """The directory holding ``spattnConfig.cmake`` (for ``spattn_DIR``)."""
    return str(_root() / "lib" / "cmake" / "spattn")


def include_dir() -> str:
    """The directory holding ``spattn/spattn.hpp``."""
    return str(_root() / "include")
