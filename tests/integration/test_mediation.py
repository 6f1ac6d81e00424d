"""Syscall mediation: an unprivileged container creates /dev/null-like nodes through the
seccomp-notify mediator; block devices stay refused; a flood neither hangs nor leaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import requires_root
from stockade.spec.profiles import with_mknod_mediation

pytestmark = [requires_root, pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")]


@pytest.fixture
def mediator(tmp_path):
    path = tmp_path / "mediator.sock"
    proc = subprocess.Popen([sys.executable, "-m", "stockade.runtime.mediation", str(path)])
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "mediator did not start"
        time.sleep(0.02)
    yield proc, str(path)
    proc.terminate()
    proc.wait(timeout=10)


def mediated(bundle, listener: str):
    bundle.secure().writable()
    bundle.linux["seccomp"] = with_mknod_mediation(bundle.linux["seccomp"], listener)
    return bundle


def test_mknod_of_null_works_and_behaves_as_dev_null(bundle, runtime, mediator):
    _proc, listener = mediator
    mediated(bundle, listener).sh(
        "mknod /tmp/null c 1 3 && echo made; echo hello > /tmp/null; wc -c < /tmp/null; ls -ln /tmp/null;"
        "mknod /tmp/sda b 8 0 2>&1; mknod /tmp/kmsg c 1 11 2>&1; mkfifo /tmp/fifo && echo fifo-ok"
    )
    out = runtime.run_output(bundle).splitlines()
    assert out[0] == "made"
    assert out[1].strip() == "0"
    assert out[2].startswith("crw-r--r--") and " 0 " in f" {out[2]} "  # owned by the container's root
    assert "Operation not permitted" in out[3]  # block device
    assert "Operation not permitted" in out[4]  # a character device not on the allowlist
    assert out[5] == "fifo-ok"
    node = bundle.rootfs / "tmp" / "null"
    st = node.stat()
    assert os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert st.st_uid == 100000  # the caller's uid on the host


def test_mknod_cannot_be_steered_outside_the_root(bundle, runtime, mediator, tmp_path):
    _proc, listener = mediator
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), bundle.rootfs / "tmp" / "out")
    mediated(bundle, listener).sh(
        "mknod /tmp/out/null c 1 3 2>&1; mknod ../../../../../../" + str(outside).lstrip("/") + "/x c 1 3 2>&1; true"
    )
    runtime.run_output(bundle)
    assert os.listdir(outside) == []


def test_a_flood_of_notified_calls_neither_hangs_nor_leaks(bundle, runtime, mediator, escape_binary):
    proc, listener = mediator
    shutil.copy(escape_binary, bundle.rootfs / "escape")
    mediated(bundle, listener).args("/escape", "mknod-flood", "10000")
    fds_before = len(os.listdir(f"/proc/{proc.pid}/fd"))
    started = time.monotonic()
    out = runtime.run_output(bundle)
    elapsed = time.monotonic() - started
    assert out.strip() == "10000"
    assert elapsed < 60
    time.sleep(0.2)  # the mediator closes the container's notify fd once it sees it hang up
    assert len(os.listdir(f"/proc/{proc.pid}/fd")) == fds_before
    assert proc.poll() is None
