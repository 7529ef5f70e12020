"""The expression language: values on flat and jagged arrays, static kinds, and rejections."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest

from hepdask.errors import HepdaskError
from hepdask.expressions import FUNCTIONS, Expression, Kind, parse

JET = Kind(jagged=True, collection="Jet")
MUON = Kind(jagged=True, collection="Muon")
FLAT = Kind(jagged=False, collection=None)

KINDS = {
    "Jet_pt": JET,
    "Jet_eta": JET,
    "Jet_phi": JET,
    "Jet_Px": JET,
    "Jet_Py": JET,
    "Jet_btag": Kind(jagged=True, collection="Jet", boolean=True),
    "Muon_pt": MUON,
    "MET_pt": FLAT,
    "MET_phi": FLAT,
    "NMuon": FLAT,
    "passTrigger": Kind(jagged=False, collection=None, boolean=True),
}


def data() -> dict[str, Any]:
    """Three events; the second has no jets and the third no muons."""
    return {
        "Jet_pt": ak.Array([[50.0, 20.0, 35.0], [], [31.0]]),
        "Jet_eta": ak.Array([[0.5, -3.0, 2.0], [], [-2.5]]),
        "Jet_phi": ak.Array([[3.0, -3.0, 0.5], [], [1.0]]),
        "Jet_Px": ak.Array([[3.0, -6.0, 0.0], [], [1.0]]),
        "Jet_Py": ak.Array([[4.0, 8.0, -2.0], [], [0.0]]),
        "Jet_btag": ak.Array([[True, False, True], [], [False]]),
        "Muon_pt": ak.Array([[10.0], [5.0, 7.0], []]),
        "MET_pt": ak.Array([10.0, 25.0, 40.0]),
        "MET_phi": np.array([-3.0, 0.0, 3.0]),  # numpy works as well as awkward
        "NMuon": ak.Array([1, 2, 0]),
        "passTrigger": np.array([True, False, True]),
    }


def ev(text: str, values: dict[str, Any] | None = None) -> Any:
    arrays = data() if values is None else values
    return parse(text, where="derived.x", known=arrays).evaluate(arrays.__getitem__)


def infer(text: str) -> Kind:
    return parse(text, where="derived.x", known=KINDS).infer(KINDS)


def same(actual: Any, expected: Any) -> None:
    """Equal as lists, NaN equal to NaN, floats to rounding."""
    a, e = ak.to_list(actual), ak.to_list(expected)
    assert len(a) == len(e), (a, e)
    for x, y in zip(a, e, strict=True):
        if isinstance(y, list):
            same(x, y)
        elif isinstance(y, float) and math.isnan(y):
            assert math.isnan(x), (a, e)
        else:
            assert x == pytest.approx(y), (a, e)


def message(text: str, known: Any = KINDS, where: str = "derived.x") -> str:
    with pytest.raises(HepdaskError) as info:
        parse(text, where=where, known=known)
    return str(info.value)


def caret_columns(msg: str) -> tuple[int, int]:
    """The expression's columns under the carets of a three-line message."""
    _, _, carets = msg.split("\n")
    assert carets.startswith("    ")
    start = len(carets) - len(carets.lstrip(" ")) - 4
    return start, start + carets.count("^")


# --------------------------------------------------------------------------------------------
# Values


def test_arithmetic_flat_and_jagged() -> None:
    d = data()
    same(ev("MET_pt * 2 + 1"), np.asarray(d["MET_pt"]) * 2 + 1)
    same(ev("-Jet_pt / 10 - 1"), -d["Jet_pt"] / 10 - 1)
    same(ev("NMuon // 2 + NMuon % 2"), [1, 1, 0])
    same(ev("Jet_pt ** 0.5"), np.sqrt(d["Jet_pt"]))
    same(ev("NMuon ** -1"), [1.0, 0.5, math.inf])  # as in Python, not numpy's integer power


def test_jet_pt_from_components() -> None:
    d = data()
    same(ev("sqrt(Jet_Px**2 + Jet_Py**2)"), np.hypot(d["Jet_Px"], d["Jet_Py"]))
    same(ev("hypot(Jet_Px, Jet_Py)"), [[5.0, 10.0, 2.0], [], [1.0]])


