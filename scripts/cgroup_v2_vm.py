"""Run the cgroup tests on a pure cgroup v2 kernel: Debian's kernel under qemu (TCG).

    .venv/bin/python scripts/cgroup_v2_vm.py [pytest args...]     (make test-cgroup-v2)

This host is a cgroup v1 hybrid, so v2 is tested in a VM. Everything comes from Debian's
archive: the kernel package is downloaded (not installed) and unpacked under .cache/vm, its
xz payload extracted (booting the uncompressed kernel saves seconds of decompression under
TCG), and a busybox initramfs with the virtio/9p modules boots it. The guest mounts the
host's / read-only over virtio-9p, puts tmpfs on the directories tests write, mounts cgroup2
with every controller enabled, chroots into the host's tree and runs pytest on the tests
marked `cgroups` with the same interpreter and project tree. A second 9p share brings the
exit status back. KVM is not used by default: this host's KVM hangs Debian's kernels
(STOCKADE_VM_ACCEL=kvm where it works).
"""

from __future__ import annotations

import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "vm"
MODULE_ORDER = [
    "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci", "net/9p/9pnet",
    "net/9p/9pnet_virtio", "fs/netfs/netfs", "fs/fscache/fscache", "fs/9p/9p",
    "drivers/block/virtio_blk",  # a small disk, so block I/O limits have a device to act on
]  # fmt: skip
WRITABLE = ["/tmp", "/run", "/var/tmp", "/root/.cache"]


def kernel_package() -> str:
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if not line.strip().startswith("Depends:"):
            continue
        name = line.strip().removeprefix("Depends:").strip()
        if name.startswith("linux-image-") and name.endswith("-amd64") and "cloud" not in name:
            return name
    raise SystemExit("cgroup-v2 VM: cannot resolve linux-image-amd64 (run apt-get update)")


def unpack_kernel() -> tuple[Path, Path]:
    """(uncompressed kernel, modules dir), downloaded and unpacked once."""
    package = kernel_package()
    target = CACHE / package
    vmlinux = target / "vmlinux"
    if vmlinux.exists():
        return vmlinux, next((target / "x/lib/modules").iterdir())
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", package], cwd=target, check=True, capture_output=True)
    deb = next(target.glob("*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target / "x")], check=True)
    deb.unlink()
    vmlinuz = next((target / "x/boot").glob("vmlinuz-*")).read_bytes()
    start = vmlinuz.find(b"\xfd7zXZ\x00")
    decompressor = lzma.LZMADecompressor()
    vmlinux.write_bytes(decompressor.decompress(vmlinuz[start:]))
    return vmlinux, next((target / "x/lib/modules").iterdir())


INIT = """#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /host{results}
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mount -t devpts devpts /host/dev/pts; mount -t tmpfs shm /host/dev/shm
for d in {writable}; do mount -t tmpfs tmpfs /host$d; done
mount -t tmpfs scratch /host{scratch}
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
echo "+cpuset +cpu +io +memory +pids +hugetlb" > /host/sys/fs/cgroup/cgroup.subtree_control
echo 1 > /host/proc/sys/kernel/unprivileged_userns_clone 2>/dev/null
# switch_root, not chroot: the kernel refuses new user namespaces to a chrooted process.
exec switch_root /host /bin/sh -c {command}
"""


def build_initramfs(work: Path, modules: Path, command: str, scratch: Path, results: Path) -> Path:
    root = work / "initramfs"
    for d in ("bin", "proc", "sys", "dev", "lib/modules"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "mount", "insmod", "mkdir", "switch_root", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    for module in MODULE_ORDER:
        shutil.copy(modules / "kernel" / f"{module}.ko", root / "lib/modules" / f"{Path(module).name}.ko")
    # tmpfs over the usual writable directories, but never over the one holding the project
    # (a checkout under /tmp must stay visible); TMPDIR is a scratch tmpfs inside .cache/vm.
    writable = [d for d in WRITABLE if not str(ROOT).startswith(d + "/")]
    init = INIT.format(
        modules=" ".join(Path(m).name for m in MODULE_ORDER),
        writable=" ".join(writable),
        scratch=shlex.quote(str(scratch)),
        results=shlex.quote(str(results)),
        command=shlex.quote(
            f"{command} > {shlex.quote(str(results))}/output 2>&1; echo $? > {shlex.quote(str(results))}/exit; "
            "sync; /usr/bin/busybox poweroff -f"
        ),
    )
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    image = work / "initrd.cpio"
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
    with open(image, "wb") as out:
        subprocess.run(
            ["busybox", "cpio", "-o", "-H", "newc"],
            cwd=root,
            input=files.encode(),
            stdout=out,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    return image


def main(argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("cgroup-v2 VM: run as root", file=sys.stderr)
        return 1
    if shutil.which("qemu-system-x86_64") is None:
        print("cgroup-v2 VM: qemu-system-x86_64 missing (make setup installs qemu-system-x86)", file=sys.stderr)
        return 1
    vmlinux, modules = unpack_kernel()
    helper = CACHE / "escape"
    scratch = CACHE / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(helper), str(ROOT / "tests/helpers/escape.c")], check=True)
    python = Path(sys.executable)
    pytest_args = " ".join(shlex.quote(a) for a in argv) or "-m cgroups tests/integration"
    command = (
        f"cd {shlex.quote(str(ROOT))} && PYTHONDONTWRITEBYTECODE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "
        f"STOCKADE_HELPER_BINARY={shlex.quote(str(helper))} TMPDIR={shlex.quote(str(scratch))} HOME=/root "
        f"{shlex.quote(str(python))} -m pytest -q -p no:cacheprovider {pytest_args}"
    )
    # The results directory must exist in the tree the guest sees: it mounts its share there.
    with tempfile.TemporaryDirectory(prefix="stockade-vm-") as tmp, tempfile.TemporaryDirectory(dir=CACHE) as res:
        work = Path(tmp)
        results = Path(res)
        initrd = build_initramfs(work, modules, command, scratch, results)
        disk = work / "disk.img"
        disk.write_bytes(b"\0" * (1 << 20))
        accel = os.environ.get("STOCKADE_VM_ACCEL", "tcg,thread=multi")
        qemu = [
            "qemu-system-x86_64", "-accel", accel, "-m", "4096", "-smp", str(os.cpu_count() or 2),
            "-nographic", "-no-reboot", "-kernel", str(vmlinux), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1 systemd.unified_cgroup_hierarchy=1",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={results},mount_tag=results,security_model=none",
            "-drive", f"file={disk},if=virtio,format=raw",
        ]  # fmt: skip
        started = time.monotonic()
        boot = subprocess.run(qemu, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
        output = (results / "output").read_text() if (results / "output").exists() else ""
        print(output, end="")
        exit_file = results / "exit"
        if not exit_file.exists():
            print(boot.stdout[-3000:], boot.stderr[-2000:], sep="\n")
            print(
                f"cgroup-v2 VM: the guest did not finish the tests ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
            return 1
        code = int(exit_file.read_text().strip() or 1)
        print(f"cgroup-v2 VM: pytest exited {code} after {time.monotonic() - started:.0f} s")
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
