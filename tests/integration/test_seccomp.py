"""linux.seccomp compiled with libseccomp: actions, errno, argument filters, companion ABIs."""

from __future__ import annotations

import errno
import shutil
import subprocess

import pytest

from conftest import requires_root

pytestmark = requires_root


def profile(*rules: dict, default: str = "SCMP_ACT_ALLOW", **extra) -> dict:
    return {"defaultAction": default, "architectures": ["SCMP_ARCH_X86_64"], "syscalls": list(rules), **extra}


def test_errno_action_with_errno_ret(bundle, runtime):
    bundle.linux["seccomp"] = profile(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}
    )
    out = runtime.run_output(bundle.writable().sh("mkdir /tmp/x 2>&1; grep ^Seccomp: /proc/self/status"))
    assert "Read-only file system" in out
    assert "Seccomp:\t2" in out


def test_default_errno_is_eperm(bundle, runtime):
    bundle.linux["seccomp"] = profile({"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"})
    out = runtime.run_output(bundle.sh("hostname other 2>&1; echo rc=$?"))
    assert "Operation not permitted" in out or "rc=1" in out


def test_argument_filter_masked_eq_and_eq(bundle, runtime):
    # personality(0xffffffff) queries; block only PER_LINUX32 (8) by exact argument.
    bundle.linux["seccomp"] = profile(
        {
            "names": ["kill"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EACCES,
            "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}],
        },
        {
            "names": ["umask"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": errno.EACCES,
            "args": [{"index": 0, "value": 0o7, "valueTwo": 0o7, "op": "SCMP_CMP_MASKED_EQ"}],
        },
    )
    out = runtime.run_output(bundle.sh("sleep 5 & kill -USR1 $! 2>&1; echo usr1=$?; kill -TERM $! ; echo term=$?"))
    assert "usr1=1" in out and "term=0" in out


def test_kill_process_action(bundle, runtime):
    bundle.linux["seccomp"] = profile({"names": ["sched_getaffinity"], "action": "SCMP_ACT_KILL_PROCESS"})
    bundle.sh("echo before; (nproc); echo status=$?; echo after").write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1", check=False)
    # The forked subshell died of SIGSYS (128+31); PID 1 went on.
    assert proc.stdout.split() == ["before", "status=159", "after"]


def test_default_kill_allowlist_runs_only_what_is_listed(bundle, runtime):
    allowed = [
        "execve", "brk", "arch_prctl", "set_tid_address", "exit_group", "write", "mmap", "munmap", "mprotect",
        "rt_sigaction", "rt_sigprocmask", "getuid", "prctl", "setresuid", "setresgid", "setgroups", "capget",
        "capset", "set_robust_list", "rseq", "prlimit64", "getpid", "close", "uname", "readlinkat",
    ]  # fmt: skip
    bundle.linux["seccomp"] = profile({"names": allowed, "action": "SCMP_ACT_ALLOW"}, default="SCMP_ACT_ERRNO")
    bundle.process["noNewPrivileges"] = True
    out = runtime.run_output(bundle.args("echo", "allowlisted"))
    assert out == "allowlisted\n"


def test_seccomp_without_no_new_privs_for_non_root_user(bundle, runtime):
    """Without no_new_privs the filter is loaded before the uid switch, while we may."""
    bundle.userns()
    bundle.process["noNewPrivileges"] = False
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.linux["seccomp"] = profile({"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO"})
    out = runtime.run_output(bundle.sh("id -u; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"))
    assert out.split() == ["1000", "NoNewPrivs:", "0", "Seccomp:", "2"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_32bit_syscalls_cannot_bypass_the_filter(bundle, runtime, tmp_path):
    """A rule names mkdir for x86_64 only; the filter still covers the x86 (int 0x80) ABI."""
    src = tmp_path / "int80.c"
    src.write_text(
        "#include <stdio.h>\n#include <errno.h>\nint main(void){long r;\n"
        '__asm__ volatile("int $0x80":"=a"(r):"a"(39),"b"("/tmp/d"),"c"(0755):"memory");\n'  # 39 = mkdir on i386
        'printf("%ld\\n", r); return 0;}\n'
    )
    exe = bundle.rootfs / "int80"
    subprocess.run(["gcc", "-static", "-O0", "-o", str(exe), str(src)], check=True)
    bundle.linux["seccomp"] = profile(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}
    )
    out = runtime.run_output(bundle.writable().args("/int80"))
    assert int(out) == -errno.EROFS


def test_unknown_syscall_names_are_skipped(bundle, runtime):
    bundle.linux["seccomp"] = profile({"names": ["no_such_syscall", "sethostname"], "action": "SCMP_ACT_ERRNO"})
    assert runtime.run_output(bundle.args("echo", "ok")) == "ok\n"


def test_exec_gets_the_containers_filter(bundle, runtime):
    bundle.linux["seccomp"] = profile(
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS}
    )
    runtime.detached(bundle.writable().sh("sleep 30"), "c1")
    out = runtime("exec", "c1", "sh", "-c", "mkdir /tmp/y 2>&1; grep ^Seccomp: /proc/self/status").stdout
    assert "Read-only file system" in out and "Seccomp:\t2" in out


def test_filter_flags_are_accepted(bundle, runtime):
    bundle.linux["seccomp"] = profile(
        {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"},
        flags=["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    )
    assert runtime.run_output(bundle.args("echo", "ok")) == "ok\n"


def test_notify_fd_goes_to_the_listener_with_state_and_metadata(bundle, runtime, tmp_path):
    import json
    import os
    import socket
    import threading

    path = str(tmp_path / "listener.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    received: dict = {}

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            message, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
            received["message"] = json.loads(message)
            received["fds"] = len(fds)
            for fd in fds:
                os.close(fd)  # no listener left: the trapped syscall fails with ENOSYS

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    bundle.linux["seccomp"] = profile(
        {"names": ["sethostname"], "action": "SCMP_ACT_NOTIFY"}, listenerPath=path, listenerMetadata="from-the-config"
    )
    bundle.sh("sleep 0.2; hostname other 2>&1; true")
    out = runtime.run_output(bundle, "n1")
    thread.join(10)
    server.close()
    message = received["message"]
    assert received["fds"] == 1
    assert message["fds"] == ["seccompFd"] and message["metadata"] == "from-the-config"
    assert message["state"]["id"] == "n1" and message["pid"] > 0
    assert "Function not implemented" in out or "not implemented" in out.lower()