def test_elementwise_functions() -> None:
    d = data()
    same(ev("abs(Jet_eta)"), [[0.5, 3.0, 2.0], [], [2.5]])
    same(ev("log(MET_pt)"), np.log(np.asarray(d["MET_pt"])))
    same(ev("exp(-Jet_eta)"), np.exp(-d["Jet_eta"]))
    same(ev("arctan2(Jet_Py, Jet_Px)"), np.arctan2(d["Jet_Py"], d["Jet_Px"]))
    same(ev("floor(Jet_eta) + ceil(Jet_eta)"), np.floor(d["Jet_eta"]) + np.ceil(d["Jet_eta"]))
    same(ev("sign(Jet_Py)"), [[1.0, 1.0, -1.0], [], [0.0]])
    same(ev("minimum(Jet_pt, 32)"), [[32.0, 20.0, 32.0], [], [31.0]])
    same(ev("maximum(MET_pt, 20)"), [20.0, 25.0, 40.0])
    same(ev("isnan(log(Jet_eta))"), [[False, True, False], [], [True]])
    same(ev("isfinite(log(Jet_Px))"), [[True, False, False], [], [True]])


def test_floating_point_problems_give_inf_and_nan_without_warnings() -> None:
    with np.errstate(all="raise"):  # would raise if the expression did not silence them
        same(ev("log(MET_pt - MET_pt)"), [-math.inf] * 3)
        same(ev("sqrt(-MET_pt)"), [math.nan] * 3)
        same(ev("MET_pt / 0"), [math.inf] * 3)


def test_reductions() -> None:
    same(ev("sum(Jet_pt)"), [105.0, 0.0, 31.0])
    same(ev("max(Jet_pt)"), [50.0, math.nan, 31.0])
    same(ev("min(Jet_pt)"), [20.0, math.nan, 31.0])
    same(ev("mean(Jet_pt)"), [35.0, math.nan, 31.0])
    same(ev("max(Muon_pt)"), [10.0, 7.0, math.nan])


def test_count_of_numbers_and_of_booleans() -> None:
    same(ev("count(Jet_pt)"), [3, 0, 1])
    same(ev("count(Jet_pt > 30)"), [2, 0, 1])
    same(ev("count(Jet_btag)"), [2, 0, 0])
    same(ev("sum(Jet_pt > 30)"), [2, 0, 1])  # True counts as 1, as in Python


def test_any_and_all() -> None:
    same(ev("any(Jet_pt > 40)"), [True, False, False])
    same(ev("all(Jet_pt > 30)"), [False, True, True])  # all of nothing is True
    same(ev("any(abs(Jet_eta) > 2.4) or NMuon == 0"), [True, False, True])


def test_comparisons_and_chains() -> None:
    same(ev("NMuon >= 1"), [True, True, False])
    same(ev("NMuon != 1"), [False, True, True])
    same(ev("1 <= NMuon <= 1"), [True, False, False])
    same(ev("0 < NMuon < 3 > 2"), [True, True, False])
    same(ev("-2.4 < Jet_eta < 2.4"), [[True, False, True], [], [False]])


def test_logical_operators() -> None:
    same(ev("NMuon >= 1 and MET_pt > 20"), [False, True, False])
    same(ev("NMuon >= 2 or MET_pt > 30 or passTrigger"), [True, True, True])
    same(ev("not passTrigger"), [False, True, False])
    same(ev("not NMuon"), [False, False, True])
    same(ev("(NMuon >= 1) & (MET_pt > 20)"), [False, True, False])
    same(ev("(NMuon >= 2) | ~passTrigger"), [False, True, False])
    same(ev("passTrigger ^ (NMuon > 0)"), [False, True, True])
    same(ev("Jet_pt > 30 and abs(Jet_eta) < 2.4"), [[True, False, True], [], [False]])


def test_booleans_in_arithmetic_count_as_numbers() -> None:
    same(ev("(NMuon > 0) + (MET_pt > 20) + passTrigger"), [2, 2, 2])
    same(ev("-passTrigger"), [-1, 0, -1])


def test_flat_broadcasts_against_jagged() -> None:
    same(ev("Jet_pt > MET_pt"), [[True, True, True], [], [False]])
    same(ev("Jet_pt - MET_pt"), [[40.0, 10.0, 25.0], [], [-9.0]])
    same(ev("deltaphi(Jet_phi, MET_phi)"), ev("deltaphi(Jet_phi, MET_phi + 2 * pi)"))


def test_where() -> None:
    same(ev("where(Jet_pt > 30, Jet_pt, -1)"), [[50.0, -1.0, 35.0], [], [31.0]])
    same(ev("where(passTrigger, MET_pt, 0)"), [10.0, 0.0, 40.0])
    same(ev("where(MET_pt > 20, Jet_pt, MET_pt)"), [[10.0, 10.0, 10.0], [], [31.0]])
    d = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 0.0])}
    same(ev("where(a > b, a, b)", d), [3.0, 2.0])


