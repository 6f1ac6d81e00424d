"""Benchmark: what the default seccomp filter costs a syscall-heavy program.

    .venv/bin/python bench/seccomp_bench.py   (also run by make bench)

Runs a static program doing getppid() 1,000,000 times inside a container, with the default
profile and without a filter, and prints the per-call cost (the program times its own loop).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stockade.image.busybox import build_rootfs
from stockade.spec.defaults import default_config
from stockade.spec.profiles import DOCKER_DEFAULT_CAPS, default_seccomp

RUNTIME = str(Path(sys.executable).parent / "stockade-runtime")
LOOP_C = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 1000000; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e6);
    return 0;
}
"""


def main() -> int:
    if os.geteuid() != 0:
        print("bench: run as root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="stockade-seccomp-bench-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        rootfs = Path(build_rootfs(str(base / "rootfs")))
        (base / "loop.c").write_text(LOOP_C)
        subprocess.run(["gcc", "-static", "-O2", "-o", str(rootfs / "loop"), str(base / "loop.c")], check=True)
        results = {}
        for label, seccomp in (("no filter", None), ("default profile", default_seccomp(DOCKER_DEFAULT_CAPS))):
            config = default_config(args=["/loop"], terminal=False)
            config["root"]["path"] = str(rootfs)
            config["process"]["capabilities"] = {
                k: list(DOCKER_DEFAULT_CAPS) for k in ("bounding", "effective", "permitted")
            }
            if seccomp:
                config["linux"]["seccomp"] = seccomp
            (base / "config.json").write_text(json.dumps(config))
            samples = []
            for i in range(7):
                out = subprocess.run(
                    [RUNTIME, "--root", str(base / "state"), "run", "--bundle", str(base), f"s{i}"],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                samples.append(float(out))
            results[label] = statistics.median(samples)
        bare, filtered = results["no filter"], results["default profile"]
        print(f"getppid x 1,000,000 in a container: no filter {bare:.1f} ms, default profile {filtered:.1f} ms")
        print(f"  -> {(filtered - bare):.1f} ms more, {(filtered - bare):.1f} ns per syscall, {filtered / bare:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
