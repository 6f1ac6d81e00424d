"""What every command module shares: the one-line usage error (exit 125, as docker) and the
Go-template subset of --format. Kept import-light: it is on every command's start-up path."""

from __future__ import annotations

import argparse
import json
from typing import Any

from stockade.errors import StockadeError


class UsageError(StockadeError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, our format, exit 125 like docker
        raise UsageError(f"{self.prog}: {message}")


def _parser(prog: str) -> _Parser:
    return _Parser(prog=prog, add_help=True)


def print_docs(docs: list[Any], fmt: str | None) -> None:
    """What every `inspect` prints: a JSON array, or each document through -f/--format."""
    if fmt:
        for doc in docs:
            print(_go_template(fmt, doc))
    else:
        print(json.dumps(docs, indent=4))


def each(names: list[str], action: Any) -> int:
    """Docker's way with several names: act on each, print it, report failures, go on."""
    import sys

    failed = 0
    for text in names:
        try:
            action(text)
            print(text)
        except StockadeError as exc:
            print(f"stockade: {exc}", file=sys.stderr)
            failed = 1
    return failed


def _go_template(fmt: str, doc: dict[str, Any]) -> str:
    """The common `{{.Field.Sub}}` and `{{json .Field}}` forms of Go templates."""
    import re

    def value(path: str) -> Any:
        cur: Any = doc
        for part in path.strip(".").split("."):
            if part:
                cur = cur.get(part) if isinstance(cur, dict) else None
        return cur

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("json "):
            return json.dumps(value(expr[5:].strip()))
        v = value(expr)
        return json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else str(v))

    return re.sub(r"\{\{(.*?)\}\}", sub, fmt)
