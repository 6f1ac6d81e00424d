#!/usr/bin/env bash
# `make demo`: run an unprivileged container from the embedded busybox image and show its
# isolation: its hostname, PID 1, its uid_map (root inside is uid 100000 outside), its mounts.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=.venv/bin/stockade-runtime
work=$(mktemp -d /tmp/stockade-demo.XXXXXX)
chmod 755 "$work"  # the container's root (uid 100000 on the host) must reach its rootfs
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m stockade.image.busybox "$work/rootfs" --owner 100000:100000
.venv/bin/python - "$work" <<'PY'
import json, sys
from stockade.spec.defaults import default_config
script = r"""
echo "hostname inside:   $(hostname)"
echo "my pid inside:     $$ ($(cat /proc/1/comm) is PID 1)"
echo "id inside:         $(id)"
echo "uid_map:           $(cat /proc/self/uid_map | tr -s ' ')"
echo "capabilities:      $(grep CapEff /proc/self/status)"
echo "cgroup:            $(head -1 /proc/self/cgroup)"
echo "mounts inside:"
awk '{print "  " $5 "  (" $9 ")"}' /proc/self/mountinfo
"""
config = default_config(args=["sh", "-c", script], terminal=False)
config["linux"]["namespaces"].append({"type": "user"})
config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
config["hostname"] = "demo-container"
json.dump(config, open(sys.argv[1] + "/config.json", "w"), indent=2)
PY
echo "== host: $(hostname), running stockade-runtime run as $(id -un)"
$RUNTIME --root "$work/state" run --bundle "$work" stockade-demo
echo "== the container's processes ran as uid 100000+ on the host; nothing is left behind:"
ls "$work/state"