def test_where_with_a_numpy_condition_and_jagged_branches() -> None:
    same(ev("where(passTrigger, Jet_pt, 0)"), [[50.0, 20.0, 35.0], [], [31.0]])
    values = {"c": np.array([True, False]), "j": ak.Array([[1.0, 2.0], [3.0]])}
    same(ev("where(c, j, -j)", values), [[1.0, 2.0], [-3.0]])


def test_float32_stays_float32() -> None:
    values = {"x": ak.Array(np.array([1.5, 2.5], dtype=np.float32))}
    for text in ("x * -2 + 1", "x ** 2", "sqrt(x) / 2", "abs(-x)"):
        assert ak.to_numpy(ev(text, values)).dtype == np.float32, text


def test_deep_but_allowed_nesting_evaluates() -> None:
    values = {"x": ak.Array([[1.0], []])}
    same(ev("x + " * 150 + "x", values), [[151.0], []])
    same(ev("abs(" * 150 + "-x" + ")" * 150, values), [[1.0], []])


def test_deltaphi_wraps_to_minus_pi_pi() -> None:
    d = data()
    result = ev("deltaphi(Jet_phi, MET_phi)")
    flat = np.asarray(ak.flatten(result))
    assert np.all((flat >= -np.pi) & (flat < np.pi))
    raw = d["Jet_phi"] - np.asarray(d["MET_phi"])
    same(np.cos(result), np.cos(raw))  # the same angle, up to multiples of 2 pi
    same(np.sin(result), np.sin(raw))
    assert ev("deltaphi(3, -3)") == pytest.approx(6 - 2 * np.pi)
    assert ev("deltaphi(pi, 0)") == pytest.approx(-np.pi)


def test_two_argument_max_and_min_are_elementwise() -> None:
    same(ev("max(MET_pt, 20)"), [20.0, 25.0, 40.0])
    same(ev("min(Jet_pt, MET_pt)"), [[10.0, 10.0, 10.0], [], [31.0]])
    # Like np.maximum, a NaN (an event without objects) wins.
    same(ev("max(max(Jet_pt), max(Muon_pt))"), [50.0, math.nan, math.nan])


def test_numpy_and_awkward_inputs_agree() -> None:
    values = np.array([1.0, 4.0, 9.0])
    same(ev("sqrt(x) + 1", {"x": values}), ev("sqrt(x) + 1", {"x": ak.Array(values)}))
    assert isinstance(ev("sqrt(x)", {"x": values}), np.ndarray)


def test_constants() -> None:
    assert ev("2 * pi") == pytest.approx(2 * math.pi)
    assert ev("2 ** 3") == 8
    assert ev("where(1 > 0, 2, 3)") == 2
    assert ev("True and not False") is True
    assert math.isnan(ev("nan")) and ev("-inf") == -math.inf
    # A branch of that name takes precedence over the constant.
    same(ev("pi + 1", {"pi": np.array([1.0, 2.0])}), [2.0, 3.0])


# --------------------------------------------------------------------------------------------
# Static kinds


def test_infer_kinds() -> None:
    assert infer("MET_pt * 2") == FLAT
    assert infer("1 + 2") == FLAT
    assert infer("pi") == FLAT
    assert infer("True") == Kind(jagged=False, collection=None, boolean=True)
    assert infer("sqrt(Jet_Px**2 + Jet_Py**2)") == JET
    assert infer("Jet_pt > MET_pt") == Kind(jagged=True, collection="Jet", boolean=True)
    assert infer("Jet_pt > 30 and abs(Jet_eta) < 2.4").boolean
    assert infer("sum(Jet_pt)") == FLAT
    assert infer("count(Muon_pt > 5)") == FLAT
    assert infer("any(Jet_btag)") == Kind(jagged=False, collection=None, boolean=True)
    assert infer("all(Jet_pt > 20) & passTrigger").boolean
    assert infer("max(Jet_pt, MET_pt)") == JET
    assert infer("max(Jet_pt) > max(Muon_pt)") == Kind(False, None, boolean=True)
    assert infer("1 <= NMuon <= 2").boolean
    assert infer("isnan(MET_pt)").boolean
    assert not infer("abs(MET_pt)").boolean
    assert not infer("passTrigger + 1").boolean
    assert infer("~passTrigger | (NMuon > 1)").boolean
    assert infer("where(MET_pt > 10, Jet_btag, False)") == Kind(True, "Jet", boolean=True)
    assert infer("where(MET_pt > 10, Jet_pt, 0)") == JET


