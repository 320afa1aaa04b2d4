// libFuzzer target over the pattern text parser (spattn/pattern_syntax.hpp): the whole of what
// a user's string meets before any pattern is built (tokens, grammar, the table of names and
// parameters, the limits on nesting and length).
//
// Checked for every input:
//   - it parses, or it throws spattn::syntax::PatternSyntaxError (a spattn::ValueError) whose
//     position lies inside the text (0 .. its length in characters) and whose message says
//     "(at position N)"; any other exception, a crash or a sanitizer report is a finding;
//   - a tree prints canonically (to_text), and that text parses to the same tree (positions
//     aside) and prints the same text again.
// Seeds: tests/fuzz/seeds_syntax/, dictionary: tests/fuzz/fuzz_syntax.dict (RELIABILITY.md).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "spattn/pattern_syntax.hpp"

namespace {

using namespace spattn::syntax;

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_syntax finding: %s\n%s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::shared_ptr<const Node> tree;
  try {
    tree = parse(text);
  } catch (const PatternSyntaxError& e) {
    // positions count characters, and a character is at least one byte
    if (e.pos() > text.size()) finding("an error position past the end of the text", e.what());
    if (std::string(e.what()).find("(at position " + std::to_string(e.pos()) + ")") == std::string::npos)
      finding("a message without its position", e.what());
    return 0;
  } catch (const std::exception& e) {
    finding("an exception that is not a PatternSyntaxError", e.what());
  }
  const std::string printed = to_text(*tree);
  std::shared_ptr<const Node> again;
  try {
    again = parse(printed);
  } catch (const std::exception& e) {
    finding("the canonical text does not parse", printed + "\n" + e.what());
  }
  if (!same_tree(*tree, *again)) finding("the canonical text parses to another tree", printed);
  if (to_text(*again) != printed) finding("printing is not idempotent", printed);
  return 0;
}
