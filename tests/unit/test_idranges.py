"""Isolated ID ranges for containers: disjoint slices of stockade's subordinate range."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from stockade.engine.idranges import FIRST_HOST_ID, RANGE_SIZE, SLICE, Allocator, IDRangeError, parse_subid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="as root, the stockade entry is used")


def allocator(tmp_path: Path, subuid: str = "", subgid: str = "") -> Allocator:
    (tmp_path / "subuid").write_text(subuid)
    (tmp_path / "subgid").write_text(subgid)
    return Allocator(tmp_path / "state", tmp_path / "subuid", tmp_path / "subgid")


def test_entry_created_after_existing_ranges(tmp_path: Path) -> None:
    alloc = allocator(tmp_path, "root:100000:65536\nuser:165536:65536\n", "big:900000:200000")
    m = alloc.allocate("c1")
    assert (m.uid_start, m.gid_start, m.size) == (FIRST_HOST_ID, 1_100_000, SLICE)
    assert (tmp_path / "subuid").read_text().endswith(f"stockade:{FIRST_HOST_ID}:{RANGE_SIZE}\n")
    assert (tmp_path / "subgid").read_text() == f"big:900000:200000\nstockade:1100000:{RANGE_SIZE}\n"


def test_slices_are_disjoint_and_reused(tmp_path: Path) -> None:
    alloc = allocator(tmp_path, "stockade:2000000:655360\n", "stockade:2000000:655360\n")
    a, b = alloc.allocate("a"), alloc.allocate("b")
    assert abs(a.uid_start - b.uid_start) >= SLICE
    assert alloc.allocate("a") == a
    alloc.release("a")
    assert alloc.allocate("c") == a
    assert set(alloc.in_use()) == {"b", "c"}


def test_exhausted_range_is_a_clear_error(tmp_path: Path) -> None:
    alloc = allocator(tmp_path, f"stockade:2000000:{2 * SLICE}\n", f"stockade:2000000:{2 * SLICE}\n")
    alloc.allocate("a")
    alloc.allocate("b")
    with pytest.raises(IDRangeError, match="no free ID range: all 2 slices"):
        alloc.allocate("c")


def _grab(args: tuple[str, str]) -> int:
    state, owner = args
    base = Path(state)
    return Allocator(base / "state", base / "subuid", base / "subgid").allocate(owner).uid_start


def test_concurrent_allocations_never_collide(tmp_path: Path) -> None:
    allocator(tmp_path, "stockade:2000000:6553600\n", "stockade:2000000:6553600\n")
    with multiprocessing.get_context("fork").Pool(8) as pool:
        starts = pool.map(_grab, [(str(tmp_path), f"c{i}") for i in range(24)])
    assert len(set(starts)) == 24


def test_malformed_subid_names_the_line() -> None:
    with pytest.raises(IDRangeError, match=r"/etc/subuid:2: malformed line 'bad line'"):
        parse_subid("ok:1:2\nbad line\n", "/etc/subuid")


def test_slices_recorded_in_idranges_json_are_adopted(tmp_path: Path) -> None:
    alloc = allocator(tmp_path, "stockade:2000000:655360\n", "stockade:2000000:655360\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "idranges.json").write_text('{"old": 0, "older": 2}')
    assert alloc.allocate("new").uid_start == 2000000 + SLICE  # (0 and 2 are taken)
    assert alloc.in_use() == {"old": 0, "older": 2, "new": 1}
    assert not (tmp_path / "state" / "idranges.json").exists()
    alloc.release("old")
    assert alloc.allocate("x").uid_start == 2000000


def test_a_slice_without_its_owner_link_is_found_on_release(tmp_path: Path) -> None:
    alloc = allocator(tmp_path, "stockade:2000000:655360\n", "stockade:2000000:655360\n")
    alloc.allocate("a")
    os.unlink(tmp_path / "state" / "idslots" / "owner-a")  # (a crash between a claim's two links)
    alloc.release("a")
    assert alloc.in_use() == {}


def test_owner_names_are_checked(tmp_path: Path) -> None:
    alloc = allocator(tmp_path, "stockade:2000000:655360\n", "stockade:2000000:655360\n")
    with pytest.raises(IDRangeError, match="not a valid name"):
        alloc.allocate("../x")
