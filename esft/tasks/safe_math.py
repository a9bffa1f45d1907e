"""A tiny arithmetic evaluator for model-written expressions (Countdown answers, numeric gold answers).

Why not `eval`: the reference Countdown reward (TinyZero / es-awd) filters the answer with a character regex and
then calls `eval(answer, {"__builtins__": None}, {})`. The regex admits `*`, so `9**9**9**9` passes it and
hangs the reward, and any future loosening of the regex would hand model output to the interpreter. Here the
text is parsed with `ast.parse` (it is never executed) and walked by a whitelist: number literals, binary
`+ - * /`, unary `+ -` and parentheses. Everything else -- names, calls, attributes, `**`, `//`, `%`,
comparisons, strings -- is refused before or during the walk.

Bounds keep hostile input cheap: the text is refused above `max_chars` before parsing (the parser's own work is
then tiny), and the walk is refused beyond `max_depth` nested operations. Arithmetic is in floats, as in the
reference (`/` is true division); overflow, inf/nan and division by zero give `None`, never an exception.
"""

from __future__ import annotations

import ast
import math
import operator
import re

#: the only characters an expression may contain (checked before parsing)
ALLOWED_CHARS = frozenset("0123456789.+-*/() \t\n")
MAX_CHARS = 1000
MAX_DEPTH = 64

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


class _Refused(Exception):
    """Internal: the expression is outside the admitted grammar or bounds."""


def safe_eval(expression: str, *, max_chars: int = MAX_CHARS, max_depth: int = MAX_DEPTH) -> float | None:
    """Value of an arithmetic expression, or None if it is malformed, disallowed, too big or undefined."""
    if not isinstance(expression, str) or len(expression) > max_chars:
        return None
    text = expression.strip()
    if not text or not set(text) <= ALLOWED_CHARS or "**" in text or "//" in text:
        return None
    try:
        tree = ast.parse(text, mode="eval")
        value = _evaluate(tree.body, max_depth)
    except (_Refused, SyntaxError, ValueError, RecursionError, MemoryError, OverflowError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _evaluate(node: ast.AST, depth_left: int) -> float:
    """Recursive whitelist walk; `depth_left` bounds the nesting (and so the Python recursion)."""
    if depth_left < 0:
        raise _Refused("too deeply nested")
    if isinstance(node, ast.Constant):
        return _number(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _evaluate(node.left, depth_left - 1)
        right = _evaluate(node.right, depth_left - 1)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, depth_left - 1))
    raise _Refused(f"{type(node).__name__} is not admitted")


def _number(value: object) -> float:
    """A literal as a float; bools, complex numbers and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused("only real number literals are admitted")
    return float(value)  # OverflowError for huge ints is caught by the caller


def parse_number(text: str, *, max_chars: int = 40) -> float | None:
    """A plain decimal number as written by a model ("1,234", "$18", "-3.5"), or None.

    Thousands separators and dollar signs are dropped; anything longer than `max_chars` is refused so
    that a hostile run of digits cannot build a huge integer.
    """
    cleaned = text.strip().replace(",", "").replace("$", "").strip()
    if len(cleaned) > max_chars or not _PLAIN_NUMBER.fullmatch(cleaned):
        return None  # also refuses what float() would take but a model answer should not: inf, nan, 1e9, 1_0
    return float(cleaned)
