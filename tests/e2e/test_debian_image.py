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
