"""Benchmark: TCP throughput into a container, host -> container, with iperf3 (Debian).

    make bench            (or: .venv/bin/python bench/network_bench.py [--seconds N])

One iperf3 server runs in a stockade container on the default bridge with its port published;
the host's iperf3 client measures, in one run:
  - through the published port on 127.0.0.1     (DNAT in the output hook, route_localnet, SNAT)
  - through the published port on the host's own address
  - directly to the container's address          (the veth and the bridge alone)
  - host loopback, no container                  (the ceiling)
The container runs the host's iperf3 binary and libraries, bind-mounted read-only (busybox has
none). Nothing is asserted: it prints Gbit/s and ratios. Goal: published >= 90% of direct.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STOCKADE = str(Path(sys.executable).parent / "stockade")
LIBDIR = "/usr/lib/x86_64-linux-gnu"
LOADER = f"{LIBDIR}/ld-linux-x86-64.so.2"


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.connect(("192.0.2.254", 9))
        return str(s.getsockname()[0])
    return ""


def iperf(address: str, port: int, seconds: int) -> float:
    """Gbit/s received, best of three (the first run warms caches and conntrack)."""
    best = 0.0
    for _ in range(3):
        for _attempt in range(50):
            out = subprocess.run(
                ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J"], capture_output=True, text=True
            )
            if out.returncode == 0:
                break
            time.sleep(0.1)  # the server is not listening yet
        else:
            raise RuntimeError(f"iperf3 to {address}:{port}: {out.stdout[-300:]}{out.stderr[-300:]}")
        best = max(best, json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9)
    return best


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("iperf3") or not os.path.exists(LOADER):
        print("network bench skipped: needs iperf3 (Debian package) on x86_64")
        return 0
    base = Path(tempfile.mkdtemp(prefix="stockade-net-bench-"))
    os.chmod(base, 0o711)
    env = {**os.environ, "STOCKADE_ROOT": str(base / "root"), "STOCKADE_HOST_IDLE": "30"}
    port = free_port()
    results: dict[str, float] = {}
    loopback = None
    try:
        run([STOCKADE, "image", "build-base", "busybox"], env)
        run([STOCKADE, "run", "-d", "--name", "iperf", "-p", f"{port}:5201",
             "-v", f"{LIBDIR}:{LIBDIR}:ro", "-v", "/usr/bin/iperf3:/iperf3:ro",
             "busybox", LOADER, "--library-path", LIBDIR, "/iperf3", "-s"], env)  # fmt: skip
        doc = json.loads(run([STOCKADE, "inspect", "iperf"], env).stdout)[0]
        direct = doc["NetworkSettings"]["IPAddress"]
        results["direct to the container's address"] = iperf(direct, 5201, args.seconds)
        results["published port on 127.0.0.1"] = iperf("127.0.0.1", port, args.seconds)
        host = host_address()
        if host:
            results[f"published port on {host}"] = iperf(host, port, args.seconds)
        loop_port = free_port()
        loopback = subprocess.Popen(["iperf3", "-s", "-p", str(loop_port)], stdout=subprocess.DEVNULL)
        results["host loopback (no container)"] = iperf("127.0.0.1", loop_port, args.seconds)
    finally:
        if loopback is not None:
            loopback.kill()
            loopback.wait()
        subprocess.run([STOCKADE, "rm", "-f", "iperf"], env=env, capture_output=True)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from stockade.engine.host import stop_host
        from stockade.engine.networking import take_down_all

        take_down_all(base / "root", base / "root" / "run")
        stop_host(base / "root" / "run")
        shutil.rmtree(base, ignore_errors=True)
    direct_rate = results["direct to the container's address"]
    print(f"\nnetwork benchmark: iperf3 TCP host -> container, best of 3 x {args.seconds} s")
    for scenario, rate in results.items():
        print(f"{scenario:40} {rate:7.2f} Gbit/s   {rate / direct_rate:5.2f}x direct")
    print("rootless (pasta vs slirp4netns): not measured - stockade has no rootless engine yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
