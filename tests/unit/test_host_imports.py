"""What the monitor host imports before it forks the monitor zygote must register no at-fork
hooks: they run in every monitor forked later (threading's costs each ~0.25 MB of its own
pages). See engine/host.py, MONITOR_MODULES. Nor may it load OpenSSL's libcrypto (_hashlib,
~3 MB resident in the host): small documents are hashed by spec.image.sha256_digest."""

from __future__ import annotations

import subprocess
import sys

HOOKED = ("threading", "random", "logging", "concurrent.futures", "_hashlib")


def test_host_warm_up_imports_no_module_with_at_fork_hooks() -> None:
    code = (
        "import importlib, sys\n"
        "from stockade.engine.host import MONITOR_MODULES\n"
        "for name in MONITOR_MODULES: importlib.import_module(name)\n"
        "from stockade.cli import served\n"
        "served.warm_up()\n"
        f"print(' '.join(m for m in {HOOKED!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"imported at the host's warm-up: {done.stdout.strip()}"
