"""Container logs in Docker's json-file format: one JSON object per line,
{"log": "...", "stream": "stdout"|"stderr", "time": RFC 3339 nanoseconds}, rotated at
max-size into ctr.log.1 .. ctr.log.<max-file - 1>. The monitor writes; `logs` reads, even
while the monitor is gone."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path


def timestamp(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


class LogWriter:
    def __init__(self, path: Path, max_size: int = 0, max_file: int = 1) -> None:
        self.path = path
        self.max_size = max_size
        self.max_file = max(1, max_file)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def write(self, stream: str, data: bytes) -> None:
        now = timestamp()
        lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
        out = "".join(json.dumps({"log": ln, "stream": stream, "time": now}) + "\n" for ln in lines).encode()
        if self.max_size and self.size + len(out) > self.max_size and self.size:
            self._rotate()
        os.write(self.fd, out)
        self.size += len(out)

    def _rotate(self) -> None:
        os.close(self.fd)
        if self.max_file == 1:
            os.truncate(self.path, 0)
        else:
            for i in range(self.max_file - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                newer = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
                if newer.exists():
                    os.replace(newer, older)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def log_files(path: Path) -> list[Path]:
    """Oldest first: ctr.log.N .. ctr.log.1, ctr.log."""
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:])
    )
    return [*rotated, path]


def parse_line(line: bytes) -> tuple[str, str, str] | None:
    try:
        entry = json.loads(line)
        return entry["time"], entry["stream"], entry["log"]
    except (ValueError, KeyError, TypeError):
        return None


def read_entries(path: Path) -> Iterator[tuple[str, str, str]]:
    for f in log_files(path):
        try:
            with open(f, "rb") as fh:
                for line in fh:
                    entry = parse_line(line)
                    if entry:
                        yield entry
        except FileNotFoundError:
            continue
