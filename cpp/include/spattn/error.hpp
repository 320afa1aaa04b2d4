// The three kinds of error spattn reports (docs/errors.md). Python maps them one to one onto
// ValueError, TypeError and RuntimeError; C++ callers can catch them as std exceptions.
#pragma once

#include <stdexcept>
#include <string>

namespace spattn {

// Shapes, lengths, pattern arguments: a value that is out of range or inconsistent.
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Types and dtypes: an argument of the wrong kind.
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A backend that is not available (a CUDA tensor on a CPU-only build, say).
struct RuntimeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace spattn
