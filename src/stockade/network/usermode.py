"""Rootless networking: a user-mode network stack per container, pasta (Debian's passt) or
slirp4netns, as podman uses them.

Without root there is no bridge, veth or nftables: a helper process running in the host's
network namespace joins the container's (which its user namespace, nested in the user's
rootless namespace, lets it), gives it a tap interface with an address and default route,
and carries the traffic as ordinary sockets of the user. Published ports are sockets the
helper listens on in the host's namespace. pasta is preferred (no TCP stack of its own,
splice for local traffic, so it is the faster); slirp4netns when pasta is missing or asked for.

    pasta        the host's address and gateway copied into the container; the gateway address
                 reaches the host itself (pasta's default; `pasta:--no-map-gw` turns it off)
    slirp4netns  10.0.2.100/24, gateway 10.0.2.2, DNS forwarder 10.0.2.3; the host's loopback
                 is out of reach unless `slirp4netns:allow_host_loopback=true`

Neither helper exits by itself when the container does (pasta outlives the namespace's last
process): the monitor stops it, or, after a crash, whoever cleans up, by pid and start time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from stockade.network.config import NetworkError, PortBinding

DRIVERS = ("pasta", "slirp4netns")
PACKAGES = {"pasta": "passt", "slirp4netns": "slirp4netns"}
SLIRP_OPTIONS = ("allow_host_loopback", "mtu", "cidr")


def split_mode(mode: str) -> tuple[str, list[str]]:
    """`pasta:--no-map-gw,-m,1500` -> ("pasta", ["--no-map-gw", "-m", "1500"])."""
    driver, _, rest = mode.partition(":")
    return driver, [o for o in rest.split(",") if o] if rest else []


def check_options(driver: str, options: list[str]) -> None:
    for option in options:
        if driver == "slirp4netns":
            key, eq, value = option.partition("=")
            if key not in SLIRP_OPTIONS or not eq or not value:
                raise NetworkError(
                    f'--network slirp4netns: unknown option "{option}" (want {", ".join(o + "=..." for o in SLIRP_OPTIONS)})'
                )
            if key == "allow_host_loopback" and value not in ("true", "false"):
                raise NetworkError(f'--network slirp4netns: allow_host_loopback must be true or false, not "{value}"')
        elif driver == "pasta" and option in ("-P", "--pid", "-f", "--foreground", "--netns", "--userns"):
            raise NetworkError(f"--network pasta: option {option} is stockade's to set")


def choose(asked: str) -> tuple[str, str]:
    """The helper for a rootless container and why (shown by inspect)."""
    if asked in DRIVERS:
        if shutil.which(asked) is None:
            raise NetworkError(f"--network {asked}: {asked} not found (apt-get install {PACKAGES[asked]})")
        return asked, f"--network {asked}"
    for driver in DRIVERS:
        if shutil.which(driver):
            return driver, f"rootless default: {driver} is the first of {' / '.join(DRIVERS)} installed"
    raise NetworkError(
        "rootless networking needs pasta (apt-get install passt) or slirp4netns; or run with --network none"
    )


def start(driver: str, options: list[str], pid: int, ports: list[PortBinding]) -> dict[str, Any]:
    """Give the network namespace of `pid` its helper; the record of it for network.json."""
    for b in ports:
        if b.proto not in ("tcp", "udp"):
            raise NetworkError(f"-p {b.container_port}/{b.proto}: rootless networking publishes tcp and udp only")
    helper = _start_pasta(options, pid, ports) if driver == "pasta" else _start_slirp(options, pid, ports)
    published: dict[str, list[dict[str, str]]] = {}
    for b in ports:
        published.setdefault(b.key, []).append({"HostIp": b.host_ip or "0.0.0.0", "HostPort": str(b.host_port)})
    from stockade.kernel.net import default_gateway, local_ipv4_addresses

    addresses, gateway = local_ipv4_addresses(pid), default_gateway(pid)
    return {
        "UserNet": {"Driver": driver, "Options": options, **helper},
        "Ports": published,
        "IPAddress": addresses[0] if addresses else "",
        "Gateway": gateway,
        "HostAddress": _host_address(driver, options, gateway),
    }


def _host_address(driver: str, options: list[str], gateway: str) -> str:
    """Where the container reaches the host itself ('' if it can't): host.containers.internal."""
    if driver == "pasta":
        return "" if "--no-map-gw" in options else gateway
    return (
        "10.0.2.2" if "allow_host_loopback=true" in options and not any(o.startswith("cidr=") for o in options) else ""
    )


def stop(doc: dict[str, Any]) -> None:
    """Stop the helper recorded in `doc` (if it is still that process)."""
    from stockade.kernel.process import proc_start_time

    helper = doc.get("UserNet") or {}
    pid, started = int(helper.get("Pid") or 0), helper.get("StartTime")
    if pid and proc_start_time(pid) == started:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # (pasta ignores SIGTERM)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)  # ours when the monitor started it


def _run(args: list[str], what: str) -> None:
    import subprocess  # (here, not at the top: see host.MONITOR_MODULES)
    import tempfile

    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=20)
        except subprocess.TimeoutExpired:
            raise NetworkError(f"{what}: no answer in 20 s") from None
        if proc.returncode != 0:
            err.seek(0)
            lines = [ln for ln in err.read().decode(errors="replace").splitlines() if "syslog" not in ln]
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            taken = re.search(r"Failed to bind any port for '-([tu]) (?:(\S+)/)?(\d+)", last)
            if taken:  # (someone took it since it was checked free)
                proto, ip, port = "tcp" if taken[1] == "t" else "udp", taken[2] or "0.0.0.0", taken[3]
                raise NetworkError(f"Bind for {ip}:{port}/{proto} failed: port is already allocated")
            raise NetworkError(f"{what} failed: {last}")


