"""Unpack one tar layer into an empty directory without ever writing outside it.

The rules that make it safe, whatever the tar says:
- names are cleaned (leading "/" and "./" dropped); a name or hardlink target that climbs out
  with ".." is refused;
- every parent directory is opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from
  the layer's root fd, and every entry is created relative to that parent fd with O_NOFOLLOW /
  AT_SYMLINK_NOFOLLOW, so a symlink in the tar (absolute, relative, or pointing at "..") is
  stored as a symlink but never followed: a later entry "through" it is refused;
- hardlinks may only point at files already unpacked in this layer;
- device nodes need privilege (refused otherwise); only user.* and security.capability
  xattrs are applied (trusted.overlay.* from a tar could forge overlayfs metadata).
Whiteouts become overlayfs whiteouts: `.wh.NAME` a 0/0 character device, `.wh..wh..opq` the
trusted.overlay.opaque xattr on its directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, Any

from stockade.image.store import ImageError
from stockade.kernel import mounts, namespaces

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
USER_OPAQUE_XATTR = "user.overlay.opaque"
_RESOLVE = mounts.RESOLVE_BENEATH | mounts.RESOLVE_NO_SYMLINKS | mounts.RESOLVE_NO_MAGICLINKS | mounts.RESOLVE_NO_XDEV
_CHUNK = 1 << 20


class UnsafeLayer(ImageError):
    """A layer tar tried to write outside its directory, or is otherwise unusable."""


@dataclass(slots=True)
class UnpackResult:
    diff_id: str
    size: int
    entries: int


class HashingReader:
    """A read-only stream that hashes what passes through (the uncompressed tar -> diff_id)."""

    def __init__(self, raw: IO[bytes]) -> None:
        import hashlib  # (here, not at the top: see spec.image.sha256_digest)

        self.raw = raw
        self.hasher = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hasher.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


class GunzipReader:
    """Streaming gunzip over zlib (multi-member aware), reading big chunks for speed."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.inflater = zlib.decompressobj(wbits=31)
        self.buffer = bytearray()
        self.eof = False

    def _fill(self, want: int) -> None:
        while len(self.buffer) < want and not self.eof:
            data = self.raw.read(_CHUNK)
            if not data:
                if not self.inflater.eof:
                    raise UnsafeLayer("compressed layer is truncated")
                self.eof = True
                break
            while data:
                self.buffer += self.inflater.decompress(data)
                if self.inflater.eof:
                    data = self.inflater.unused_data
                    self.inflater = zlib.decompressobj(wbits=31) if data else self.inflater
                    if not data:
                        break
                else:
                    data = b""

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            self._fill(1 << 62)
            n = len(self.buffer)
        else:
            self._fill(n)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


