"""process.*: cwd, user, env, rlimits, umask, capabilities, no_new_privs, and fd hygiene."""

from __future__ import annotations

import resource

from conftest import requires_root

pytestmark = requires_root


def test_cwd_user_and_env(bundle, runtime):
    bundle.userns()
    bundle.process["cwd"] = "/tmp"
    bundle.process["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [100, 5]}
    bundle.process["env"] = ["PATH=/bin:/usr/bin", "GREETING=hello world"]
    out = runtime.run_output(bundle.sh('pwd; id -u; id -g; id -G; echo "$GREETING"'))
    cwd, uid, gid, groups, greeting = out.splitlines()
    assert cwd == "/tmp"
    assert (uid, gid) == ("1000", "1000")
    assert set(groups.split()) == {"1000", "100", "5"}
    assert greeting == "hello world"


def test_umask(bundle, runtime):
    bundle.process["user"]["umask"] = 0o077
    assert runtime.run_output(bundle.sh("umask")).strip() == "0077"


def test_rlimits_applied(bundle, runtime):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    bundle.process["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": min(hard, 4096)},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    out = runtime.run_output(bundle.sh("ulimit -n; ulimit -Hn; ulimit -c"))
    assert out.split() == ["512", str(min(hard, 4096)), "0"]


def test_rlimit_above_the_hard_limit_is_a_clear_error(bundle, runtime):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": hard + 1, "hard": hard + 1}]
    bundle.write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1", check=False)
    assert proc.returncode == 1
    assert "RLIMIT_NOFILE" in proc.stderr and f"current hard limit {hard}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def every_set(caps: list[str]) -> dict[str, list[str]]:
    return {name: caps for name in ("bounding", "effective", "permitted", "inheritable", "ambient")}


def test_capability_sets_are_exactly_the_requested_ones(bundle, runtime):
    bundle.userns()
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    bundle.process["capabilities"] = every_set(caps)
    out = runtime.run_output(bundle.sh("grep ^Cap /proc/self/status"))
    sets = dict(line.split(":\t") for line in out.splitlines())
    want = f"{(1 << 0) | (1 << 5) | (1 << 10):016x}"
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert sets[name] == want, name


def test_non_root_user_keeps_ambient_capabilities(bundle, runtime):
    bundle.userns()
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    caps = ["CAP_NET_BIND_SERVICE"]
    bundle.process["capabilities"] = every_set(caps)
    out = runtime.run_output(bundle.sh("grep -E '^Cap(Eff|Amb)' /proc/self/status"))
    assert all(line.endswith(f"{1 << 10:016x}") for line in out.splitlines())


def test_no_new_privileges(bundle, runtime):
    bundle.process["noNewPrivileges"] = True
    assert runtime.run_output(bundle.sh("grep NoNewPrivs /proc/self/status")).split()[1] == "1"
    bundle.process["noNewPrivileges"] = False
    assert runtime.run_output(bundle.sh("grep NoNewPrivs /proc/self/status")).split()[1] == "0"


def test_only_stdio_crosses_into_the_container(bundle, runtime):
    bundle.userns()
    # ls opens one descriptor of its own for the directory it lists.
    out = runtime.run_output(bundle.args("ls", "/proc/self/fd"))
    assert sorted(out.split(), key=int) == ["0", "1", "2", "3"]


def test_preserve_fds_passes_exactly_n_extra_descriptors(bundle, runtime, tmp_path):
    import os
    import subprocess

    bundle.sh("cat <&3; ls /proc/self/fd | wc -l").write()
    data = tmp_path / "data"
    data.write_text("through fd 3\n")
    fd = os.open(data, os.O_RDONLY)
    extra = os.open(data, os.O_RDONLY)
    try:
        os.dup2(fd, 3) if fd != 3 else None
        proc = subprocess.run(
            runtime.cmd("run", "--preserve-fds", "1", "--bundle", str(bundle.path), "c1"),
            capture_output=True,
            text=True,
            pass_fds=(3, extra),
            timeout=30,
        )
    finally:
        os.close(fd)
        os.close(extra)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "through fd 3"
    assert lines[1] == "5"  # 0 1 2 3, and ls's own


def test_no_host_directory_is_reachable_through_fds_or_cwd(bundle, runtime):
    bundle.userns()
    script = "for f in /proc/self/fd/* /proc/1/cwd /proc/1/root; do readlink $f; done"
    out = runtime.run_output(bundle.sh(script))
    for target in out.split():
        assert not target.startswith(("/tmp", "/work", "/run", "/root", "/home")), target


def test_oom_score_adj(bundle, runtime):
    bundle.process["oomScoreAdj"] = 500
    assert runtime.run_output(bundle.sh("cat /proc/self/oom_score_adj")).strip() == "500"


def test_personality_linux32(bundle, runtime):
    bundle.linux["personality"] = {"domain": "LINUX32"}
    assert runtime.run_output(bundle.args("uname", "-m")).strip() in ("i686", "i386")


def test_additional_gids_and_umask_for_exec(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    out = runtime("exec", "--additional-gids", "10", "--user", "1000:1000", "c1", "id", "-G").stdout
    assert set(out.split()) == {"1000", "10"}
