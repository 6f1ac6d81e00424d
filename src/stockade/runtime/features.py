"""`features`: what this runtime supports, in the runtime-spec's features.md format."""

from __future__ import annotations

from stockade.kernel.caps import CAP_NAMES, last_cap
from stockade.spec.mountopts import FLAG_OPTIONS, PROPAGATION_OPTIONS
from stockade.spec.runtime import HOOK_KINDS, NAMESPACE_TYPES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def features() -> dict[str, Any]:
    from stockade.runtime.cgroups import detect_layout

    layout = detect_layout()
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": list(HOOK_KINDS),
        "mountOptions": sorted({"bind", "rbind", *FLAG_OPTIONS, *PROPAGATION_OPTIONS}),
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": list(CAP_NAMES[: last_cap() + 1]),
            "cgroup": {
                "v1": bool(layout.v1),
                "v2": layout.unified is not None,
                "systemd": False,
                "systemdUser": False,
                "rdma": False,
            },
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"io.github.stockade.runtime": "stockade-runtime"},
    }
