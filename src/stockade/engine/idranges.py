"""Isolated ID maps: every container gets its own 65536 host IDs from stockade's subordinate range.

Root's containers take their IDs from the `stockade` entry of /etc/subuid and /etc/subgid
(added, after every range already there, if missing). The range is cut into slices of SLICE
IDs; a container takes the lowest free slice, recorded as links in <root>/idslots (see
Allocator), and gives it back on rm. Disjoint slices mean a process
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
    """Slices of the `stockade` range, one per owner (a container ID).

    Each slice in use is a symlink <state>/idslots/slot-N whose target is its owner, and the
    owner's way back a symlink owner-ID -> N. Claiming a slice is one symlink(2), which is
    atomic (EEXIST: someone was faster, take the next): no lock, no file rewritten and
    renamed (the JSON file with an flock this replaced cost a start and an exit ~1 ms each).
    A slice is given back owner link first, so that a crash between the two unlinks leaves a
    slice taken by nobody (found again by its owner's next release), never an owner pointing
    at a slice someone else may take."""

    def __init__(self, state_dir: Path, subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")) -> None:
        self.slots = state_dir / "idslots"
        self.legacy = state_dir / "idranges.json"  # (before idslots: read once, then removed)
        self.lock = state_dir / "idranges.lock"
        self.subuid = subuid
        self.subgid = subgid
        self.state_dir = state_dir

    def _range(self, path: Path) -> SubIDRange:
        """The owner's range in `path`; as root, create the `stockade` entry if missing."""
        found = find_range(parse_subid(_read_or_empty(path), str(path)), (OWNER,))
        if found:
            return found
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.lock):  # (two first starts must not both append an entry)
            text = _read_or_empty(path)
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

    def allocate(self, owner: str) -> IDMap:
        """The owner's slice (the same one again if it has one already)."""
        from stockade.engine import rootless

        if rootless.active():  # the rootless namespace's IDs are the user's: containers share them
            size = min(SLICE, rootless.container_id_map_size())
            identity = ((0, 0, 1), (1, 1, size - 1))  # (split where the namespace's own map is)
            return IDMap(0, 0, size, uid_lines=identity, gid_lines=identity)
        _check_owner(owner)
        uids, gids = self._range(self.subuid), self._range(self.subgid)
        index = self._slot_of(owner)
        if index is None:
            index = self._claim(owner, min(uids.count, gids.count) // SLICE)
        return IDMap(uids.start + index * SLICE, gids.start + index * SLICE, SLICE)

    def release(self, owner: str) -> None:
        _check_owner(owner)
        index = self._slot_of(owner)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.slots / f"owner-{owner}")
        if index is None:  # no way back (a crash between a claim's two links): look
            index = next((i for i, o in self._slots().items() if o == owner), None)
        if index is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.slots / f"slot-{index}")

    def in_use(self) -> dict[str, int]:
        return {o: i for i, o in self._slots().items()}

    def _slot_of(self, owner: str) -> int | None:
        """The owner's slice, if both links agree."""
        try:
            index = int(os.readlink(self.slots / f"owner-{owner}"))
            return index if os.readlink(self.slots / f"slot-{index}") == owner else None
        except (FileNotFoundError, ValueError):
            self._adopt_legacy()
            return None

    def _claim(self, owner: str, capacity: int) -> int:
        used = {int(name[5:]) for name in self._names() if name.startswith("slot-")}
        for index in range(capacity):
            if index in used:
                continue
            try:
                os.symlink(owner, self.slots / f"slot-{index}")
            except FileExistsError:
                continue  # taken meanwhile
            owner_link = self.slots / f"owner-{owner}"
            try:
                os.symlink(str(index), owner_link)
            except FileExistsError:  # a stale one, whose slice was given back
                os.unlink(owner_link)
                os.symlink(str(index), owner_link)
            return index
        raise IDRangeError(
            f"no free ID range: all {capacity} slices of {SLICE} IDs are in use (remove containers or widen {self.subuid})"
        )

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.slots)
        except FileNotFoundError:
            self._adopt_legacy()
            self.slots.mkdir(parents=True, exist_ok=True)
            return os.listdir(self.slots)

    def _slots(self) -> dict[int, str]:
        """Every slice taken: index -> owner."""
        taken = {}
        for name in self._names():
            if name.startswith("slot-"):
                with contextlib.suppress(FileNotFoundError, ValueError):
                    taken[int(name[5:])] = os.readlink(self.slots / name)
        return taken

    def _adopt_legacy(self) -> None:
        """Slices recorded by an older stockade in idranges.json become links."""
        if not self.legacy.exists():
            return
        with _locked(self.lock):
            try:
                data = json.loads(self.legacy.read_text())
            except FileNotFoundError:
                return
            except ValueError as exc:
                raise IDRangeError(f"{self.legacy}: {exc}") from None
            self.slots.mkdir(parents=True, exist_ok=True)
            for owner, index in data.items():
                for link, target in ((f"slot-{int(index)}", str(owner)), (f"owner-{owner}", str(int(index)))):
                    with contextlib.suppress(FileExistsError):
                        os.symlink(target, self.slots / link)
            self.legacy.unlink()


def _check_owner(owner: str) -> None:
    if not owner or "/" in owner or owner in (".", ".."):
        raise IDRangeError(f"ID range owner {owner!r}: not a valid name")


def _read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
