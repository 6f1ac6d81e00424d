"""JSON through the C scanner and encoder that the json module itself uses, minus its imports.

`import json` costs ~11 ms here (json.decoder pulls in re, which pulls in enum), and every
`stockade-runtime` call reads a config or a state file. These two functions give the same
results as json.loads/json.dumps (compact) for the documents we handle.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"


class _ScannerContext:
    """The attributes _json.make_scanner reads (as json.JSONDecoder has them)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_scan = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]


def loads(text: str | bytes) -> Any:
    """Parse one JSON document; ValueError (with the offset) if it is not valid JSON."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
        if not text[end:].strip(_WHITESPACE):
            return value
    except Exception:  # the scanner's own errors are terse or odd; see below
        pass
    # Invalid: let the json module (imported only now) say exactly what and where.
    import json

    return json.loads(text)


def _default(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def dumps(obj: Any) -> str:
    """Compact JSON, like json.dumps(obj) with its default separators."""
    return "".join(_encode(obj, 0))
