"""The tools around patterns: the text syntax (spattn.pattern_syntax), `spattn show`
(spattn.viz) and `spattn bench` (spattn.bench), and the help texts of the command line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import spattn
import spattn.patterns as P
from spattn import cli
from spattn.pattern_syntax import KNOWN_NAMES, PatternSyntaxError, parse

try:
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:  # pragma: no cover
    HAVE_MPL = False


def _cls(name):
    c = getattr(P, name, None)
    if c is None:
        pytest.skip(f"spattn.{name} is not in this build yet")
    return c


def _heads(p) -> int:
    return max(1, int(p._core().heads()))


SIZES = [(64, 64), (40, 70), (70, 40), (1, 33)]


def _same_masks(text, expected):
    got = parse(text)
    h = _heads(expected)
    assert _heads(got) == h
    for nq, nk in SIZES:
        np.testing.assert_array_equal(got.mask(nq, nk, heads=h), expected.mask(nq, nk, heads=h), err_msg=f"{text} at {nq}x{nk}")


# --------------------------------------------------------------------------------------------
# pattern syntax: round trips against the constructed patterns
# --------------------------------------------------------------------------------------------

ROUND_TRIPS = [
    ("dense", lambda: P.Dense()),
    ("causal", lambda: P.Causal()),
    ("Causal()", lambda: P.Causal()),
    ("window(511,0)", lambda: P.SlidingWindow(511, 0)),
    ("window(None,4)", lambda: P.SlidingWindow(None, 4)),
    ("window(7)", lambda: P.SlidingWindow(7, 0)),
    (" window ( left = 3 , right = none ) ", lambda: P.SlidingWindow(3, None)),
    ("sliding_window(0, 5)", lambda: P.SlidingWindow(0, 5)),
    ("window(-2, 6)", lambda: P.SlidingWindow(-2, 6)),
    ("((window(5,5)))", lambda: P.SlidingWindow(5, 5)),
    ("dilated(8,0,4)", lambda: _cls("Dilated")(8, 0, 4)),
    ("dilated(left=2, right=1, dilation=3)", lambda: _cls("Dilated")(2, 1, 3)),
    ("strided(8)", lambda: _cls("Strided")(8)),
    ("strided(8,causal=false)", lambda: _cls("Strided")(8, causal=False)),
    ("fixed(16,2)", lambda: _cls("Fixed")(16, 2)),
    ("fixed(16, 2, causal=false)", lambda: _cls("Fixed")(16, 2, causal=False)),
    ("global(0,1,2)", lambda: _cls("Global")([0, 1, 2])),
    ("global(5)", lambda: _cls("Global")([5])),
    ("sink(4)", lambda: _cls("Sink")(4)),
    ("bigbird(8,3,2,3,seed=1)", lambda: _cls("BigBird")(8, 3, 2, 3, seed=1)),
    ("bigbird(8,1,1,2)", lambda: _cls("BigBird")(8, 1, 1, 2)),
    ("sink(4) | window(7,0)", lambda: _cls("Sink")(4) | P.SlidingWindow(7, 0)),
    ("causal & strided(4, causal=false)", lambda: P.Causal() & _cls("Strided")(4, causal=False)),
    ("window(9,9) & window(3,None)", lambda: P.SlidingWindow(9, 9) & P.SlidingWindow(3, None)),
    ("window(2,0) | window(0,2)", lambda: P.SlidingWindow(2, 0) | P.SlidingWindow(0, 2)),
    ("(sink(2) | global(5)) & causal", lambda: (_cls("Sink")(2) | _cls("Global")([5])) & P.Causal()),
    ("global(0,1) | window(15,0) | sink(2)", lambda: _cls("Global")([0, 1]) | P.SlidingWindow(15, 0) | _cls("Sink")(2)),
    ("perhead(causal; window(3,0))", lambda: _cls("PerHead")([P.Causal(), P.SlidingWindow(3, 0)])),
    ("perhead(dense, sink(1) | window(2,0), strided(3))",
     lambda: _cls("PerHead")([P.Dense(), _cls("Sink")(1) | P.SlidingWindow(2, 0), _cls("Strided")(3)])),
]


def _needs_operators():
    try:
        P.Causal() | P.Dense()
        P.Causal() & P.Dense()
    except TypeError:
        pytest.skip("pattern union/intersection is not in this build yet")


@pytest.mark.parametrize("text,build", ROUND_TRIPS, ids=[t for t, _ in ROUND_TRIPS])
def test_round_trip(text, build):
    if "|" in text or "&" in text:
        _needs_operators()
    _same_masks(text, build())


def test_precedence_and_binds_tighter_than_or():
    _needs_operators()
    text = "window(0,3) | window(6,6) & causal"
    _same_masks(text, P.SlidingWindow(0, 3) | (P.SlidingWindow(6, 6) & P.Causal()))
    got = parse(text).mask(32, 32)[0]
    wrong = ((P.SlidingWindow(0, 3) | P.SlidingWindow(6, 6)) & P.Causal()).mask(32, 32)[0]
    assert not np.array_equal(got, wrong)  # the test tells the two groupings apart


def test_names_are_case_insensitive():
    np.testing.assert_array_equal(parse("WINDOW(3, 0)").mask(20, 20), P.SlidingWindow(3, 0).mask(20, 20))
    np.testing.assert_array_equal(parse("Dense").mask(5, 5), P.Dense().mask(5, 5))


def test_blocksparse_random_layout():
    p = parse("blocksparse(random=0.25,block=8,seed=3,heads=2)", n=64, nk=96)
    assert isinstance(p, P.BlockSparse)
    assert p.layout.shape == (2, 8, 12) and p.block_size == (8, 8)
    assert 0.05 < p.layout.mean() < 0.5
    # the mask is the layout expanded, per head
    want = p.layout[:, np.arange(64) // 8][:, :, np.arange(96) // 8]
    np.testing.assert_array_equal(p.mask(64, 96, heads=2), want)
    # deterministic per seed; another seed draws another layout
    again = parse("blocksparse(random=0.25,block=8,seed=3,heads=2)", n=64, nk=96)
    np.testing.assert_array_equal(again.layout, p.layout)
    other = parse("blocksparse(0.25, 8, 4, 2)", n=64, nk=96)
    assert not np.array_equal(other.layout, p.layout)
    assert parse("blocksparse(random=1)", n=100).layout.all()
    assert not parse("blocksparse(random=0)", n=100).layout.any()


def test_blocksparse_causal_drops_future_blocks():
    p = parse("blocksparse(random=1, block=16, causal=true)", n=64)
    np.testing.assert_array_equal(p.layout[0], np.tril(np.ones((4, 4), bool)))
    # with more keys than queries the queries sit bottom right: more key blocks are past
    p = parse("blocksparse(random=1, block=16, causal=true)", n=32, nk=64)
    np.testing.assert_array_equal(p.layout[0], np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool))


def test_blocksparse_needs_the_size():
    with pytest.raises(ValueError, match=r"parse\(text, n=N\)"):
        parse("blocksparse(random=0.1)")
    with pytest.raises(ValueError, match="probability"):
        parse("blocksparse(random=1.5)", n=64)


# --------------------------------------------------------------------------------------------
# pattern syntax: errors
# --------------------------------------------------------------------------------------------

ERRORS = [
    # text, position, fragment of the message
    ("", 0, "empty pattern"),
    ("   ", 3, "empty pattern"),
    ("windw(3,0)", 0, "did you mean 'window'"),
    ("foo", 0, "known names: dense, causal, window"),
    ("window(1,,2)", 9, "expected a number"),
    ("window(1,0", 10, "expected ',' or ')'"),
    ("window(1,0))", 11, "expected '|', '&' or the end"),
    ("(causal", 7, "to close the '(' at position 0"),
    ("causal &", 8, "expected a pattern name or '('"),
    ("| causal", 0, "expected a pattern name or '('"),
    ("causal causal", 7, "expected '|', '&' or the end"),
    ("window(1,0) # comment", 12, "unexpected character '#'"),
    ("window(x=1)", 7, "has no argument 'x'"),
    ("window(left=1, left=2)", 15, "given twice"),
    ("window(right=1, 2)", 16, "positional argument after a keyword"),
    ("window(1,2,3)", 11, "at most 2 argument"),
    ("window()", 0, "missing left"),
    ("window(1.5)", 7, "expected an integer or none"),
    ("window(true)", 7, "expected an integer or none"),
    ("dense(3)", 6, "at most 0 argument"),
    ("window(causal)", 7, "expected a number"),
    ("window(__import__)", 7, "expected a number"),
    ("strided(4, causal=2)", 18, "expected true or false"),
    ("blocksparse(random=x)", 19, "expected a number"),
]


@pytest.mark.parametrize("text,pos,fragment", ERRORS, ids=[repr(e[0]) for e in ERRORS])
def test_syntax_errors(text, pos, fragment):
    with pytest.raises(ValueError) as info:
        parse(text, n=64)
    err = info.value
    assert isinstance(err, PatternSyntaxError)
    assert fragment in str(err), str(err)
    assert err.pos == pos, str(err)
    assert f"(at position {pos})" in str(err)
    assert text in str(err)


def test_bad_argument_values_become_value_errors_with_position():
    with pytest.raises(ValueError) as info:
        parse("dense & window(3, -9)")  # an empty window: SlidingWindow refuses it
    assert isinstance(info.value, PatternSyntaxError) and info.value.pos == 8
    assert "SlidingWindow" in str(info.value) and "empty" in str(info.value)
    with pytest.raises(TypeError):
        parse(42)


def test_unknown_name_lists_every_known_name():
    with pytest.raises(ValueError) as info:
        parse("nope")
    for name in KNOWN_NAMES:
        assert name in str(info.value)
    assert set(KNOWN_NAMES) >= {"dense", "causal", "window", "dilated", "strided", "fixed", "global",
                                "sink", "bigbird", "blocksparse", "perhead"}


def test_every_known_name_has_a_builder():
    # the names and their parameters are declared in C++ (syntax.inc); each one needs a class
    # that declares it (Pattern._syntax) or one of the parser's own builders
    from spattn import pattern_syntax as S

    missing = [n for n in KNOWN_NAMES if n not in S._CLASSES and n not in S._SPECIAL]
    assert not missing
    assert KNOWN_NAMES[:3] == ("dense", "causal", "window")
    for name in KNOWN_NAMES:
        assert name in S.SYNTAX_HELP


@pytest.mark.parametrize("text,pos,fragment", [
    ("(" * 100_000 + "causal", 100, "nests deeper than 100"),
    ("perhead(" * 5_000 + "causal", 800, "nests deeper than 100"),
    ("window(99999999999999999999)", 7, "out of range"),
    ("window(1)\u00a0|\u3000caf\u00e9", 15, "unexpected character '\\xe9'"),  # Unicode spaces
    ("sink(\ud800)", 5, "unexpected character '\\ud800'"),  # a lone surrogate
    ("\u00e9\u00e9", 0, "unexpected character"),
    (" " * (1 << 20) + "causal", 0, "bytes long"),
])
def test_limits_and_unicode(text, pos, fragment):
    with pytest.raises(PatternSyntaxError) as info:
        parse(text)
    assert info.value.pos == pos and fragment in info.value.reason, str(info.value)[-300:]


def test_long_flat_expressions_parse():
    _needs_operators()
    p = parse(" | ".join(f"sink({k})" for k in (1, 3, 2) * 700))  # 2,100 operands, left to right
    np.testing.assert_array_equal(p.mask(6, 6), _cls("Sink")(3).mask(6, 6))
    positions = list(range(0, 10000, 2))  # 5,000 arguments
    p = parse("global(" + ",".join(map(str, positions)) + ")")
    assert p.positions == tuple(positions)
    np.testing.assert_array_equal(p.mask(4, 10000), _cls("Global")(positions).mask(4, 10000))


def test_no_python_is_evaluated():
    for text in ["__import__('os')", "window(1+1)", "causal.__class__", "window(1)[0]", "lambda: 0"]:
        with pytest.raises(ValueError):
            parse(text)


# --------------------------------------------------------------------------------------------
# spattn show
# --------------------------------------------------------------------------------------------

needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib is not installed (pip install spattn[viz])")


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@needs_mpl
def test_show_writes_a_png(tmp_path, capsys):
    out = tmp_path / "w.png"
    assert cli.main(["show", "window(63,0)", "--n", "512", "-o", str(out)]) == 0
    assert _is_png(out) and out.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out


@needs_mpl
def test_show_large_n_uses_the_block_layout(tmp_path):
    out = tmp_path / "big.png"
    assert cli.main(["show", "window(1023,0)", "--n", "200000", "--block", "128", "-o", str(out)]) == 0
    assert _is_png(out)


@needs_mpl
def test_show_per_head_and_nk(tmp_path):
    out = tmp_path / "h.png"
    text = "blocksparse(random=0.3,block=32,seed=1,heads=4)"
    assert cli.main(["show", text, "--n", "256", "--nk", "384", "--head", "3", "-o", str(out)]) == 0
    assert _is_png(out)


@needs_mpl
def test_show_bad_pattern_and_head(tmp_path, capsys):
    assert cli.main(["show", "window(1,", "--n", "64", "-o", str(tmp_path / "x.png")]) == 1
    assert "position" in capsys.readouterr().err
    assert cli.main(["show", "causal", "--n", "64", "--head", "2", "-o", str(tmp_path / "x.png")]) == 1
    assert "head" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@needs_mpl
def test_viz_plot_from_python():
    import matplotlib.pyplot as plt

    import spattn.viz

    fig = spattn.viz.plot(P.SlidingWindow(31, 0), 300, nk=500, block=32)
    assert len(fig.axes) == 2
    assert "density" in fig._suptitle.get_text() and "kept pairs" in fig._suptitle.get_text()
    plt.close(fig)
    fig, ax = plt.subplots()
    assert spattn.viz.plot("causal", 100, ax=ax) is fig  # one Axes: the mask only
    plt.close(fig)
    # the pooled picture keeps every kept pair visible and nothing else
    fig = spattn.viz.plot("window(0,0)", 3000)
    img = fig.axes[0].images[0].get_array()
    side = img.shape[0]
    assert img.shape[:2] == (side, side) and 16 <= side <= spattn.viz.MAX_PIXELS
    diag = np.arange(side)
    assert (img[diag, diag] < 0.9).all()            # tinted on the diagonal
    off = img.copy()
    off[diag, diag] = 1.0
    assert (off > 0.999).all()                      # white elsewhere
    plt.close(fig)


def test_show_without_matplotlib(monkeypatch, tmp_path, capsys):
    """Simulate a missing matplotlib: the command says how to get it and exits with 2."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "x.png"
    assert cli.main(["show", "causal", "--n", "64", "-o", str(out)]) == 2
    assert "spattn show needs matplotlib: pip install spattn[viz]" in capsys.readouterr().err
    assert not out.exists()
    import spattn.viz

    with pytest.raises(ImportError, match=r"pip install spattn\[viz\]"):
        spattn.viz.plot("causal", 64)


