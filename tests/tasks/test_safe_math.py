"""The AST evaluator: admits numbers, + - * /, unary +/- and parentheses; refuses everything else, fast."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from esft.tasks.safe_math import MAX_CHARS, parse_number, safe_eval


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2", 3.0),
        ("(1 + 2) / 3", 1.0),
        ("((44 + 19) + 35)", 98.0),
        ("((92 - 48) + 54)", 98.0),
        ("7 * 6 - 4 / 2", 40.0),
        ("-(-3)", 3.0),
        ("+4", 4.0),
        ("1.5 * 2", 3.0),
        ("(((((1)))))", 1.0),
        ("1" + "+1" * 30, 31.0),
    ],
)
def test_admitted_arithmetic(expression: str, value: float) -> None:
    assert safe_eval(expression) == pytest.approx(value)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('touch pwned')",
        "open('pwned', 'w')",
        "2 ** 10",
        "9**9**9**9",
        "7 // 2",
        "7 % 2",
        "1 < 2",
        "True",
        "1e5",
        "0x10",
        "1_000",
        "(1, 2)",
        "[1]",
        "'1'",
        "1 2",
        "05",
        "",
        "   ",
        "x",
    ],
)
def test_refused_syntax(expression: str) -> None:
    assert safe_eval(expression) is None


def test_division_by_zero_and_overflow_give_none() -> None:
    assert safe_eval("1 / 0") is None
    assert safe_eval("1 / (2 - 2)") is None
    assert safe_eval("9" * 400) is None  # 1e400 does not fit a float
    assert safe_eval(" * ".join(["9" * 300] * 3)) is None  # inf


@pytest.mark.parametrize(
    "expression",
    [
        "(" * 100_000 + "1" + ")" * 100_000,  # nesting far beyond the parser's limit
        "(" * 300 + "1" + ")" * 300,
        "-" * 900 + "1",  # deep unary chain, under the length bound
        "1+" * 400 + "1",  # deep binary chain
        "9" * 10_000_000,  # 10 MB
        "1+" * 5_000_000 + "1",
    ],
)
def test_hostile_input_is_refused_quickly(expression: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert safe_eval(expression) is None
    assert time.perf_counter() - start < 1.0
    assert not (tmp_path / "pwned").exists()


def test_import_payload_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for payload in ("__import__('os').system('touch pwned')", "exec(\"open('pwned','w')\")",
                    "(lambda: __import__('os').system('touch pwned'))()"):
        assert safe_eval(payload, max_chars=10_000) is None
    assert not os.path.exists("pwned")


def test_bounds_are_enforced() -> None:
    long_sum = "+".join(["1"] * 600)  # 1199 characters
    assert len(long_sum) > MAX_CHARS and safe_eval(long_sum) is None
    assert safe_eval("1+1+1", max_chars=4) is None
    assert safe_eval("1+1+1+1", max_depth=2) is None
    assert safe_eval("1+1+1+1", max_depth=3) == 4.0


@pytest.mark.parametrize(
    ("text", "value"),
    [("18", 18.0), ("1,234", 1234.0), ("$18", 18.0), ("-3.5", -3.5), ("18.", 18.0), ("-$5", -5.0),
     ("inf", None), ("nan", None), ("1e9", None), ("1_0", None), (".", None), ("9" * 41, None), ("", None)],
)
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value
