"""Signal numbers and handlers from the built-in _signal module: the signal module wraps it
in enums, and `enum` costs ~5 ms of imports on every runtime call."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SIGHUP: int = _signal.SIGHUP
SIGINT: int = _signal.SIGINT
SIGQUIT: int = _signal.SIGQUIT
SIGKILL: int = _signal.SIGKILL
SIGUSR1: int = _signal.SIGUSR1
SIGUSR2: int = _signal.SIGUSR2
SIGTERM: int = _signal.SIGTERM
SIGWINCH: int = _signal.SIGWINCH
NSIG: int = _signal.NSIG
SIGPIPE: int = _signal.SIGPIPE
SIGCHLD: int = _signal.SIGCHLD
SIG_IGN: int = _signal.SIG_IGN
SIG_DFL: int = _signal.SIG_DFL

FORWARDED = (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2)


def set_handler(sig: int, handler: Callable[[int, Any], None] | int | None) -> Any:
    """signal.signal(): install `handler`, return the previous one."""
    return _signal.signal(sig, handler)
