"""`stockade image build-base debian`: a real Debian image from debootstrap (Debian's archive),
run in a user-namespaced container on idmapped overlay layers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import USERNS_BASE, Bundle, requires_root
from stockade.image import rootfs
from stockade.image.store import Store
from stockade.spec.runtime import IDMapping

pytestmark = requires_root
STOCKADE = str(Path(sys.executable).parent / "stockade")


def test_build_base_debian_and_run(tmp_path: Path, bundle: Bundle, runtime: Any) -> None:
    if shutil.which("debootstrap") is None:
        pytest.skip("needs debootstrap")
    root = tmp_path / "data"
    build = subprocess.run(
        [STOCKADE, "--root", str(root), "image", "build-base", "debian"], capture_output=True, text=True, timeout=900
    )
    assert build.returncode == 0, build.stderr
    # Cached: the second call returns at once with the same image.
    again = subprocess.run(
        [STOCKADE, "--root", str(root), "image", "build-base", "debian"], capture_output=True, text=True, timeout=60
    )
    assert again.stdout == build.stdout
    doc = json.loads(
        subprocess.run(
            [STOCKADE, "--root", str(root), "image", "inspect", "localhost/debian:bookworm"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]
    assert doc["Config"]["Cmd"] == ["bash"]
    assert "debootstrap" in doc["History"][0]["comment"]
    store = Store(root / "images")
    image = store.lookup("localhost/debian:bookworm")
    shutil.rmtree(bundle.rootfs)
    maps = [IDMapping(0, USERNS_BASE, 65536)]
    fs = rootfs.prepare(store, image, bundle.path, maps, maps)
    try:
        bundle.userns_maps().args(
            "/bin/sh", "-c", "cat /etc/debian_version; stat -c %u /usr/bin/apt-get; dpkg -s bash | grep ^Status"
        )
        out = runtime.run_output(bundle).splitlines()
        assert out[0].startswith("12.") and out[1] == "0" and out[2] == "Status: install ok installed"
    finally:
        rootfs.release(fs.target)
    _engine_on_debian(root)


def _engine_on_debian(root: Path) -> None:
    """The engine on the Debian image: the seed demo's commit/run, exec seeing the container's
    PID 1, a user from the image's /etc/passwd, bash's exit status, apt's files intact."""
    from stockade.engine.host import stop_host

    def stockade(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([STOCKADE, "--root", str(root), *args], capture_output=True, text=True, timeout=120)
        assert not check or done.returncode == 0, f"{args}: {done.stderr}"
        return done

    try:
        stockade("run", "--name", "deb1", "--network", "none", "debian:bookworm", "bash", "-c", "echo jay > /foo")
        stockade("commit", "-m", "jay", "deb1", "debian-jay")
        assert stockade("run", "--rm", "--network", "none", "debian-jay", "cat", "/foo").stdout == "jay\n"
        assert "jay" in stockade("history", "debian-jay").stdout
        stockade("run", "-d", "--name", "deb2", "--network", "none", "debian:bookworm", "sleep", "300")
        init = stockade(
            "exec", "deb2", "bash", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; id -un; exit 4", check=False
        )
        assert init.returncode == 4 and init.stdout.split("\n")[:2] == ["sleep 300 ", "root"]
        who = stockade("run", "--rm", "--network", "none", "-u", "nobody", "debian:bookworm", "id", "-un")
        assert who.stdout.strip() == "nobody"
        apt = stockade("run", "--rm", "--network", "none", "debian:bookworm", "bash", "-c",
                       "apt-get --version | head -1; test -r /var/lib/dpkg/status && echo dpkg-ok")  # fmt: skip
        assert apt.stdout.startswith("apt ") and "dpkg-ok" in apt.stdout
    finally:
        ids = stockade("ps", "-aq", "--no-trunc", check=False).stdout.split()
        if ids:
            stockade("rm", "-f", *ids, check=False)
        stop_host(root / "run")
