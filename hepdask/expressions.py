"""A small, safe expression language over branch names, evaluated on whole arrays.

Config values such as derived branches (``"sqrt(Jet_Px**2 + Jet_Py**2)"``), event cuts
(``"NMuon >= 2 and MET_pt > 20"``) and object selections are written as Python-like
expressions. They are parsed with :mod:`ast` and checked against a strict whitelist of
nodes, so user text is never handed to ``eval``: only numbers, names, arithmetic,
comparisons, ``and``/``or``/``not`` and the functions in :data:`FUNCTIONS` exist.
Evaluation applies numpy ufuncs and awkward reductions to whole columns, so one
expression works on flat (one value per event) and jagged (a list of objects per event)
data alike, and flat values broadcast against jagged ones.
"""

from __future__ import annotations

import abc
import ast
import difflib
import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np

from .errors import HepdaskError, first_line

__all__ = ["FUNCTIONS", "Expression", "Kind", "parse"]

_MAX_LENGTH = 2000
# Deep nesting would exhaust Python's recursion limit while building or evaluating the tree.
_MAX_DEPTH = 200

_CONSTANTS: dict[str, float] = {"pi": np.pi, "inf": np.inf, "nan": np.nan}


@dataclass(frozen=True)
class Kind:
    """What an expression yields per event.

    Knowing this before any data is read lets a config be rejected early, e.g. an event cut
    that is jagged, or an expression that combines jets and muons element by element.
    """

    jagged: bool  # a list of objects per event
    collection: str | None  # for jagged values: the collection (e.g. "Jet"); None for flat
    boolean: bool = False  # a truth value (comparison, and/or/not, any/all, isnan...)


# --------------------------------------------------------------------------------------------
# Array helpers: the same code must serve awkward arrays, numpy arrays and Python scalars.


def _dtype_kind(x: Any) -> str:
    """numpy's kind code ('b', 'i', 'u', 'f', ...) of the values, through lists and options."""
    if isinstance(x, ak.Array):
        t = x.type.content
        while hasattr(t, "content"):
            t = t.content
        primitive = getattr(t, "primitive", None)
        return np.dtype(primitive).kind if primitive else "O"
    return np.asarray(x).dtype.kind


def _is_boolean(x: Any) -> bool:
    return _dtype_kind(x) == "b"


def _as_numbers(x: Any) -> Any:
    """Booleans as 0/1 integers, so that ``True + True`` is 2 as in Python.

    numpy would otherwise treat ``+`` and ``*`` on booleans as logical or/and, refuse ``-``,
    and compute ``sqrt`` of a boolean in float16.
    """
    if not _is_boolean(x):
        return x
    if isinstance(x, ak.Array):
        return ak.values_astype(x, np.int64)
    if isinstance(x, np.ndarray):
        return x.astype(np.int64)
    return int(x)


