"""OCI hooks: run each with the container's state JSON on stdin, its args, env and timeout."""

from __future__ import annotations

import os

from stockade import jsonfast
from stockade.errors import ContainerError
from stockade.spec.runtime import Hook

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run_hooks(kind: str, hooks: list[Hook], state: dict[str, Any]) -> None:
    """Run `hooks` in order; the first failure raises ContainerError naming the hook."""
    if not hooks:
        return
    import subprocess  # only paid for by containers that have hooks

    payload = jsonfast.dumps(state).encode()
    for index, hook in enumerate(hooks):
        what = f"{kind} hook {index} ({hook.path})"
        env = dict(item.partition("=")[::2] for item in hook.env)
        try:
            proc = subprocess.run(
                hook.args or [hook.path],
                executable=hook.path,
                input=payload,
                env=env,
                capture_output=True,
                timeout=hook.timeout,
                close_fds=True,
            )
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{what}: timed out after {hook.timeout}s") from None
        except OSError as e:
            raise ContainerError(f"{what}: {os.strerror(e.errno or 0)}") from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            reason = f": {detail[-1]}" if detail else ""
            status = f"exit status {proc.returncode}" if proc.returncode > 0 else f"signal {-proc.returncode}"
            raise ContainerError(f"{what}: {status}{reason}")
