// The pattern text parser (spattn/pattern_syntax.hpp): the trees it makes (defaults filled in,
// aliases resolved, precedence), its errors (message and position, in characters), its limits
// (nesting depth, text length, int64 range) and the printer's round trip.
#include <cstdio>
#include <string>

#include "spattn/pattern_syntax.hpp"

using namespace spattn::syntax;

static int failures = 0, checks = 0;
#define CHECK(c)                                                     \
  do {                                                               \
    ++checks;                                                        \
    if (!(c)) {                                                      \
      ++failures;                                                    \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);       \
    }                                                                \
  } while (0)

// The canonical text of `text`'s tree ("" if it does not parse).
static std::string canon(const std::string& text) {
  try {
    return to_text(*parse(text));
  } catch (const PatternSyntaxError& e) {
    std::printf("unexpected error for %s: %s\n", text.c_str(), e.what());
    return "";
  }
}

// The error `text` gets: position and whether the reason contains `fragment`.
static bool error_at(const std::string& text, size_t pos, const std::string& fragment) {
  try {
    parse(text);
  } catch (const PatternSyntaxError& e) {
    const bool ok = e.pos() == pos && e.reason().find(fragment) != std::string::npos &&
                    std::string(e.what()).find("(at position " + std::to_string(pos) + ")") != std::string::npos;
    if (!ok) std::printf("for %s got: %s\n", text.c_str(), e.what());
    return ok;
  }
  std::printf("no error for %s\n", text.c_str());
  return false;
}

