"""AppArmor/SELinux planning against fake /sys and /proc trees (this host has neither LSM)."""

from __future__ import annotations

import pytest

from stockade.errors import NotSupported
from stockade.runtime.lsm import Host, apply_lsm, plan_lsm


def fake_host(tmp_path, apparmor: bool = False, selinux: bool = False, per_lsm_attr: bool = True) -> Host:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    (proc / "attr" / "apparmor").mkdir(parents=True)
    (proc / "attr" / "exec").write_text("")
    if per_lsm_attr:
        (proc / "attr" / "apparmor" / "exec").write_text("")
    if apparmor:
        (sys_root / "module/apparmor/parameters").mkdir(parents=True)
        (sys_root / "module/apparmor/parameters/enabled").write_text("Y\n")
    if selinux:
        (sys_root / "fs/selinux").mkdir(parents=True)
        (sys_root / "fs/selinux/enforce").write_text("1")
    return Host(str(sys_root), str(proc))


def test_apparmor_profile_is_written_to_the_exec_attribute(tmp_path):
    host = fake_host(tmp_path, apparmor=True)
    plan = plan_lsm("docker-default", None, None, host)
    assert plan.writes == [(str(tmp_path / "proc/attr/apparmor/exec"), "exec docker-default")]
    apply_lsm(plan)
    assert (tmp_path / "proc/attr/apparmor/exec").read_text() == "exec docker-default"


def test_apparmor_falls_back_to_the_shared_attribute(tmp_path):
    host = fake_host(tmp_path, apparmor=True, per_lsm_attr=False)
    assert plan_lsm("p", None, None, host).writes[0][0] == str(tmp_path / "proc/attr/exec")


def test_apparmor_without_apparmor_warns_as_runc_ignores_it(tmp_path):
    plan = plan_lsm("docker-default", None, None, fake_host(tmp_path))
    assert plan.writes == []
    assert plan.warnings == ['process.apparmorProfile "docker-default" ignored: AppArmor is not enabled on this host']


def test_selinux_label_is_written_when_enabled(tmp_path):
    plan = plan_lsm(None, "system_u:system_r:container_t:s0", None, fake_host(tmp_path, selinux=True))
    assert plan.writes == [(str(tmp_path / "proc/attr/exec"), "system_u:system_r:container_t:s0")]


def test_selinux_label_without_selinux_is_an_error(tmp_path):
    with pytest.raises(NotSupported, match="SELinux is not enabled"):
        plan_lsm(None, "system_u:system_r:container_t:s0", None, fake_host(tmp_path))


def test_mount_label_without_selinux_warns(tmp_path):
    plan = plan_lsm(None, None, "system_u:object_r:container_file_t:s0", fake_host(tmp_path))
    assert plan.warnings and "linux.mountLabel" in plan.warnings[0]


def test_this_host_has_neither():
    host = Host()
    assert not host.apparmor_enabled() and not host.selinux_enabled()
