"""`--debug` phase timings: one stderr line per step of the set-up, from every process that
takes part, with milliseconds since the runtime started. Off, a call costs one lookup."""

from __future__ import annotations

import os
import time

_START = float(os.environ.get("STOCKADE_TRACE_T0") or 0) or time.perf_counter()
ENABLED = bool(os.environ.get("STOCKADE_TRACE"))


def enable() -> None:
    """Turn tracing on for this process and every child it forks or execs."""
    global ENABLED
    ENABLED = True
    os.environ["STOCKADE_TRACE"] = "1"
    os.environ["STOCKADE_TRACE_T0"] = repr(_START)


def trace(what: str) -> None:
    if ENABLED:
        os.write(2, f"debug: {(time.perf_counter() - _START) * 1000:7.1f} ms [{os.getpid()}] {what}\n".encode())
