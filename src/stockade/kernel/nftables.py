"""nftables through libnftables (the library `nft` is a shell over), in its JSON dialect.

One context per process, made on first use: commands go in as JSON documents and listings
come back as JSON, with no `nft` process forked per call.
"""

from __future__ import annotations

import ctypes
import json
from typing import Any

_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4

_lib: Any = None
_ctx: Any = None


def _context() -> Any:
    global _lib, _ctx
    if _ctx is None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise OSError(2, "libnftables.so.1 not found (Debian package nftables)") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON | _OUTPUT_HANDLE)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        _lib, _ctx = lib, ctx
    return _ctx


def run(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a batch of JSON commands atomically (all or none); the JSON output's objects.

    Raises OSError with nft's own message when the batch is refused."""
    ctx = _context()
    document = json.dumps({"nftables": commands}).encode()
    rc = _lib.nft_run_cmd_from_buffer(ctx, document)
    out = _lib.nft_ctx_get_output_buffer(ctx) or b""
    err = _lib.nft_ctx_get_error_buffer(ctx) or b""
    if rc != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        message = lines[0].rsplit("Error: ", 1)[-1] if lines else "command refused"
        raise OSError(22, "nftables: " + message)
    if not out.strip():
        return []
    return list(json.loads(out).get("nftables", []))


def list_ruleset(family: str = "", table: str = "") -> list[dict[str, Any]]:
    """`nft -j list ruleset` (or one table): the objects, metainfo dropped."""
    what: dict[str, Any] = {"ruleset": None} if not table else {"table": {"family": family, "name": table}}
    try:
        objects = run([{"list": what}])
    except OSError:
        if table:
            return []  # no such table
        raise
    return [o for o in objects if "metainfo" not in o]