@contextlib.contextmanager
def decompressed(raw: IO[bytes], compression: str) -> Any:
    """A readable uncompressed stream for a layer blob; zstd goes through Debian's zstd."""
    if compression == "":
        yield raw
    elif compression == "gzip":
        yield GunzipReader(raw)
    elif compression == "zstd":
        import subprocess  # (here, not at the top: see host.MONITOR_MODULES)

        proc = subprocess.Popen(["zstd", "-dcq"], stdin=raw, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        finally:
            proc.stdout.close()
            proc.kill()
            _out, err = proc.communicate()
            if proc.wait() not in (0, -9) and err:
                raise UnsafeLayer(f"zstd: {err.decode(errors='replace').strip()}")
    else:
        raise UnsafeLayer(f"unsupported layer compression {compression!r}")


def clean_name(name: str) -> str:
    """The tar member name as a path relative to the layer root ("" for the root itself)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeLayer(f"{name}: path climbs out of the layer")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


class Extractor:
    def __init__(self, root_fd: int, privileged: bool) -> None:
        self.root_fd = root_fd
        self.privileged = privileged
        # Root of a rootless user namespace chowns within its map but may neither set trusted.*
        # xattrs (overlayfs then reads user.overlay.*: the mount uses userxattr) nor mknod devices.
        self.host_root = privileged and namespaces.host_root()
        self.opaque_xattr = OVERLAY_OPAQUE_XATTR if self.host_root else USER_OPAQUE_XATTR
        self.dir_fds: OrderedDict[str, int] = OrderedDict()
        self.dir_attrs: list[tuple[str, int, tuple[int, int]]] = []
        self.size = 0
        self.entries = 0

    # Parent directories ----------------------------------------------------------------------
    def parent_fd(self, parent: str, member: str) -> int:
        if parent == "":
            return self.root_fd
        fd = self.dir_fds.get(parent)
        if fd is not None:
            self.dir_fds.move_to_end(parent)
            return fd
        try:
            fd = mounts.openat2(self.root_fd, parent, os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
        except FileNotFoundError:
            grand, _, base = parent.rpartition("/")
            gfd = self.parent_fd(grand, member)
            try:
                os.mkdir(base, 0o755, dir_fd=gfd)
            except FileExistsError:
                pass
            fd = mounts.openat2(self.root_fd, parent, os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
        except OSError as exc:
            raise UnsafeLayer(f"{member}: {parent} is not a directory inside the layer ({exc.strerror})") from None
        self.dir_fds[parent] = fd
        if len(self.dir_fds) > 64:
            _name, old = self.dir_fds.popitem(last=False)
            os.close(old)
        return fd

    def forget_dirs(self) -> None:
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds.clear()

    def close(self) -> None:
        self.forget_dirs()

    def clear_slot(self, pfd: int, base: str, keep_dir: bool) -> None:
        """Make room for a new entry: tar semantics replace whatever the name held."""
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            self.forget_dirs()
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)

    # Entries ---------------------------------------------------------------------------------
    def add(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path = clean_name(member.name)
        parent, _, base = path.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, base, member.name)
            return
        self.entries += 1
        if path == "":
            if member.isdir():
                self.apply_dir_meta(self.root_fd, "", member)
            return
        pfd = self.parent_fd(parent, member.name)
        if member.isdir():
            self.clear_slot(pfd, base, keep_dir=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(base, 0o700, dir_fd=pfd)
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                self.apply_dir_meta(fd, path, member)
            finally:
                os.close(fd)
            return
        self.clear_slot(pfd, base, keep_dir=False)
        if member.isreg():
            self.regular(tf, member, pfd, base)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
            self.chown(base, pfd, member, follow=False)
            self.xattrs(f"/proc/self/fd/{pfd}/{base}", member, follow=False)
            os.utime(base, ns=_mtime_ns(member), dir_fd=pfd, follow_symlinks=False)
        elif member.islnk():
            self.hardlink(member, pfd, base)
        elif member.ischr() or member.isblk():
            if not self.privileged:
                raise UnsafeLayer(f"{member.name}: device nodes need privilege (unpacking as uid {os.geteuid()})")
            if not self.host_root:
                return  # rootless, as podman's storage does: a user namespace can't make devices
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
            self.file_meta_at(pfd, base, member)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self.file_meta_at(pfd, base, member)
        else:
            raise UnsafeLayer(f"{member.name}: unsupported tar entry type {member.type!r}")

    def regular(self, tf: tarfile.TarFile, member: tarfile.TarInfo, pfd: int, base: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = tf.extractfile(member)
            assert src is not None
            remaining = member.size
            while remaining:
                data = src.read(min(remaining, _CHUNK))
                if not data:
                    raise UnsafeLayer(f"{member.name}: layer is truncated")
                os.write(fd, data)
                remaining -= len(data)
            self.size += member.size
            self.file_meta(fd, member)
        finally:
            os.close(fd)

    def hardlink(self, member: tarfile.TarInfo, pfd: int, base: str) -> None:
        target = clean_name(member.linkname)
        if not target:
            raise UnsafeLayer(f"{member.name}: hardlink to the layer root")
        tparent, _, tbase = target.rpartition("/")
        try:
            tfd = self.parent_fd(tparent, member.name)
            os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, UnsafeLayer):
            raise UnsafeLayer(f"{member.name}: hardlink target {member.linkname} is not in this layer") from None

    def whiteout(self, parent: str, base: str, name: str) -> None:
        pfd = self.parent_fd(parent, name)
        if base == OPAQUE_MARKER:
            os.setxattr(pfd, self.opaque_xattr if self.privileged else USER_OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs metadata (.wh..wh.plnk and friends): nothing to do with overlayfs
        hidden = base[len(WHITEOUT_PREFIX) :]
        if not hidden or hidden in (".", ".."):
            raise UnsafeLayer(f"{name}: invalid whiteout")
        self.clear_slot(pfd, hidden, keep_dir=False)
        if not self.privileged:
            raise UnsafeLayer(f"{name}: whiteouts need privilege (unpacking as uid {os.geteuid()})")
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)

    # Metadata --------------------------------------------------------------------------------
    def chown(self, base: str, pfd: int, member: tarfile.TarInfo, follow: bool) -> None:
        if self.privileged:
            os.chown(base, member.uid, member.gid, dir_fd=pfd, follow_symlinks=follow)

    def file_meta(self, fd: int, member: tarfile.TarInfo) -> None:
        # chown first: it clears set-id bits and security.capability, which come after.
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        self.xattrs(fd, member, follow=True)
        os.utime(fd, ns=_mtime_ns(member))

    def file_meta_at(self, pfd: int, base: str, member: tarfile.TarInfo) -> None:
        self.chown(base, pfd, member, follow=False)
        os.chmod(base, member.mode & 0o7777, dir_fd=pfd, follow_symlinks=True)
        os.utime(base, ns=_mtime_ns(member), dir_fd=pfd, follow_symlinks=False)

    def apply_dir_meta(self, fd: int, path: str, member: tarfile.TarInfo) -> None:
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)
        self.xattrs(fd, member, follow=True)
        # Mode and mtime last: a read-only directory must still take its children, and
        # creating them would change the mtime.
        self.dir_attrs.append((path, member.mode & 0o7777, _mtime_ns(member)))

    def finish_dirs(self) -> None:
        for path, mode, ns in reversed(self.dir_attrs):
            if path == "":
                fd = os.dup(self.root_fd)
            else:
                try:
                    fd = mounts.openat2(self.root_fd, path, os.O_RDONLY | os.O_DIRECTORY, _RESOLVE)
                except OSError:
                    continue  # replaced by a later entry
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=ns)
            finally:
                os.close(fd)

    def xattrs(self, target: int | str, member: tarfile.TarInfo, follow: bool) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            if not (name.startswith("user.") or name == "security.capability") or name.startswith("user.overlay."):
                continue  # (user.overlay.* is overlayfs metadata on a rootless mount: never from a tar)
            if name == "security.capability" and not self.privileged:
                continue
            raw = value.encode("utf-8", "surrogateescape")
            try:
                os.setxattr(target, name, raw, follow_symlinks=follow)
            except OSError as exc:
                if not isinstance(target, str):
                    raise UnsafeLayer(f"{member.name}: xattr {name}: {exc.strerror}") from None


def is_opaque(path: str) -> bool:
    """An overlayfs opaque directory, marked as root marks it (trusted.) or rootless (user.)."""
    for name in (OVERLAY_OPAQUE_XATTR, USER_OPAQUE_XATTR):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


def _mtime_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    ns = int(float(member.mtime) * 1_000_000_000)
    return ns, ns


def unpack_tar(stream: IO[bytes], dest: str, *, privileged: bool | None = None, what: str = "layer") -> UnpackResult:
    """Unpack an uncompressed tar stream into the existing empty directory `dest`.

    Returns the diff_id (sha256 of the whole uncompressed stream), the bytes of file data and
    the number of entries. Errors are UnsafeLayer naming `what` and the member.
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    reader = HashingReader(stream)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    extractor = Extractor(root_fd, privileged)
    try:
        try:
            with tarfile.open(fileobj=reader, mode="r|", errorlevel=2) as tf:  # type: ignore[call-overload]
                for member in tf:
                    extractor.add(tf, member)
        except UnsafeLayer as exc:
            raise UnsafeLayer(f"{what}: {exc}") from None
        except tarfile.TarError as exc:
            raise UnsafeLayer(f"{what}: not a valid tar archive: {exc}") from None
        except OSError as exc:
            raise UnsafeLayer(f"{what}: {exc.filename or ''}: {exc.strerror}") from None
        reader.drain()
        extractor.finish_dirs()
    finally:
        extractor.close()
        os.close(root_fd)
    return UnpackResult(reader.digest, extractor.size, extractor.entries)