def test_infer_rejects_mixed_collections() -> None:
    with pytest.raises(HepdaskError) as info:
        infer("Jet_pt > Muon_pt")
    msg = str(info.value)
    head = msg.splitlines()[0]
    assert head == (
        "Config key derived.x: mixes objects of Jet and Muon element by element; "
        "reduce one first, e.g. max(Muon_pt)."
    )
    assert caret_columns(msg) == (0, len("Jet_pt > Muon_pt"))
    with pytest.raises(HepdaskError, match="mixes objects of Jet and Muon"):
        infer("sum(Jet_pt * 0 + deltaphi(Jet_phi, Muon_pt))")
    with pytest.raises(HepdaskError, match="mixes objects"):
        infer("Jet_pt < Muon_pt < 3")


def test_infer_rejects_reducing_a_flat_value() -> None:
    with pytest.raises(HepdaskError) as info:
        infer("sum(MET_pt)")
    msg = str(info.value)
    assert msg.splitlines()[0] == (
        "Config key derived.x: sum() reduces over the objects of a collection, "
        "but MET_pt is one value per event."
    )
    assert caret_columns(msg) == (4, 10)
    with pytest.raises(HepdaskError, match=r"max\(\) reduces"):
        infer("max(max(Jet_pt))")


def test_infer_needs_the_kind_of_each_name() -> None:
    expr = parse("MET_pt + 1", where="cuts.0", known={"MET_pt"})
    with pytest.raises(HepdaskError, match="'MET_pt' is not known"):
        expr.infer({})


def test_evaluate_rejects_what_infer_would() -> None:
    with pytest.raises(HepdaskError, match="one value per event"):
        ev("sum(MET_pt)")
    with pytest.raises(HepdaskError, match="cannot be computed"):
        ev("Jet_pt + Muon_pt")


# --------------------------------------------------------------------------------------------
# Parsing


def test_parse_result() -> None:
    expr = parse("  sum(Jet_pt) > pi * MET_pt  ", where="cuts.0", known=KINDS)
    assert isinstance(expr, Expression)
    assert expr.where == "cuts.0"
    assert expr.text == "  sum(Jet_pt) > pi * MET_pt  "
    assert expr.names == frozenset({"Jet_pt", "MET_pt"})
    assert parse("1 + 2", where="x", known=()).names == frozenset()
    assert "max" in FUNCTIONS and "deltaphi" in FUNCTIONS and "where" in FUNCTIONS


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("__import__('os')", "'__' are not allowed"),
        ("().__class__.__bases__", "attribute access"),
        ("Jet_pt.__class__", "attribute access"),
        ("MET_pt.real", "attribute access"),
        ("open('x')", "unknown function 'open'"),
        ("eval('1')", "unknown function 'eval'"),
        ("[x for x in y]", "comprehensions"),
        ("sum(x for x in Jet_pt)", "comprehensions"),
        ("lambda: 1", "lambda"),
        ("a[0]", "indexing"),
        ("Jet_pt[0]", "indexing"),
        ("f(x=1)", "unknown function 'f'"),
        ("abs(x=1)", "keyword arguments"),
        ("abs(**MET_pt)", "keyword arguments"),
        ("abs(*Jet_pt)", "unpacking"),
        ("'text'", "strings are not allowed"),
        ("b'text'", "strings are not allowed"),
        ("f'{MET_pt}'", "f-strings"),
        ("x if y else z", r"use where\(cond, a, b\)"),
        ("(MET_pt := 1)", "assignment"),
        ("[MET_pt]", "lists"),
        ("(MET_pt, 1)", "tuples"),
        ("{1: 2}", "dicts"),
        ("None", "None is not allowed"),
        ("...", "Ellipsis is not allowed"),
        ("1j", "complex"),
        ("MET_pt is None", "'is' is not allowed"),
        ("MET_pt in (1, 2)", "'in' is not allowed"),
        ("MET_pt @ 2", "'@'"),
        ("NMuon << 2", "'<<'"),
        ("__builtins__", "'__' are not allowed"),
        ("sqrt", "'sqrt' is a function"),
        ("sqrt(Jet_pt)(1)", "only the allowed functions can be called"),
        ("sqrt(1, 2)", r"sqrt\(\) takes 1 argument, got 2"),
        ("where(MET_pt > 1, 1)", r"where\(\) takes 3 arguments, got 2"),
        ("max(Jet_pt, MET_pt, 1)", r"max\(\) takes 1 argument .* or 2 .*, got 3"),
        ("sum()", r"sum\(\) takes 1 argument, got 0"),
        ("count(Jet_pt, 30)", r"count\(\) takes 1 argument, got 2"),
        ("100000000000000000000000", "integer too large"),
        ("", "the expression is empty"),
        ("   \n ", "the expression is empty"),
        ("MET_pt + " * 300 + "1", "2000"),
        ("-" * 500 + "MET_pt", "nested more than"),
    ],
)
def test_rejected_at_parse_time(text: str, problem: str) -> None:
    msg = message(text)
    assert msg.startswith("Config key derived.x: ")
    assert re.search(problem, msg), msg


