"""Layer unpacking on the real filesystem: metadata kept, whiteouts converted, and crafted tars
that try to write outside the layer directory either land safely inside or fail clearly,
with the host unchanged."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from conftest import requires_root
from imagekit import tar_bytes
from stockade.image.unpack import UnsafeLayer, unpack_tar

pytestmark = requires_root


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes | str]]:
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            content: bytes | str = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
            out[str(p.relative_to(path))] = (st.st_mode, st.st_size, content)
    return out


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    """(layer dir, an 'outside' dir with a victim file the tars aim at)."""
    layer = tmp_path / "layer"
    layer.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    return layer, outside


def unpack(entries: list[dict], dest: Path, **kw: object) -> object:
    return unpack_tar(io.BytesIO(tar_bytes(entries)), str(dest), what="layer test", **kw)  # type: ignore[arg-type]


def test_metadata_is_kept(arena: tuple[Path, Path]) -> None:
    layer, _ = arena
    cap = b"\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # cap_net_bind_service
    result = unpack(
        [
            {"name": "etc", "type": "dir", "mode": 0o755, "mtime": 1_500_000_000},
            {"name": "etc/shadow", "data": "s", "mode": 0o640, "uid": 0, "gid": 42},
            {
                "name": "bin/ping",
                "data": "elf",
                "mode": 0o4755,
                "uid": 0,
                "gid": 0,
                "xattrs": {"security.capability": cap},
            },
            {
                "name": "home/u/file",
                "data": "x",
                "uid": 1000,
                "gid": 1000,
                "mtime": 1_234_567_890,
                "xattrs": {"user.note": "hi"},
            },
            {"name": "bin/sh", "type": "symlink", "linkname": "/bin/busybox"},
            {"name": "bin/ping2", "type": "hardlink", "linkname": "bin/ping"},
            {"name": "run/fifo", "type": "fifo", "mode": 0o600},
            {"name": "dev/null", "type": "chr", "devmajor": 1, "devminor": 3, "mode": 0o666},
            {"name": "ro", "type": "dir", "mode": 0o555},
            {"name": "ro/inside", "data": "ok"},
        ],
        layer,
    )
    assert result.entries == 10  # type: ignore[attr-defined]
    st = os.stat(layer / "etc/shadow")
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, 42)
    st = os.stat(layer / "bin/ping")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert os.getxattr(layer / "bin/ping", "security.capability") == cap
    st = os.stat(layer / "home/u/file")
    assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (1000, 1000, 1_234_567_890)
    assert os.getxattr(layer / "home/u/file", "user.note") == b"hi"
    assert os.readlink(layer / "bin/sh") == "/bin/busybox"
    assert os.stat(layer / "bin/ping2").st_ino == os.stat(layer / "bin/ping").st_ino
    assert stat.S_ISFIFO(os.lstat(layer / "run/fifo").st_mode)
    assert os.lstat(layer / "dev/null").st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(os.stat(layer / "ro").st_mode) == 0o555 and (layer / "ro/inside").read_text() == "ok"
    assert int(os.stat(layer / "etc").st_mtime) == 1_500_000_000  # set after its children


def test_whiteouts_become_overlay_whiteouts(arena: tuple[Path, Path]) -> None:
    layer, _ = arena
    unpack(
        [
            {"name": "etc/.wh.hosts", "data": ""},
            {"name": "var/.wh..wh..opq", "data": ""},
            {"name": "var/new", "data": "n"},
        ],
        layer,
    )
    st = os.lstat(layer / "etc/hosts")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(layer / "var", "trusted.overlay.opaque") == b"y"
    assert not (layer / "var/.wh..wh..opq").exists()


def test_absolute_paths_land_inside(arena: tuple[Path, Path]) -> None:
    layer, outside = arena
    before = snapshot(outside)
    unpack([{"name": str(outside / "victim"), "data": "pwned"}], layer)
    assert (layer / str(outside / "victim").lstrip("/")).read_text() == "pwned"
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    "entries, error",
    [
        ([{"name": "../victim", "data": "pwned"}], "climbs out of the layer"),
        ([{"name": "a/../../victim", "data": "pwned"}], "climbs out of the layer"),
        # A symlink to the outside, then a file written "through" it.
        (
            [{"name": "link", "type": "symlink", "linkname": "OUTSIDE"}, {"name": "link/victim", "data": "pwned"}],
            "is not a directory inside the layer",
        ),
        # The same with a relative symlink climbing up.
        (
            [{"name": "up", "type": "symlink", "linkname": "../outside"}, {"name": "up/victim", "data": "pwned"}],
            "is not a directory inside the layer",
        ),
        # A symlink to a directory inside, used as a parent: refused too (never followed).
        (
            [
                {"name": "d", "type": "dir"},
                {"name": "l", "type": "symlink", "linkname": "d"},
                {"name": "l/f", "data": "x"},
            ],
            "is not a directory inside the layer",
        ),
        ([{"name": "hl", "type": "hardlink", "linkname": "../outside/victim"}], "climbs out of the layer"),
        ([{"name": "hl", "type": "hardlink", "linkname": "OUTSIDE/victim"}], "is not in this layer"),
        # Hardlink through a symlink that points outside.
        (
            [
                {"name": "l", "type": "symlink", "linkname": "OUTSIDE"},
                {"name": "hl", "type": "hardlink", "linkname": "l/victim"},
            ],
            "is not in this layer",
        ),
        ([{"name": ".wh..", "data": ""}], "invalid whiteout"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "through-abs-symlink",
        "through-rel-symlink",
        "through-inner-symlink",
        "hardlink-dotdot",
        "hardlink-abs",
        "hardlink-via-symlink",
        "whiteout-dotdot",
    ],
)
def test_escapes_are_refused(arena: tuple[Path, Path], entries: list[dict], error: str) -> None:
    layer, outside = arena
    for e in entries:
        for key in ("name", "linkname"):
            if key in e:
                e[key] = e[key].replace("OUTSIDE", str(outside))
    before = snapshot(outside)
    with pytest.raises(UnsafeLayer, match=error) as info:
        unpack(entries, layer)
    assert str(info.value).startswith("layer test: ")
    assert "\n" not in str(info.value)
    assert snapshot(outside) == before
    assert (outside / "victim").read_text() == "original"


def test_symlink_replaced_by_file_is_not_followed(arena: tuple[Path, Path]) -> None:
    """A symlink to the victim, then a regular file of the same name: the symlink is replaced."""
    layer, outside = arena
    unpack([{"name": "f", "type": "symlink", "linkname": str(outside / "victim")}, {"name": "f", "data": "new"}], layer)
    assert (layer / "f").read_text() == "new" and not (layer / "f").is_symlink()
    assert (outside / "victim").read_text() == "original"


def test_devices_need_privilege(arena: tuple[Path, Path]) -> None:
    layer, _ = arena
    with pytest.raises(UnsafeLayer, match="device nodes need privilege"):
        unpack([{"name": "dev/sda", "type": "blk", "devmajor": 8, "devminor": 0}], layer, privileged=False)
    assert not (layer / "dev/sda").exists()


def test_trusted_xattrs_from_a_tar_are_ignored(arena: tuple[Path, Path]) -> None:
    layer, _ = arena
    unpack(
        [{"name": "d", "type": "dir", "xattrs": {"trusted.overlay.redirect": "/etc", "trusted.overlay.opaque": "y"}}],
        layer,
    )
    with pytest.raises(OSError):
        os.getxattr(layer / "d", "trusted.overlay.redirect")
    with pytest.raises(OSError):
        os.getxattr(layer / "d", "trusted.overlay.opaque")


def test_garbage_and_truncated_tars(arena: tuple[Path, Path]) -> None:
    layer, _ = arena
    with pytest.raises(UnsafeLayer, match="layer test: "):
        unpack_tar(io.BytesIO(b"this is not a tar" * 100), str(layer), what="layer test")
    data = tar_bytes([{"name": "big", "data": b"x" * 100_000}])
    with pytest.raises(UnsafeLayer, match="layer test: "):
        unpack_tar(io.BytesIO(data[:50_000]), str(layer), what="layer test")
