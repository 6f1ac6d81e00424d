"""An unprivileged caller: the runtime maps only its own uid, denies setgroups, runs without
cgroups (saying so), and leaves nothing behind. Driven as uid 65534 through setpriv, with
Debian's /usr/bin/python3 (the test venv's interpreter may live under /root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import requires_root

SRC = str(Path(__file__).resolve().parents[2] / "src")
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534

pytestmark = [
    requires_root,
    pytest.mark.skipif(
        not os.path.exists(SYSTEM_PYTHON) or shutil.which("setpriv") is None, reason="needs python3 and setpriv"
    ),
]


def run_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    launcher = f"import sys; sys.path.insert(0, {SRC!r}); from stockade.cli.runtime import main; sys.exit(main())"
    cmd = [
        "setpriv",
        "--reuid",
        str(NOBODY),
        "--regid",
        str(NOBODY),
        "--clear-groups",
        SYSTEM_PYTHON,
        "-I",
        "-c",
        launcher,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_rootless_container_maps_only_the_callers_uid(bundle, tmp_path):
    bundle.rootless(NOBODY).sh("id -u; cat /proc/self/uid_map; cat /proc/self/setgroups")
    bundle.linux["resources"] = {"pids": {"limit": 100}}  # asked, so not given: a warning says so
    bundle.give_to(NOBODY)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    proc = run_as_nobody("--root", str(state), "run", "--bundle", str(bundle.path), "r1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0", str(NOBODY), "1", "deny"]
    assert "without a delegated cgroup" in proc.stderr
    assert [n for n in os.listdir(state) if not n.startswith(".")] == []  # (.seccomp-cache stays)


def test_rootless_wider_map_without_subuid_entry_is_a_clear_error(bundle, tmp_path):
    bundle.userns()
    bundle.write()
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    proc = run_as_nobody("--root", str(state), "run", "--bundle", str(bundle.path), "r2")
    assert proc.returncode == 1
    assert "newuidmap" in proc.stderr
    assert [n for n in os.listdir(state) if not n.startswith(".")] == []  # (.seccomp-cache stays)
