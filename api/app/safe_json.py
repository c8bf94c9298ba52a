"""The one loader for JSON that clients send: request bodies, JSONL upload lines, form fields.

Deep nesting never reaches a recursive walk of ours: the C parser stops at the interpreter's
recursion limit (a ``RecursionError``, turned into a 400), and an iterative walk then refuses
anything deeper than ``max_depth``. Values that cannot be stored and echoed back as JSON are
refused: ``NaN`` and ``Infinity``, numbers out of float range, and lone UTF-16 surrogates (not
encodable as UTF-8). Other control characters, NUL included, are ordinary text.
"""

from __future__ import annotations

import json
import math
from typing import Any


class BadJSON(ValueError):
    """Client JSON that is refused; ``status`` and ``code`` are what the API answers with."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.code = code


def _no_constants(name: str) -> Any:
    raise BadJSON(422, f"{name} is not a valid JSON number", "invalid_number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(422, f"the number {text[:32]} is out of range", "invalid_number")
    return value


def _too_deep(max_depth: int) -> BadJSON:
    return BadJSON(400, f"JSON nested deeper than {max_depth} levels is refused", "json_too_deep")


def check_value(value: Any, max_depth: int) -> None:
    """Walk parsed JSON without recursion: refuse nesting deeper than ``max_depth`` and strings
    (values or keys) that cannot be encoded as UTF-8."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise _too_deep(max_depth)
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | str))
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJSON(422, "text must be valid Unicode: lone UTF-16 surrogates are not allowed",
                              "invalid_unicode") from None


def loads(data: bytes | str, max_depth: int) -> Any:
    """Parse client JSON; raises :class:`BadJSON` with a message that says what is wrong and where."""
    try:
        value = json.loads(data, parse_constant=_no_constants, parse_float=_finite)
    except BadJSON:
        raise
    except RecursionError:
        raise _too_deep(max_depth) from None
    except json.JSONDecodeError as exc:
        raise BadJSON(422, f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                      "invalid_json") from None
    except UnicodeDecodeError:
        raise BadJSON(422, "not valid JSON: the text is not UTF-8", "invalid_json") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise BadJSON(422, f"not valid JSON: {exc}", "invalid_json") from None
    check_value(value, max_depth)
    return value