# --------------------------------------------------------------------------------------------
# spattn bench
# --------------------------------------------------------------------------------------------


def test_bench_prints_a_table(capsys):
    rc = cli.main(["bench", "window(15,0)", "--n", "96", "--heads", "2", "--dim", "16", "--repeats", "1", "--backward",
                   "--no-flex"])
    assert rc == 0
    cap = capsys.readouterr()
    assert "implementation" in cap.out and "GFLOP/s" in cap.out and "vs dense" in cap.out
    assert "spattn dense" in cap.out and "fwd+bwd" in cap.out
    assert "[1/" in cap.err and "spattn fwd ..." in cap.err  # the progress lines


def test_bench_run_rows_and_ratios():
    from spattn import bench

    res = bench.run("window(7,0)", 64, heads=2, dim=8, repeats=1, progress=False, torch_sdpa=False)
    rows = {(r.impl, r.pass_): r for r in res.rows}
    assert set(rows) == {("spattn", "fwd"), ("spattn dense", "fwd")}
    assert rows["spattn", "fwd"].ms > 0 and rows["spattn", "fwd"].gflops > 0
    assert rows["spattn dense", "fwd"].vs_dense == pytest.approx(1.0)
    assert res.kept_pairs == int(spattn.SlidingWindow(7, 0).mask(64, 64, heads=2).sum())
    table = bench.format_table(res)
    assert "window(7,0)" in table and "N=64" in table