int main() {
  // trees: defaults, aliases, case, keywords, precedence
  CHECK(canon("window(7)") == "window(7,0)");
  CHECK(canon(" Sliding_Window ( left = 3 , RIGHT = none ) ") == "window(3,none)");
  CHECK(canon("window(inf, 4)") == "window(none,4)");
  CHECK(canon("Dense") == "dense");
  CHECK(canon("causal()") == "causal");
  CHECK(canon("strided(8,causal=false)") == "strided(8,false)");
  CHECK(canon("bigbird(8,3,2,3,seed=1)") == "bigbird(8,3,2,3,1)");
  CHECK(canon("window(0,3) | window(6,6) & causal") == "window(0,3)|window(6,6)&causal");
  CHECK(canon("(window(0,3) | window(6,6)) & causal") == "(window(0,3)|window(6,6))&causal");
  CHECK(canon("((window(5,5)))") == "window(5,5)");
  CHECK(canon("(sink(1) & dense) & causal") == "(sink(1)&dense)&causal");
  CHECK(canon("sink(1) & dense & causal") == "sink(1)&dense&causal");
  CHECK(canon("perhead(causal; window(3,0) | sink(2))") == "perhead(causal,window(3,0)|sink(2))");
  CHECK(canon("topk(8, always=sink(4)|window(255))") == "topk(8,64,none,true,sink(4)|window(255,0))");
  CHECK(canon("topk(8, 32, 16, false, none)") == "topk(8,32,16,false,none)");
  CHECK(canon("blocksparse(random=1)") == "blocksparse(1.0,64,0,1,false)");
  CHECK(canon("blocksparse(0.25, 8)") == "blocksparse(0.25,8,0,1,false)");
  CHECK(canon("blocksparse(1e999)") == "blocksparse(1e999,64,0,1,false)");
  CHECK(canon("blocksparse(1e-999)") == "blocksparse(0.0,64,0,1,false)");
  CHECK(canon("global(0, 1, +2)") == "global(0,1,2)");
  CHECK(canon("global(@3)") == "global(@3)");
  CHECK(canon("layout(@0, 32)") == "layout(@0,32,none)");
  CHECK(canon("neighborhood((64,64),13)") == "neighborhood((64,64),13,1,false,0)");
  CHECK(canon("natten((13,), (3,), causal=(true,))") == "neighborhood((13,),(3,),1,(true,),0)");
  CHECK(canon("longnet((2048,8192),(1,4))") == "longnet((2048,8192),(1,4),true)");
  CHECK(canon("window(-9223372036854775808, 9223372036854775807)") ==
        "window(-9223372036854775808,9223372036854775807)");
  CHECK(canon("window(1)\xc2\xa0|\xe3\x80\x80sink(2)") == "window(1,0)|sink(2)");  // Unicode spaces

  // every name in the table parses with its required arguments given
  CHECK(known_names().size() >= 19 && std::string(known_names()[0].name) == "dense");
  for (const NameSpec& s : known_names()) {
    std::string text = s.name;
    if (s.variadic == Variadic::Int) text += "(1)";
    if (s.variadic == Variadic::Pattern) text += "(causal)";
    std::string args;
    for (const Param& p : s.params) {
      if (p.has_default) continue;
      const char* v = p.kind == ParamKind::Ref ? "@0" : p.kind == ParamKind::Float ? "0.5" : "(4,4)";
      if (p.kind == ParamKind::Int || p.kind == ParamKind::OptInt) v = "4";
      args += (args.empty() ? "" : ",") + std::string(v);
    }
    if (!args.empty()) text += "(" + args + ")";
    const std::string c = canon(text);
    CHECK(!c.empty() && canon(c) == c);
  }

  // errors: position (characters) and message, as the Python parser had them
  CHECK(error_at("", 0, "empty pattern; known names: dense, causal, window"));
  CHECK(error_at("   ", 3, "empty pattern"));
  CHECK(error_at("windw(3,0)", 0, "unknown pattern 'windw' (did you mean 'window'?)"));
  CHECK(error_at("slidingwindw(3)", 0, "did you mean 'slidingwindow'?"));
  CHECK(error_at("foo", 0, "known names: dense, causal, window"));
  CHECK(error_at("window(1,,2)", 9, "expected a number, none, true, false or @i"));
  CHECK(error_at("window(1,0", 10, "expected ',' or ')' in the arguments of window(...), found the end"));
  CHECK(error_at("window(1,0))", 11, "expected '|', '&' or the end, found ')'"));
  CHECK(error_at("(causal", 7, "expected ')' to close the '(' at position 0"));
  CHECK(error_at("causal &", 8, "expected a pattern name or '('"));
  CHECK(error_at("| causal", 0, "expected a pattern name or '('"));
  CHECK(error_at("causal causal", 7, "expected '|', '&' or the end, found 'causal'"));
  CHECK(error_at("window(1,0) # comment", 12, "unexpected character '#'"));
  CHECK(error_at("caf\xc3\xa9(1)", 3, "unexpected character '\\xe9'"));
  CHECK(error_at("\xc2\xa0\xc2\xa0 $", 3, "unexpected character '$'"));  // positions in characters
  CHECK(error_at("sink(\xff)", 5, "unexpected character '\\xff'"));     // an invalid byte
  CHECK(error_at("window(x=1)", 7, "window() has no argument 'x' (its keywords: left, right)"));
  CHECK(error_at("window(left=1, LEFT=2)", 15, "argument 'LEFT' given twice"));
  CHECK(error_at("window(1, left=2)", 15, "window(): argument 'left' given twice"));
  CHECK(error_at("window(right=1, 2)", 16, "positional argument after a keyword"));
  CHECK(error_at("window(1,2,3)", 11, "window() takes at most 2 argument(s) (left, right), got 3"));
  CHECK(error_at("window()", 0, "window(left, right=0): missing left"));
  CHECK(error_at("fixed(causal=true)", 0, "fixed(block, summary, causal=True): missing block, summary"));
  CHECK(error_at("window(1.5)", 7, "window(): left: expected an integer or none, got 1.5"));
  CHECK(error_at("window(true)", 7, "expected an integer or none, got True"));
  CHECK(error_at("sink(@2)", 5, "sink(): n: expected an integer, got @2"));
  CHECK(error_at("dense(3)", 6, "at most 0 argument(s) (none)"));
  CHECK(error_at("window(causal)", 7, "expected a number"));
  CHECK(error_at("strided(4, causal=2)", 18, "strided(): causal: expected true or false, got 2"));
  CHECK(error_at("blocksparse(random=x)", 19, "expected a number"));
  CHECK(error_at("global()", 0, "global() needs at least one argument"));
  CHECK(error_at("global(a=1)", 7, "global() has no argument 'a' (its keywords: none)"));
  CHECK(error_at("global(1, 2.5)", 10, "global() position: expected an integer, got 2.5"));
  CHECK(error_at("global(@0, 1)", 7, "global() position: expected an integer, got @0"));
  CHECK(error_at("perhead(none)", 8, "unknown pattern 'none'"));
  CHECK(error_at("neighborhood((1,true),3)", 13, "expected an integer or a tuple of integers, got (1, True)"));
  CHECK(error_at("neighborhood((1;2),3)", 15, "expected ',' between the values of a tuple"));
  CHECK(error_at("neighborhood(((1)),3)", 14, "expected a number"));
  CHECK(error_at("window((1,2))", 7, "expected a number"));
  CHECK(error_at("window(9223372036854775808)", 7, "integer 9223372036854775808 is out of range"));
  CHECK(error_at("global(@99999999999999999999)", 7, "out of range"));
  CHECK(error_at("window(1e5)", 7, "got 100000.0"));
  CHECK(error_at("window(1.5e16)", 7, "got 1.5e+16"));
  CHECK(error_at("window(-.00001)", 7, "got -1e-05"));
  CHECK(error_at("window(0.000123)", 7, "got 0.000123"));
  CHECK(error_at("window(12.50)", 7, "got 12.5"));

  // limits: nesting depth (parentheses, perhead, always=) and length
  CHECK(error_at(std::string(100000, '(') + "causal", size_t(kMaxDepth), "nests deeper than"));
  std::string nested = "causal";
  for (int k = 0; k < kMaxDepth - 1; ++k) nested = "(" + nested + ")";
  CHECK(canon(nested) == "causal");
  std::string per = "causal";
  for (int k = 0; k < 1000; ++k) per = "perhead(" + per + ")";
  CHECK(error_at(per, size_t(8 * kMaxDepth), "nests deeper than"));
  std::string chain = "causal";
  for (int k = 0; k < 20000; ++k) chain += "|sink(1)&dense";  // long, but flat
  CHECK(canon(chain).size() > 20000);
  std::string many = "global(0";  // 400,000 arguments: linear work, not quadratic
  for (int k = 0; k < 400000; ++k) many += ",1";
  CHECK(canon(many + ")").size() == many.size() + 1);
  CHECK(error_at(many + ",x=1)", many.size() + 1, "global() has no argument 'x'"));
  CHECK(error_at(std::string(kMaxTextBytes + 1, ' '), 0, "bytes long"));

  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
