"""Benchmark: `stockade run --rm` / `exec` against podman and docker, and memory per idle container.

    make bench            (or: .venv/bin/python bench/engine_bench.py [--runs N] [--idle N])

All three run the same busybox rootfs (imported into each from one tar), with no network, and
`run --rm` once more on each tool's default bridge network. dockerd (Debian's docker.io) is
started here on a private root with --iptables=false (so it leaves the host's firewall alone; its
bridge runs then cost it no iptables rules) and stopped afterwards, docker0 removed; podman uses
a private root too (its default network: CNI's bridge plugin here). Memory per idle container is the PSS
(/proc/PID/smaps_rollup) of what each tool keeps per container (stockade: its monitors, plus the
monitor host and its monitor zygote shared by all of them, measured after 4 s without commands, when the
host no longer keeps a spare command worker; podman: conmon; docker:
containerd-shim-runc-v2, not counting dockerd and containerd), divided by the number of containers. Nothing is asserted: it prints medians and ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

STOCKADE = str(Path(sys.executable).parent / "stockade")
# podman's and docker's default nofile (1048576) and nproc are above what this host lets a
# process without CAP_SYS_RESOURCE set (they fail with EPERM): give them modest limits.
PEER_ULIMIT = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def run(cmd: list[str], env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, check=check, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def median_ms(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    samples = []
    for i in range(runs + 2):
        start = time.perf_counter()
        run(cmd, env)
        if i >= 2:  # two warm-ups
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def pids_named(*names: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if any(n.encode() in cmdline[0] for n in names):
                    found.append(int(entry))
    return found


class Tool:
    name = ""

    def run_cmd(self) -> list[str]:
        raise NotImplementedError

    def exec_cmd(self, ctr: str) -> list[str]:
        raise NotImplementedError


class Stockade(Tool):
    name = "stockade"

    def __init__(self, base: Path, tar: Path) -> None:
        from stockade.network.firewall import tables_present

        self.env = {**os.environ, "STOCKADE_ROOT": str(base / "stockade"), "STOCKADE_HOST_IDLE": "600"}
        self.monitors_only = 0.0
        self.tables_before = tables_present()
        run([STOCKADE, "import", str(tar), "benchbox"], self.env)

    def cli(self, *args: str) -> list[str]:
        return [STOCKADE, *args]

    def start(self, name: str) -> None:
        run([STOCKADE, "run", "-d", "--network", "none", "--name", name, "benchbox", "sleep", "3600"], self.env)

    def remove(self, names: list[str]) -> None:
        run([STOCKADE, "rm", "-f", *names], self.env, check=False)

    def per_container_pss(self, names: list[str]) -> float:
        """(The monitors' pids from the state files, not from `inspect`: a command would bring
        back the host's spare worker, which it keeps only while commands come.)"""
        import json

        monitors = []
        for d in (Path(self.env["STOCKADE_ROOT"]) / "containers").iterdir():
            if (d / "container.json").exists() and json.loads((d / "container.json").read_text())["Name"].lstrip(
                "/"
            ) in names:
                monitors.append(json.loads((d / "state.json").read_text())["MonitorPid"])
        self.monitors_only = sum(pss_kb(p) for p in monitors) / len(names)
        host = int((Path(self.env["STOCKADE_ROOT"]) / "run" / "monitor-host.pid").read_text())
        shared = [host, *children_of(host)]  # the host and its monitor zygote: one per run root
        return self.monitors_only + sum(pss_kb(p) for p in shared) / len(names)

    def stop(self) -> None:
        from stockade.engine.host import stop_host
        from stockade.engine.networking import take_down_all
        from stockade.network.firewall import remove_tables, tables_present

        root = Path(self.env["STOCKADE_ROOT"])
        take_down_all(root, root / "run")
        remove_tables(tables_present() - self.tables_before)  # the nft tables the bench made
        stop_host(root / "run")


class Podman(Tool):
    name = "podman"

    def __init__(self, base: Path, tar: Path) -> None:
        self.flags = ["--root", str(base / "podman"), "--runroot", str(base / "podman-run"), "--cgroup-manager", "cgroupfs",
                      "--events-backend", "none", "--runtime", "runc"]  # crun refuses this host's hybrid cgroups  # fmt: skip
        run(["podman", *self.flags, "import", str(tar), "benchbox"])
        self.tables_before = run(["nft", "list", "tables"], check=False).stdout  # CNI adds ip nat/filter

    def cli(self, *args: str) -> list[str]:
        return ["podman", *self.flags, *args]

    def start(self, name: str) -> None:
        run(self.cli("run", "-d", "--network", "none", *PEER_ULIMIT, "--name", name, "benchbox", "sleep", "3600"))

    def remove(self, names: list[str]) -> None:
        run(self.cli("rm", "-f", "-t", "0", *names), check=False)

    def per_container_pss(self, names: list[str]) -> float:
        return sum(pss_kb(p) for p in pids_named("conmon")) / len(names)

    def stop(self) -> None:
        run(self.cli("system", "reset", "-f"), check=False)
        subprocess.run(["ip", "link", "del", "cni-podman0"], capture_output=True)  # its bridge run's leftovers
        for table in ("ip nat", "ip filter"):
            if f"table {table}\n" not in self.tables_before:
                subprocess.run(["nft", "delete", "table", *table.split()], capture_output=True)


class Docker(Tool):
    name = "docker"

    def __init__(self, base: Path, tar: Path) -> None:
        self.sock = base / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}
        self.daemon = subprocess.Popen(
            ["dockerd", "--data-root", str(base / "docker"), "--exec-root", str(base / "docker-exec"), "-H", f"unix://{self.sock}",
             "--iptables=false", "--ip6tables=false", "--pidfile", str(base / "docker.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while run(["docker", "info"], self.env, check=False).returncode != 0:
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise RuntimeError("dockerd did not come up")
            time.sleep(0.5)
        run(["docker", "import", str(tar), "benchbox"], self.env)

    def cli(self, *args: str) -> list[str]:
        return ["docker", *args]

    def start(self, name: str) -> None:
        run(
            ["docker", "run", "-d", "--network", "none", *PEER_ULIMIT, "--name", name, "benchbox", "sleep", "3600"],
            self.env,
        )

    def remove(self, names: list[str]) -> None:
        run(["docker", "rm", "-f", *names], self.env, check=False)

    def per_container_pss(self, names: list[str]) -> float:
        return sum(pss_kb(p) for p in pids_named("containerd-shim")) / len(names)

    def stop(self) -> None:
        self.daemon.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.daemon.wait(30)
        subprocess.run(["umount", "-R", "-l", str(Path(self.sock).parent / "docker")], capture_output=True)
        subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)


@contextlib.contextmanager
def tools(base: Path, tar: Path) -> Iterator[list[Tool]]:
    made: list[Tool] = []
    try:
        made.append(Stockade(base, tar))
        if shutil.which("podman"):
            made.append(Podman(base, tar))
        if shutil.which("dockerd") and shutil.which("docker"):
            try:
                made.append(Docker(base, tar))
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                print(f"(docker skipped: {exc})")
        yield made
    finally:
        for t in made:
            t.stop()


def env_of(tool: Tool) -> dict[str, str] | None:
    return getattr(tool, "env", None)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=int, default=10)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="stockade-engine-bench-"))
    os.chmod(base, 0o711)
    tar = base / "rootfs.tar"
    rootfs = base / "rootfs"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from stockade.image.busybox import build_rootfs

    build_rootfs(str(rootfs))
    run(["tar", "-C", str(rootfs), "-cf", str(tar), "."])
    results: dict[str, dict[str, float]] = {}
    try:
        with tools(base, tar) as made:
            for t in made:
                env = env_of(t)
                r: dict[str, float] = {}
                peer = PEER_ULIMIT if t.name != "stockade" else []
                r["run --rm /bin/true"] = median_ms(
                    t.cli("run", "--rm", "--network", "none", *peer, "benchbox", "/bin/true"), args.runs, env
                )
                r["run --rm, default bridge"] = median_ms(
                    t.cli("run", "--rm", *peer, "benchbox", "/bin/true"), args.runs, env
                )
                t.start("bench-exec")
                r["exec /bin/true"] = median_ms(t.cli("exec", "bench-exec", "/bin/true"), args.runs, env)
                t.remove(["bench-exec"])
                names = [f"idle{i}" for i in range(args.idle)]
                for n in names:
                    t.start(n)
                time.sleep(4)  # idle: no command for a while (the stockade host's spare worker goes)
                r["PSS per idle container (KiB)"] = t.per_container_pss(names)
                if isinstance(t, Stockade):
                    print(f"(stockade: monitors alone {t.monitors_only:.0f} KiB per container; the rest is the "
                          "host and its zygote, one per run root, shared by all)")  # fmt: skip
                t.remove(names)
                results[t.name] = r
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ours = results["stockade"]
    print(f"\nengine benchmark: medians of {args.runs} (ms), {args.idle} idle containers for memory")
    header = f"{'scenario':32} " + " ".join(f"{n:>10}" for n in results) + "   peer/stockade"
    print(header)
    for scenario in ours:
        cells = " ".join(f"{results[n][scenario]:10.0f}" for n in results)
        ratios = ", ".join(
            f"{n} {results[n][scenario] / ours[scenario]:.2f}x" for n in results if n != "stockade" and ours[scenario]
        )
        print(f"{scenario:32} {cells}   {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