def test_non_string_is_rejected() -> None:
    with pytest.raises(HepdaskError, match="expected an expression as a string, got int"):
        parse(3, where="derived.x", known=KINDS)  # type: ignore[arg-type]


def test_nothing_is_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "FILE"
    attempts = [
        "__import__('os').system('touch FILE')",
        "open('FILE', 'w')",
        "().__class__.__base__.__subclasses__()",
        "(lambda: __import__('os').system('touch FILE'))()",
        "[__import__('os').system('touch FILE') for _ in (1,)]",
        "sum(Jet_pt).__globals__",
    ]
    for text in attempts:
        with pytest.raises(HepdaskError):
            parse(text, where="derived.x", known=KINDS)
    assert not target.exists()


def test_unknown_name_suggests_and_points() -> None:
    msg = message("sum(Jet_Pt)", known={"Jet_pt", "Muon_pt", "MET_pt"}, where="derived.HT")
    assert msg == (
        "Config key derived.HT: unknown name 'Jet_Pt'. Did you mean 'Jet_pt'?\n"
        "    sum(Jet_Pt)\n"
        "        ^^^^^^"
    )
    msg = message("MET_pt > 20 and nmuon >= 2", known={"MET_pt", "NMuon"})
    assert "unknown name 'nmuon'. Did you mean 'NMuon'?" in msg
    assert caret_columns(msg) == (16, 21)
    msg = message("zzz + 1", known={"MET_pt"})
    assert "unknown name 'zzz'" in msg and "pi, inf, nan" in msg
    assert caret_columns(msg) == (0, 3)


def test_unknown_function_suggests_and_lists() -> None:
    msg = message("sqr(MET_pt) + 1")
    head = msg.splitlines()[0]
    assert "unknown function 'sqr'. Did you mean 'sqrt'?" in head
    assert "Allowed functions: abs, sqrt" in head and "deltaphi" in head
    assert caret_columns(msg) == (0, 3)


def test_carets_under_the_offending_node() -> None:
    text = "MET_pt > 1 and Jet_pt.__class__"
    assert caret_columns(message(text)) == (15, len(text))
    text = "abs(MET_pt) + x if NMuon else 1"
    assert caret_columns(message(text)) == (0, len(text))
    text = "sqrt(MET_pt, 2) + 1"
    assert caret_columns(message(text)) == (0, 15)
    # Non-ASCII text before the node: columns count characters, not UTF-8 bytes.
    msg = message("μ + Jet_Pt", known={"μ", "Jet_pt"})
    assert caret_columns(msg) == (4, 10)


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("MET_pt > 20 && NMuon", (13, 14)),  # Python points at the second '&'
        ("sum(Jet_pt", (3, 4)),  # the '(' that is never closed
        ("MET_pt MET_pt", (7, 13)),
        ("MET_pt >", (8, 9)),  # just past the end
        ("1 +* 2", (3, 4)),
        ("sqrt(MET_pt))", (12, 13)),
    ],
)
def test_syntax_errors_point_at_the_offset(text: str, columns: tuple[int, int]) -> None:
    msg = message(text)
    lines = msg.split("\n")
    assert len(lines) == 3
    assert "invalid syntax" in lines[0]
    assert lines[1] == f"    {text}"
    start, end = caret_columns(msg)
    assert start == columns[0]
    assert start < end <= columns[1]  # Python versions differ in how far the token reaches


def test_leading_blanks_are_not_a_syntax_error() -> None:
    msg = message("   sum(Jet_Pt)", known={"Jet_pt"})
    assert msg.splitlines()[1] == "    sum(Jet_Pt)"
    assert caret_columns(msg) == (4, 10)