def _numeric(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` applied to its arguments with booleans turned into numbers."""

    @functools.wraps(func)
    def apply(*args: Any) -> Any:
        return func(*(_as_numbers(a) for a in args))

    return apply


def _power(base: Any, exponent: Any) -> Any:
    """``base ** exponent``; integers in floating point, so 2**-1 is 0.5 as in Python.

    numpy refuses negative integer powers of integers; floats keep their precision.
    """
    if _dtype_kind(base) in "iu" and _dtype_kind(exponent) in "iu":
        return np.float_power(base, exponent)
    return np.power(base, exponent)


def _where(cond: Any, a: Any, b: Any) -> Any:
    """``np.where`` semantics, element by element also when flat values meet jagged ones.

    ``ak.where`` alone would pick a whole list or a number per event for a flat condition.
    """
    if any(isinstance(x, ak.Array) for x in (cond, a, b)):
        return ak.where(*ak.broadcast_arrays(cond, a, b))
    return np.where(cond, a, b)


def _deltaphi(a: Any, b: Any) -> Any:
    """``a - b`` wrapped to [-pi, pi), the azimuthal distance between two directions."""
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def _all_of(*args: Any) -> Any:
    return functools.reduce(np.logical_and, args)


def _any_of(*args: Any) -> Any:
    return functools.reduce(np.logical_or, args)


def _max(x: Any) -> Any:
    return ak.fill_none(ak.max(x, axis=1), np.nan)


def _min(x: Any) -> Any:
    return ak.fill_none(ak.min(x, axis=1), np.nan)


def _count(x: Any) -> Any:
    """Objects per event; for truth values the True ones, so ``count(Jet_pt > 30)`` counts."""
    return ak.count_nonzero(x, axis=1) if _is_boolean(x) else ak.num(x, axis=1)


# name -> (number of arguments, function, whether the result is a truth value)
_ELEMENTWISE: dict[str, tuple[int, Callable[..., Any], bool]] = {
    "abs": (1, _numeric(np.absolute), False),
    "sqrt": (1, _numeric(np.sqrt), False),
    "exp": (1, _numeric(np.exp), False),
    "expm1": (1, _numeric(np.expm1), False),
    "log": (1, _numeric(np.log), False),
    "log10": (1, _numeric(np.log10), False),
    "log2": (1, _numeric(np.log2), False),
    "log1p": (1, _numeric(np.log1p), False),
    "sin": (1, _numeric(np.sin), False),
    "cos": (1, _numeric(np.cos), False),
    "tan": (1, _numeric(np.tan), False),
    "arcsin": (1, _numeric(np.arcsin), False),
    "arccos": (1, _numeric(np.arccos), False),
    "arctan": (1, _numeric(np.arctan), False),
    "arctan2": (2, _numeric(np.arctan2), False),
    "sinh": (1, _numeric(np.sinh), False),
    "cosh": (1, _numeric(np.cosh), False),
    "tanh": (1, _numeric(np.tanh), False),
    "arcsinh": (1, _numeric(np.arcsinh), False),
    "arccosh": (1, _numeric(np.arccosh), False),
    "arctanh": (1, _numeric(np.arctanh), False),
    "hypot": (2, _numeric(np.hypot), False),
    "floor": (1, _numeric(np.floor), False),
    "ceil": (1, _numeric(np.ceil), False),
    "sign": (1, _numeric(np.sign), False),
    "isnan": (1, _numeric(np.isnan), True),
    "isfinite": (1, _numeric(np.isfinite), True),
    "minimum": (2, _numeric(np.minimum), False),
    "maximum": (2, _numeric(np.maximum), False),
    "where": (3, _where, False),  # a truth value when both branches are: see _Where
    "deltaphi": (2, _numeric(_deltaphi), False),
}

# Reductions over the objects (axis=1) of a jagged argument; empty events give the identity
# (sum 0, count 0, any False, all True) or NaN where there is none (max, min, mean).
_REDUCTIONS: dict[str, Callable[[Any], Any]] = {
    "sum": _numeric(functools.partial(ak.sum, axis=1)),
    "max": _numeric(_max),
    "min": _numeric(_min),
    "mean": _numeric(functools.partial(ak.mean, axis=1)),
    "count": _count,
    "any": functools.partial(ak.any, axis=1),
    "all": functools.partial(ak.all, axis=1),
}
_BOOLEAN_REDUCTIONS = frozenset({"any", "all"})
# With two arguments, max/min mean what a Python user expects: the larger/smaller of the two.
_TWO_ARGUMENT = {"max": "maximum", "min": "minimum"}

FUNCTIONS: tuple[str, ...] = (*_ELEMENTWISE, *_REDUCTIONS)

_ARITHMETIC: dict[type[ast.operator], Callable[..., Any]] = {
    ast.Add: _numeric(np.add),
    ast.Sub: _numeric(np.subtract),
    ast.Mult: _numeric(np.multiply),
    ast.Div: _numeric(np.true_divide),
    ast.FloorDiv: _numeric(np.floor_divide),
    ast.Mod: _numeric(np.mod),
    ast.Pow: _numeric(_power),
}
# & | ^ ~ are logical, as in uproot's expression language, so "(a > 1) & (b < 2)" works.
_LOGICAL: dict[type[ast.operator], Callable[..., Any]] = {
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
    ast.BitXor: np.logical_xor,
}
_UNARY: dict[type[ast.unaryop], tuple[Callable[..., Any], bool]] = {
    ast.USub: (_numeric(np.negative), False),
    ast.UAdd: (_numeric(np.positive), False),
    ast.Not: (np.logical_not, True),
    ast.Invert: (np.logical_not, True),
}
_COMPARISONS: dict[type[ast.cmpop], Callable[..., Any]] = {
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
}
_REJECTED_OPERATORS: dict[type[ast.AST], str] = {
    ast.MatMult: "operator '@' is not allowed",
    ast.LShift: "operator '<<' is not allowed",
    ast.RShift: "operator '>>' is not allowed",
    ast.Is: "'is' is not allowed; compare values with ==",
    ast.IsNot: "'is not' is not allowed; compare values with !=",
    ast.In: "'in' is not allowed; compare values with == and combine with or",
    ast.NotIn: "'not in' is not allowed; compare values with != and combine with and",
}
_REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access ('.') is not allowed",
    ast.Subscript: "indexing ('[...]') is not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.IfExp: "'a if cond else b' is not allowed; use where(cond, a, b)",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment (':=') is not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
}

# --------------------------------------------------------------------------------------------
# The evaluation tree.

_Span = tuple[int, int, int, int]  # line, column, end line, end column (lines from 1)


class _Problem(Exception):
    """A problem at a span of the expression; :class:`Expression` turns it into a message."""

    def __init__(self, problem: str, span: _Span | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.span = span


@dataclass(frozen=True, eq=False)
class _Node(abc.ABC):
    span: _Span
    source: str  # this node's text, to quote in messages

    @abc.abstractmethod
    def kind(self, kinds: Mapping[str, Kind]) -> Kind:
        """The static type of this node's value."""

    @abc.abstractmethod
    def run(self, values: Callable[[str], Any]) -> Any:
        """This node's value, computed on whole arrays."""


@dataclass(frozen=True, eq=False)
class _Constant(_Node):
    value: bool | int | float

    def kind(self, kinds: Mapping[str, Kind]) -> Kind:
        return Kind(jagged=False, collection=None, boolean=isinstance(self.value, bool))

    def run(self, values: Callable[[str], Any]) -> Any:
        return self.value


@dataclass(frozen=True, eq=False)
class _Name(_Node):
    name: str

    def kind(self, kinds: Mapping[str, Kind]) -> Kind:
        try:
            return kinds[self.name]
        except KeyError:
            raise _Problem(f"the type of '{self.name}' is not known", self.span) from None

    def run(self, values: Callable[[str], Any]) -> Any:
        return values(self.name)


@dataclass(frozen=True, eq=False)
class _Elementwise(_Node):
    func: Callable[..., Any]
    args: tuple[_Node, ...]
    boolean: bool

    def _boolean(self, kinds: Sequence[Kind]) -> bool:
        return self.boolean

    def kind(self, kinds: Mapping[str, Kind]) -> Kind:
        arg_kinds = [a.kind(kinds) for a in self.args]
        jagged = [(k, a) for k, a in zip(arg_kinds, self.args, strict=True) if k.jagged]
        for k, a in jagged[1:]:
            first = jagged[0][0].collection
            if k.collection != first:
                raise _Problem(
                    f"mixes objects of {first} and {k.collection} element by element; "
                    f"reduce one first, e.g. max({a.source})",
                    self.span,
                )
        collection = jagged[0][0].collection if jagged else None
        return Kind(jagged=bool(jagged), collection=collection, boolean=self._boolean(arg_kinds))

    def run(self, values: Callable[[str], Any]) -> Any:
        args = [a.run(values) for a in self.args]
        try:
            return self.func(*args)
        except ValueError as exc:  # awkward: lists of different lengths, e.g. Jet vs Muon
            reason = first_line(exc)
            raise _Problem(f"cannot be computed: {reason}", self.span) from exc


@dataclass(frozen=True, eq=False)
class _Where(_Elementwise):
    def _boolean(self, kinds: Sequence[Kind]) -> bool:
        return kinds[1].boolean and kinds[2].boolean


@dataclass(frozen=True, eq=False)
class _Reduction(_Node):
    name: str
    func: Callable[[Any], Any]
    arg: _Node

    def _flat(self) -> _Problem:
        return _Problem(
            f"{self.name}() reduces over the objects of a collection, "
            f"but {self.arg.source} is one value per event",
            self.arg.span,
        )

    def kind(self, kinds: Mapping[str, Kind]) -> Kind:
        if not self.arg.kind(kinds).jagged:
            raise self._flat()
        return Kind(jagged=False, collection=None, boolean=self.name in _BOOLEAN_REDUCTIONS)

    def run(self, values: Callable[[str], Any]) -> Any:
        x = self.arg.run(values)
        if not (isinstance(x, ak.Array) and x.ndim > 1):
            raise self._flat()
        return self.func(x)


# --------------------------------------------------------------------------------------------
# Parsing.


def _lines(source: str) -> list[str]:
    return source.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _span(node: ast.AST, source: str) -> _Span:
    """The node's position in characters (the AST counts UTF-8 bytes within a line)."""
    lines = _lines(source)

    def chars(line: int, col: int) -> int:
        return len(lines[line - 1].encode()[:col].decode(errors="ignore"))

    end_line = node.end_lineno or node.lineno
    end_col = node.end_col_offset if node.end_col_offset is not None else node.col_offset + 1
    return node.lineno, chars(node.lineno, node.col_offset), end_line, chars(end_line, end_col)


def _suggest(name: str, candidates: Collection[str]) -> list[str]:
    """Close matches, ignoring case, which is the most common slip in branch names."""
    by_lower = {c.lower(): c for c in candidates}
    if name.lower() in by_lower:
        return [by_lower[name.lower()]]
    return [by_lower[m] for m in difflib.get_close_matches(name.lower(), by_lower, n=3)]


def _did_you_mean(matches: Sequence[str]) -> str:
    if not matches:
        return ""
    quoted = [f"'{m}'" for m in matches]
    options = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f". Did you mean {options}?"


def _message(where: str, source: str, problem: str, span: _Span | None) -> str:
    """``Config key {where}: {problem}.`` and, with a span, the expression with carets under it."""
    head = f"Config key {where}: {problem}"
    if not problem.endswith((".", "?", "!")):
        head += "."
    if span is None:
        return head
    line, col, end_line, end_col = span
    lines = _lines(source)
    text = lines[min(line, len(lines)) - 1]
    if end_line != line:
        end_col = len(text)
    carets = "^" * max(1, end_col - col)
    return f"{head}\n    {text}\n    {' ' * col}{carets}"


def _syntax_error(where: str, source: str, exc: SyntaxError) -> HepdaskError:
    """The parser's complaint, with carets from its 1-based character offsets."""
    problem = exc.msg if exc.msg.startswith("invalid syntax") else f"invalid syntax: {exc.msg}"
    if exc.lineno is None or exc.offset is None:
        return HepdaskError(_message(where, source, problem, None))
    line = min(exc.lineno, len(_lines(source)))
    if exc.offset < 1:  # the parser ran into the end of the text, e.g. "MET_pt >"
        problem += " (the expression ends too early)"
        col = len(_lines(source)[line - 1])
        return HepdaskError(_message(where, source, problem, (line, col, line, col + 1)))
    end = exc.end_offset if exc.end_lineno == exc.lineno and exc.end_offset else 0
    return HepdaskError(
        _message(where, source, problem, (line, exc.offset - 1, line, max(end - 1, exc.offset)))
    )


class _Builder:
    """Checks an AST against the whitelist and turns it into evaluation nodes."""

    def __init__(self, source: str, known: frozenset[str]) -> None:
        self.source = source
        self.known = known
        self.names: set[str] = set()

    def problem(self, node: ast.AST, problem: str) -> _Problem:
        return _Problem(problem, _span(node, self.source))

    def build(self, node: ast.expr, depth: int = 0) -> _Node:
        if depth > _MAX_DEPTH:
            raise self.problem(node, f"the expression is nested more than {_MAX_DEPTH} deep")
        span, source = _span(node, self.source), ast.get_source_segment(self.source, node) or ""
        sub = functools.partial(self.build, depth=depth + 1)

        if isinstance(node, ast.Constant):
            return _Constant(span, source, self.constant(node))
        if isinstance(node, ast.Name):
            return self.name(node, span, source)
        if isinstance(node, ast.BinOp):
            op = type(node.op)
            if op in _ARITHMETIC:
                func, boolean = _ARITHMETIC[op], False
            elif op in _LOGICAL:
                func, boolean = _LOGICAL[op], True
            else:
                raise self.problem(node, _REJECTED_OPERATORS[op])
            return _Elementwise(span, source, func, (sub(node.left), sub(node.right)), boolean)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
                value = self.constant(node.operand)
                if not isinstance(value, bool):
                    # A Python number, not a numpy scalar, so that float32 * -1 stays float32.
                    return _Constant(span, source, -value)
            func, boolean = _UNARY[type(node.op)]
            return _Elementwise(span, source, func, (sub(node.operand),), boolean)
        if isinstance(node, ast.BoolOp):
            func = _all_of if isinstance(node.op, ast.And) else _any_of
            return _Elementwise(span, source, func, tuple(map(sub, node.values)), True)
        if isinstance(node, ast.Compare):
            return self.compare(node, span, source, sub)
        if isinstance(node, ast.Call):
            return self.call(node, span, source, sub)
        raise self.problem(
            node, _REJECTED_NODES.get(type(node), f"{type(node).__name__} is not allowed")
        )

    def constant(self, node: ast.Constant) -> bool | int | float:
        value = node.value
        if isinstance(value, str | bytes):
            raise self.problem(node, "strings are not allowed; only numbers and True/False are")
        if isinstance(value, complex):
            raise self.problem(node, "complex numbers are not allowed")
        if not isinstance(value, bool | int | float):
            raise self.problem(node, f"{value!r} is not allowed; only numbers and True/False are")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise self.problem(
                node, "integer too large for 64 bits; write it as a float, e.g. 1e20"
            )
        return value

    def name(self, node: ast.Name, span: _Span, source: str) -> _Node:
        name = node.id
        if name.startswith("__"):
            raise self.problem(node, f"names starting with '__' are not allowed: '{name}'")
        if name in self.known:
            self.names.add(name)
            return _Name(span, source, name)
        if name in _CONSTANTS:
            return _Constant(span, source, _CONSTANTS[name])
        if name in FUNCTIONS:
            raise self.problem(node, f"'{name}' is a function; call it, e.g. {name}(...)")
        suggestion = _did_you_mean(_suggest(name, self.known))
        if not suggestion:
            suggestion = "; it is not a known branch nor one of the constants pi, inf, nan"
        raise self.problem(node, f"unknown name '{name}'{suggestion}")

    def compare(
        self, node: ast.Compare, span: _Span, source: str, sub: Callable[[ast.expr], _Node]
    ) -> _Node:
        for op in node.ops:
            if type(op) not in _COMPARISONS:
                raise self.problem(node, _REJECTED_OPERATORS[type(op)])
        funcs = [_COMPARISONS[type(op)] for op in node.ops]

        def chain(*operands: Any) -> Any:
            # 1 <= n <= 16 means (1 <= n) & (n <= 16), each operand computed once.
            pairs = zip(funcs, operands, operands[1:], strict=False)
            return _all_of(*(f(a, b) for f, a, b in pairs))

        operands = (sub(node.left), *map(sub, node.comparators))
        return _Elementwise(span, source, chain, operands, True)

    def call(
        self, node: ast.Call, span: _Span, source: str, sub: Callable[[ast.expr], _Node]
    ) -> _Node:
        if not isinstance(node.func, ast.Name):
            raise self.problem(
                node.func, "only the allowed functions can be called, by name, e.g. sqrt(x)"
            )
        name = node.func.id
        if name.startswith("__"):
            raise self.problem(node.func, f"names starting with '__' are not allowed: '{name}'")
        if name not in FUNCTIONS:
            suggestion = _did_you_mean(_suggest(name, FUNCTIONS)) or "."
            raise self.problem(
                node.func,
                f"unknown function '{name}'{suggestion} Allowed functions: {', '.join(FUNCTIONS)}",
            )
        if node.keywords:
            raise self.problem(node.keywords[0], "keyword arguments are not allowed")
        args = tuple(map(sub, node.args))
        if name in _TWO_ARGUMENT:
            if len(args) == 2:
                name = _TWO_ARGUMENT[name]
            elif len(args) != 1:
                raise self.problem(
                    node,
                    f"{name}() takes 1 argument (over the objects of a collection) "
                    f"or 2 (the elementwise {_TWO_ARGUMENT[name]}), got {len(args)}",
                )
        if name in _REDUCTIONS:
            if len(args) != 1:
                raise self.problem(node, f"{name}() takes 1 argument, got {len(args)}")
            return _Reduction(span, source, name, _REDUCTIONS[name], args[0])
        arity, func, boolean = _ELEMENTWISE[name]
        if len(args) != arity:
            plural = "s" if arity > 1 else ""
            raise self.problem(node, f"{name}() takes {arity} argument{plural}, got {len(args)}")
        node_type = _Where if name == "where" else _Elementwise
        return node_type(span, source, func, args, boolean)


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression; parse with :func:`parse`."""

    text: str
    where: str  # the config key it came from, for messages, e.g. "derived.HT"
    names: frozenset[str]  # every branch/derived name it reads (not function names/constants)
    _root: _Node = field(repr=False, compare=False)
    _source: str = field(repr=False, compare=False)

    def _error(self, problem: _Problem) -> HepdaskError:
        return HepdaskError(_message(self.where, self._source, problem.problem, problem.span))

    def infer(self, kinds: Mapping[str, Kind]) -> Kind:
        """The static type of the result, given the :class:`Kind` of each name it reads.

        Raises
        ------
        HepdaskError
            If it combines two collections element by element, or reduces a flat value.
        """
        try:
            return self._root.kind(kinds)
        except _Problem as problem:
            raise self._error(problem) from None

    def evaluate(self, values: Callable[[str], Any]) -> Any:
        """The value on whole arrays; ``values(name)`` returns the array for a name.

        Flat and jagged inputs may be mixed: flat values broadcast into the lists. An
        expression of constants only gives a Python scalar, for the caller to broadcast.
        Floating-point warnings are silenced: ``log(0)`` is ``-inf`` and ``sqrt(-1)`` NaN.
        """
        with np.errstate(all="ignore"):
            try:
                result = self._root.run(values)
            except _Problem as problem:
                raise self._error(problem) from problem.__cause__
        if isinstance(result, np.generic | np.ndarray) and np.ndim(result) == 0:
            return result.item()
        return result


def parse(text: str, *, where: str, known: Collection[str]) -> Expression:
    """Parse and check ``text``, reading only names in ``known``.

    Nothing in ``text`` is executed: it is parsed with :func:`ast.parse` and every node is
    checked against a whitelist, so attribute access, indexing, calls of anything but the
    :data:`FUNCTIONS` and the like are rejected here, before any data is read.

    Raises
    ------
    HepdaskError
        For any problem, pointing at the offending part of the expression.
    """
    if not isinstance(text, str):
        raise HepdaskError(
            f"Config key {where}: expected an expression as a string, got {type(text).__name__}."
        )
    if len(text) > _MAX_LENGTH:
        raise HepdaskError(
            f"Config key {where}: the expression is {len(text)} characters long; "
            f"the limit is {_MAX_LENGTH}. Split it into several derived branches."
        )
    source = text.strip()  # leading blanks would be an IndentationError
    if not source:
        raise HepdaskError(f"Config key {where}: the expression is empty.")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise _syntax_error(where, source, exc) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        problem = f"cannot be parsed: {exc}"
        raise HepdaskError(_message(where, source, problem, None)) from None
    builder = _Builder(source, frozenset(known))
    try:
        root = builder.build(tree.body)
    except _Problem as problem:
        raise HepdaskError(_message(where, source, problem.problem, problem.span)) from None
    return Expression(text, where, frozenset(builder.names), root, source)
