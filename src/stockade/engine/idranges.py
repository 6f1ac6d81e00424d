"""Isolated ID maps: every container gets its own 65536 host IDs from stockade's subordinate range.

Root's containers take their IDs from the `stockade` entry of /etc/subuid and /etc/subgid
(added, after every range already there, if missing). The range is cut into slices of SLICE
IDs; a container takes the lowest free slice, recorded in
<root>/idranges.json under an flock, and gives it back on rm. Disjoint slices mean a process
that escapes one container is an unprivileged stranger to the host and to every other one.
(Rootless, commands run inside the user's own user namespace, which maps the user's subordinate
range: containers share it, as podman's do, each in a nested namespace with an identity map.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.errors import StockadeError

SLICE = 65536
OWNER = "stockade"
# Where a new `stockade` entry starts at the earliest, and how many IDs it holds: 2048 slices.
FIRST_HOST_ID = 1_000_000
RANGE_SIZE = SLICE * 2048


class IDRangeError(StockadeError):
    pass


@dataclass(frozen=True, slots=True)
class SubIDRange:
    start: int
    count: int


@dataclass(frozen=True, slots=True)
class IDMap:
    """A container's maps: container IDs 0..size-1 -> host uid_start.. / gid_start.., or the
    explicit (containerID, hostID, size) lines of `uid_lines`/`gid_lines` where one shifted
    range can't say it: rootless, the kernel wants each line inside one line of the parent
    namespace's map (0 is the user, 1.. its range); --userns keep-id moves the user's ID."""

    uid_start: int
    gid_start: int
    size: int
    uid_lines: tuple[tuple[int, int, int], ...] = ()
    gid_lines: tuple[tuple[int, int, int], ...] = ()

    def uid_mappings(self) -> list[dict[str, int]]:
        """linux.uidMappings for config.json."""
        return self._lines(self.uid_lines or ((0, self.uid_start, self.size),))

    def gid_mappings(self) -> list[dict[str, int]]:
        return self._lines(self.gid_lines or ((0, self.gid_start, self.size),))

    @staticmethod
    def _lines(lines: tuple[tuple[int, int, int], ...]) -> list[dict[str, int]]:
        return [{"containerID": c, "hostID": h, "size": n} for c, h, n in lines]

    def record(self) -> dict[str, Any]:
        """What the container's record keeps (`record_maps` reads it back)."""
        doc: dict[str, Any] = {"UidStart": self.uid_start, "GidStart": self.gid_start, "Size": self.size}
        if self.uid_lines:
            doc["UidMap"], doc["GidMap"] = [list(x) for x in self.uid_lines], [list(x) for x in self.gid_lines]
        return doc


def keep_id_map(own_uid: int, own_gid: int, size: int) -> IDMap:
    """--userns keep-id (rootless): the user is itself inside (uid/gid as on the host, at
    rootless-namespace ID 0), container IDs below it come from the subordinate range (so the
    image's root is a subordinate ID, as podman does), the rest are identity."""
    if not 0 < own_uid < size - 1 or not 0 < own_gid < size - 1:
        raise IDRangeError(
            f"--userns keep-id: uid {own_uid} / gid {own_gid} is outside the {size} IDs the namespace maps"
        )

    def lines(own: int) -> tuple[tuple[int, int, int], ...]:
        return ((0, 1, own), (own, 0, 1), (own + 1, own + 1, size - own - 1))

    return IDMap(1, 1, size, uid_lines=lines(own_uid), gid_lines=lines(own_gid))


def record_maps(record: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """A container's ID maps as IDMapping lists, from its record ([] without a user namespace)."""
    from stockade.spec.runtime import IDMapping

    idmap = record.get("IDMap")
    if not idmap:
        return [], []
    if idmap.get("UidMap"):
        return ([IDMapping(*line) for line in idmap["UidMap"]], [IDMapping(*line) for line in idmap["GidMap"]])
    return [IDMapping(0, idmap["UidStart"], idmap["Size"])], [IDMapping(0, idmap["GidStart"], idmap["Size"])]


def parse_subid(text: str, path: str) -> list[tuple[str, SubIDRange]]:
    """Lines of `name:start:count`; a malformed line is an error naming file and line."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise IDRangeError(f"{path}:{number}: malformed line {line!r} (want name:start:count)")
        out.append((parts[0], SubIDRange(int(parts[1]), int(parts[2]))))
    return out


def find_range(entries: list[tuple[str, SubIDRange]], names: tuple[str, ...]) -> SubIDRange | None:
    for name, rng in entries:
        if name in names:
            return rng
    return None


def plan_new_range(entries: list[tuple[str, SubIDRange]]) -> SubIDRange:
    """A range after every range already handed out, so it overlaps none of them."""
    end = max([FIRST_HOST_ID, *(r.start + r.count for _n, r in entries)])
    if end + RANGE_SIZE > 2**32 - 2:
        raise IDRangeError("no room left in the 32-bit ID space for stockade's subordinate range")
    return SubIDRange(end, RANGE_SIZE)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Allocator:
    def __init__(self, state_dir: Path, subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")) -> None:
        self.state = state_dir / "idranges.json"
        self.lock = state_dir / "idranges.lock"
        self.subuid = subuid
        self.subgid = subgid
        state_dir.mkdir(parents=True, exist_ok=True)

    def _range(self, path: Path) -> SubIDRange:
        """The owner's range in `path`; as root, create the `stockade` entry if missing."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        entries = parse_subid(text, str(path))
        found = find_range(entries, (OWNER,))
        if found:
            return found
        new = plan_new_range(entries)
        with open(path, "a") as f:
            if text and not text.endswith("\n"):
                f.write("\n")
            f.write(f"{OWNER}:{new.start}:{new.count}\n")
        return new

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.state.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise IDRangeError(f"{self.state}: {exc}") from None
        return {str(k): int(v) for k, v in data.items()}

    def _save(self, slots: dict[str, int]) -> None:
        tmp = self.state.with_name(f".{self.state.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(slots, sort_keys=True))
        os.replace(tmp, self.state)

    def allocate(self, owner: str) -> IDMap:
        """The owner's slice (the same one again if it has one already)."""
        from stockade.engine import rootless

        if rootless.active():  # the rootless namespace's IDs are the user's: containers share them
            size = min(SLICE, rootless.container_id_map_size())
            identity = ((0, 0, 1), (1, 1, size - 1))  # (split where the namespace's own map is)
            return IDMap(0, 0, size, uid_lines=identity, gid_lines=identity)
        with _locked(self.lock):
            uids, gids = self._range(self.subuid), self._range(self.subgid)
            slots = self._load()
            if owner not in slots:
                capacity = min(uids.count, gids.count) // SLICE
                used = set(slots.values())
                free = next((i for i in range(capacity) if i not in used), None)
                if free is None:
                    raise IDRangeError(
                        f"no free ID range: all {capacity} slices of {SLICE} IDs are in use (remove containers or widen {self.subuid})"
                    )
                slots[owner] = free
                self._save(slots)
            index = slots[owner]
            return IDMap(uids.start + index * SLICE, gids.start + index * SLICE, SLICE)

    def release(self, owner: str) -> None:
        with _locked(self.lock):
            slots = self._load()
            if slots.pop(owner, None) is not None:
                self._save(slots)

    def in_use(self) -> dict[str, int]:
        with _locked(self.lock):
            return self._load()
