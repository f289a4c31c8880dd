"""Parse a client's JSON safely: bounded nesting, 64-bit integers, a clear 400 for anything else.

Python's ``json`` recurses once per nesting level and raises ``RecursionError`` near 1,000 levels,
after having spent the work; the depth here is measured on the raw bytes first (string contents
skipped, one vectorised pass), so a deep document is refused before it is parsed. Integers are
checked while parsing: MongoDB (what clearml-server stores in) and SQLite hold at most 64 bits, and a
larger ``iter`` or ``timestamp`` would otherwise fail later, deep inside a handler.

``events.add_batch`` (json-lines, parsed by :mod:`clearml_local.events`) can use :func:`loads`
per line; the app uses :func:`parse_object` for every other body.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from clearml_local.api import ApiError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: A ``\\uD800``-``\\uDFFF`` escape that is not half of a pair: Python's json accepts it, but the
#: string can then never be encoded as UTF-8 (SQLite, the log, the reply all fail on it).
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
#: Every byte but the ones that matter for nesting (quotes and brackets), for bytes.translate.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_CODES = {code: np.uint8(code) for code in b'"[]{}'}


def nesting_depth(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text (or of several json-lines), strings skipped.

    Cheap: escaped backslashes and escaped quotes are dropped, then everything but quotes and
    brackets, then adjacent quote pairs (C-speed byte operations); numpy walks what is left
    (~10 ms per MB of event batches, a quarter of parsing them). Brackets between an odd and an
    even quote are inside a string. Closers without an opener (malformed input) never lower the
    count below the deepest point reached before them, so no arrangement of brackets hides depth.
    """
    if raw.count(b"[") + raw.count(b"{") == 0:
        return 0
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Two adjacent quotes can go: removing them changes no later quote's parity. What is left of
    # typical JSON (strings without brackets) is the brackets alone.
    structure = raw.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    codes = np.frombuffer(structure, dtype=np.uint8)
    outside = np.cumsum(codes == _CODES[ord('"')], dtype=np.int64) % 2 == 0
    opens = ((codes == _CODES[ord("[")]) | (codes == _CODES[ord("{")])) & outside
    closes = ((codes == _CODES[ord("]")]) | (codes == _CODES[ord("}")])) & outside
    level = np.cumsum(opens.astype(np.int32) - closes.astype(np.int32))
    floor = np.minimum.accumulate(np.minimum(level, 0))
    return int((level - floor).max())


def _checked_int(text: str) -> int:
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ApiError(400, 12, f"Validation error: integer {text[:30]} is outside the 64-bit range")
    return value


def check_raw(raw: bytes, max_depth: int) -> None:
    """400/11 when ``raw`` (JSON or json-lines) nests deeper than ``max_depth`` or holds a ``\\u``
    escape that is half of a surrogate pair: the checks that need no parse."""
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise ApiError(400, 11, f"Malformed JSON body: nested {depth} levels deep (limit {max_depth})")
    if b"\\u" in raw and _LONE_SURROGATE.search(raw.replace(b"\\\\", b"")):
        raise ApiError(400, 11, "Malformed JSON body: a \\u escape is half of a UTF-16 surrogate pair")


def loads(raw: bytes | str, max_depth: int) -> Any:
    """Parse one JSON document; 400/11 when malformed or nested deeper than ``max_depth``,
    400/12 for an integer beyond 64 bits."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    check_raw(data, max_depth)
    try:
        return json.loads(data, parse_int=_checked_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, 11, f"Malformed JSON body: {exc}") from None
    except RecursionError:  # cannot happen below the depth limit; kept as a last line of defence
        raise ApiError(400, 11, "Malformed JSON body: nested too deeply") from None


def parse_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    """A request body that must be one JSON object (400/11 otherwise)."""
    body = loads(raw, max_depth)
    if not isinstance(body, dict):
        raise ApiError(400, 11, "Malformed request body: expected a JSON object")
    return body
