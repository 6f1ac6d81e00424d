"""Security layers applied at the end of set-up: seccomp (and, later, LSM profiles)."""

from __future__ import annotations

from stockade.errors import NotSupported
from stockade.spec.runtime import Config


def check_supported(config: Config) -> None:
    """Refuse, before anything is made, what this runtime cannot enforce yet."""
    if config.linux.seccomp is not None:
        raise NotSupported("linux.seccomp: seccomp filters are not supported yet")
    process = config.process
    if process is not None and process.apparmor_profile:
        raise NotSupported("process.apparmorProfile: AppArmor is not enabled on this host")
    if process is not None and process.selinux_label:
        raise NotSupported("process.selinuxLabel: SELinux is not enabled on this host")


def apply_seccomp(config: Config) -> None:
    """Load the seccomp filter: the last step before execve."""
    check_supported(config)
