"""The embedded default image: a minimal root filesystem from Debian's busybox-static.

`build_rootfs(dest)` lays out the usual directories, copies the static busybox binary, links
every applet to it, and writes /etc/passwd, /etc/group and /etc/hostname. The same builder
serves `make demo`, the tests and the benchmarks.

    python -m stockade.image.busybox DEST [--owner UID:GID]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from stockade.errors import StockadeError

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
DIRECTORIES = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "etc",
    "dev",
    "proc",
    "sys",
    "tmp",
    "root",
    "home",
    "var/tmp",
    "run",
    "mnt",
)
PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
"""
GROUP = """root:x:0:
daemon:x:1:
tty:x:5:
users:x:100:
user:x:1000:
nogroup:x:65534:
"""


def find_busybox() -> str:
    for path in BUSYBOX_CANDIDATES:
        if os.path.isfile(path) and _is_static(path):
            return path
    raise StockadeError("no static busybox found: install Debian's busybox-static (make setup does)")


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    # A dynamic ELF names its interpreter (/lib64/ld-linux...) in a PT_INTERP segment.
    return head.startswith(b"\x7fELF") and b"ld-linux" not in head


def build_rootfs(dest: str, owner: tuple[int, int] | None = None) -> str:
    """Build the rootfs at `dest` (which must not exist yet or be empty); returns `dest`."""
    busybox = find_busybox()
    os.makedirs(dest, exist_ok=True)
    if os.listdir(dest):
        raise StockadeError(f"{dest}: not empty")
    for directory in DIRECTORIES:
        os.makedirs(os.path.join(dest, directory), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    os.chmod(os.path.join(dest, "var/tmp"), 0o1777)
    os.chmod(os.path.join(dest, "root"), 0o700)
    shutil.copy2(busybox, os.path.join(dest, "bin/busybox"))
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(dest, applet)
        if applet == "bin/busybox" or os.path.lexists(link):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink("/bin/busybox", link)
    _write(dest, "etc/passwd", PASSWD)
    _write(dest, "etc/group", GROUP)
    _write(dest, "etc/hostname", "stockade\n")
    _write(dest, "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    if owner is not None:
        chown_tree(dest, *owner)
    return dest


def _write(root: str, rel: str, content: str) -> None:
    with open(os.path.join(root, rel), "w") as f:
        f.write(content)


def chown_tree(root: str, uid: int, gid: int) -> None:
    """Shift ownership of a rootfs to a user namespace's root (uid, gid on the host)."""
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.lchown(root, uid, gid)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 1
    owner = None
    if len(argv) == 3 and argv[1] == "--owner":
        uid, _, gid = argv[2].partition(":")
        owner = (int(uid), int(gid or uid))
    try:
        build_rootfs(argv[0], owner)
    except (StockadeError, OSError) as e:
        print(f"stockade: build rootfs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