def _start_pasta(options: list[str], pid: int, ports: list[PortBinding]) -> dict[str, Any]:
    import tempfile

    from stockade.kernel.process import proc_start_time

    with tempfile.TemporaryDirectory(prefix="stockade-pasta-") as tmp:
        pid_file = Path(tmp) / "pid"
        # -T/-U none: the host's own ports stay out of the container's loopback.
        args = ["pasta", "--config-net", "--quiet", "-T", "none", "-U", "none", "--pid", str(pid_file)]
        for proto, flag in (("tcp", "-t"), ("udp", "-u")):
            specs = [
                f"{b.host_ip + '/' if b.host_ip else ''}{b.host_port}:{b.container_port}"
                for b in ports
                if b.proto == proto
            ]
            for spec in specs or ["none"]:
                args += [flag, spec]
        args += [*options, str(pid)]
        _run(args, "pasta")
        helper = int(pid_file.read_text().split()[0])
    return {"Pid": helper, "StartTime": proc_start_time(helper)}


def _start_slirp(options: list[str], pid: int, ports: list[PortBinding]) -> dict[str, Any]:
    import subprocess
    import tempfile

    from stockade.kernel.process import proc_start_time

    settings = dict(o.split("=", 1) for o in options)
    api = Path(tempfile.mkdtemp(prefix="stockade-slirp-")) / "api.sock"
    args = ["slirp4netns", "--configure", f"--mtu={settings.get('mtu', '65520')}", f"--api-socket={api}"]
    if settings.get("allow_host_loopback") != "true":
        args.append("--disable-host-loopback")
    if "cidr" in settings:
        args.append(f"--cidr={settings['cidr']}")
    ready_r, ready_w = os.pipe()
    args += [f"--ready-fd={ready_w}", str(pid), "tap0"]
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        pass_fds=(ready_w,), start_new_session=True,
    )  # fmt: skip
    os.close(ready_w)
    try:
        with os.fdopen(ready_r, "rb") as ready:
            if ready.read(1) != b"1":
                proc.wait(5)
                detail = (
                    (proc.stderr.read().decode(errors="replace").strip().splitlines() or ["exited"])[-1]
                    if proc.stderr
                    else ""
                )
                raise NetworkError(f"slirp4netns failed: {detail}")
        if proc.stderr:
            proc.stderr.close()
        guest = "10.0.2.100" if "cidr" not in settings else ""
        for b in ports:
            _slirp_forward(api, b, guest)
    except BaseException:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        raise
    finally:
        with contextlib.suppress(OSError):
            api.unlink()
            api.parent.rmdir()
    return {"Pid": proc.pid, "StartTime": proc_start_time(proc.pid)}


def _slirp_forward(api: Path, b: PortBinding, guest: str) -> None:
    request = {"execute": "add_hostfwd", "arguments": {
        "proto": b.proto, "host_addr": b.host_ip or "0.0.0.0", "host_port": b.host_port, "guest_port": b.container_port,
        **({"guest_addr": guest} if guest else {}),
    }}  # fmt: skip
    deadline = time.monotonic() + 5
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        while True:
            try:
                s.connect(str(api))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise NetworkError("slirp4netns: its API socket never appeared") from None
                time.sleep(0.01)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        reply = json.loads(s.recv(65536) or b"{}")
    if "error" in reply:
        desc = reply["error"].get("desc", reply["error"])
        raise NetworkError(f"-p {b.host_port}:{b.container_port}/{b.proto}: slirp4netns: {desc}")