def test_bench_skips_dense_above_the_limit(capsys):
    assert cli.main(["bench", "causal", "--no-flex", "--n", "80", "--heads", "1", "--dim", "8", "--repeats", "1",
                     "--dense-max-n", "64", "-q"]) == 0
    cap = capsys.readouterr()
    assert "dense rows skipped" in cap.out and "spattn dense" not in cap.out
    assert cap.err == ""  # -q: no progress
    assert cli.main(["bench", "causal", "--no-flex", "--n", "32", "--heads", "1", "--dim", "8", "--repeats", "1",
                     "--no-dense", "-q"]) == 0
    assert "--no-dense" in capsys.readouterr().out


def test_bench_errors(capsys):
    assert cli.main(["bench", "window(", "--n", "32", "-q"]) == 1
    assert "position" in capsys.readouterr().err
    assert cli.main(["bench", "blocksparse(random=0.5,block=8,heads=3)", "--n", "32", "--heads", "2", "-q"]) == 1
    assert "heads" in capsys.readouterr().err


def test_bench_per_head_and_float16():
    pytest.importorskip("torch")
    from spattn import bench

    res = bench.run("blocksparse(random=0.5,block=16,heads=2)", 64, heads=2, dim=16, dtype="float16",
                    repeats=1, progress=False, dense=False)
    assert res.rows[0].ms > 0 and res.dtype == "float16"


