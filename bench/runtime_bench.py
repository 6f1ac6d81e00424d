"""Benchmark: stockade-runtime against crun and runc from Debian, side by side in one run.

    make bench            (or: .venv/bin/python bench/runtime_bench.py [--runs N])

Times `run` of /bin/true on the busybox bundle and `create` + `start` + `delete`, each with
and without a user namespace, and prints medians and the ratio to each peer. crun refuses a
hybrid cgroup layout (hugetlb on cgroup2, the rest on v1, as on this project's host), so the
benchmark re-runs itself in a private mount namespace with the cgroup2 mount hidden: every
runtime then sees the same v1-only layout. Nothing here is a test: no timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stockade.image.busybox import build_rootfs, chown_tree
from stockade.spec.defaults import default_config

STOCKADE = str(Path(sys.executable).parent / "stockade-runtime")
PEERS = {"stockade": STOCKADE, "crun": shutil.which("crun"), "runc": shutil.which("runc")}
USERNS_BASE = 100000


def make_bundle(base: Path, userns: bool) -> Path:
    bundle = base / ("bundle-userns" if userns else "bundle")
    bundle.mkdir()
    build_rootfs(str(bundle / "rootfs"))
    config = default_config(args=["/bin/true"], terminal=False)
    config["ociVersion"] = "1.0.2"  # the newest crun 1.8.1 accepts
    config["process"]["capabilities"] = {k: ["CAP_KILL"] for k in ("bounding", "effective", "permitted")}
    if userns:
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": USERNS_BASE, "size": 65536}]
        config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": USERNS_BASE, "size": 65536}]
        chown_tree(str(bundle / "rootfs"), USERNS_BASE, USERNS_BASE)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def timed(cmds: list[list[str]], stdin: int | None = None) -> float:
    start = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(binary: str, root: Path, bundle: Path, mode: str, runs: int) -> float:
    samples = []
    for i in range(runs + 2):
        cid = f"bench{i}"
        base = [binary, "--root", str(root)]
        if mode == "run":
            cmds = [[*base, "run", "--bundle", str(bundle), cid]]
        else:
            cmds = [
                [*base, "create", "--bundle", str(bundle), cid],
                [*base, "start", cid],
                [*base, "delete", "--force", cid],
            ]
        elapsed = timed(cmds)
        if mode == "run":
            subprocess.run([*base, "delete", "--force", cid], capture_output=True)
        if i >= 2:  # two warm-up runs
            samples.append(elapsed)
    return statistics.median(samples) * 1000


def import_time() -> float:
    """Median wall time of `stockade-runtime --version` (interpreter + imports), in ms."""
    samples = []
    for _ in range(15):
        start = time.perf_counter()
        subprocess.run([STOCKADE, "--version"], capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def python_floor() -> float:
    samples = []
    for _ in range(15):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def inner(runs: int) -> None:
    # Inside our private mount namespace: hide the cgroup2 mount so crun accepts the layout.
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], capture_output=True)
    peers = {name: path for name, path in PEERS.items() if path}
    with tempfile.TemporaryDirectory(prefix="stockade-bench-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        bundles = {False: make_bundle(base, False), True: make_bundle(base, True)}
        print(f"python -I -S -c pass: {python_floor():.1f} ms;  stockade-runtime --version: {import_time():.1f} ms")
        print(f"{'scenario':34} " + " ".join(f"{n:>10}" for n in peers) + "   stockade/crun  stockade/runc")
        for mode in ("run", "create+start+delete"):
            for userns in (False, True):
                row = {}
                for name, binary in peers.items():
                    root = base / f"state-{name}"
                    row[name] = measure(binary, root, bundles[userns], mode, runs)
                label = f"{mode} /bin/true{' (userns)' if userns else ''}"
                ratios = "".join(
                    f"   {row['stockade'] / row[p]:>11.2f}x" if p in row else "          n/a" for p in ("crun", "runc")
                )
                print(f"{label:34} " + " ".join(f"{row[n]:>8.1f}ms" for n in peers) + ratios, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (the peers and stockade run rootful containers here)", file=sys.stderr)
        return 1
    if args.inner:
        inner(args.runs)
        return 0
    cmd = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        __file__,
        "--inner",
        "--runs",
        str(args.runs),
    ]
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