# --------------------------------------------------------------------------------------------
# help texts and the existing commands
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "bench"])
def test_help_documents_the_syntax(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for fragment in ["PATTERN", "--n", "window(left, right=0)", "bigbird(", "perhead(", "blocksparse(",
                     "a | b", "a & b", "example"]:
        assert fragment in out, fragment
    if command == "show":
        assert "-o" in out and "--head" in out and "matplotlib" in out
    else:
        assert "--backward" in out and "--no-flex" in out and "--repeats" in out and "--dtype" in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("info", "demo", "show", "bench"):
        assert cmd in out


def test_info_still_works(capsys):
    assert cli.main(["info"]) == 0
    assert "version" in capsys.readouterr().out


def test_python_dash_m_show_help():
    r = subprocess.run([sys.executable, "-m", "spattn", "show", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "pattern syntax" in r.stdout


def test_bench_times_flex_attention_by_default(capsys):
    """FlexAttention is a default row where torch has it: it runs (forward) or says why not."""
    pytest.importorskip("torch")
    rc = cli.main(["bench", "window(15,0)", "--n", "64", "--heads", "1", "--dim", "16", "--repeats", "1", "-q"])
    assert rc == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("flex attention")]
    assert row, "no FlexAttention row"
    assert "ms" not in row[0] or "unavailable" in row[0] or float(row[0].split()[3]) > 0
