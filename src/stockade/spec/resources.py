"""linux.resources validated (pure): bad values fail before a cgroup or process exists, with
the JSON path of the field. -1 means "unlimited" where the runtime spec says so."""

from __future__ import annotations

from stockade.errors import SpecError
from stockade.spec.reader import Reader

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEVICE_RULE_TYPES = ("a", "c", "b")


def _limit(r: Reader, key: str, unlimited_ok: bool = True) -> None:
    value = r.integer(key)
    if value is None:
        return
    if value < 0 and not (unlimited_ok and value == -1):
        raise r.fail(key, f"must be {'-1 (unlimited) or ' if unlimited_ok else ''}a non-negative number, not {value}")


def _cpuset(r: Reader, key: str) -> None:
    value = r.string(key)
    if not value:
        return
    for part in value.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and (not high.isdigit() or int(high) < int(low))):
            raise r.fail(key, f'"{value}" is not a list of numbers and ranges like "0-2,4"')


def check_resources(raw: dict[str, Any] | None, path: str = "linux.resources") -> None:
    if raw is None:
        return
    r = Reader(raw, path)
    memory = r.obj("memory")
    if memory is not None:
        for key in ("limit", "reservation", "swap", "kernel", "kernelTCP"):
            _limit(memory, key)
        swappiness = memory.integer("swappiness")
        if swappiness is not None and not 0 <= swappiness <= 100:
            raise memory.fail("swappiness", f"must be between 0 and 100, not {swappiness}")
        limit, swap = memory.integer("limit"), memory.integer("swap")
        if limit is not None and swap is not None and limit > 0 and 0 <= swap < limit:
            raise memory.fail("swap", f"memory+swap limit {swap} is below the memory limit {limit}")
    cpu = r.obj("cpu")
    if cpu is not None:
        _limit(cpu, "shares", unlimited_ok=False)
        _limit(cpu, "quota")
        _limit(cpu, "period", unlimited_ok=False)
        _limit(cpu, "burst", unlimited_ok=False)
        period = cpu.integer("period")
        if period is not None and not 1000 <= period <= 1_000_000:
            raise cpu.fail("period", f"must be between 1000 and 1000000 microseconds, not {period}")
        _cpuset(cpu, "cpus")
        _cpuset(cpu, "mems")
    pids = r.obj("pids")
    if pids is not None:
        limit = pids.integer("limit", required=True)
        if limit < -1:
            raise pids.fail("limit", f"must be -1 (unlimited), 0 (unlimited) or positive, not {limit}")
    for rule in r.objects("devices"):
        rule.flag("allow")
        kind = rule.string("type")
        if kind is not None and kind not in DEVICE_RULE_TYPES:
            raise rule.fail("type", f'unknown device type "{kind}" (a, c or b)')
        for key in ("major", "minor"):
            _limit(rule, key)
        access = rule.string("access", "rwm")
        if not access or any(c not in "rwm" for c in access):
            raise rule.fail("access", f'"{access}" must be made of r, w and m')
    block = r.obj("blockIO")
    if block is not None:
        weight = block.integer("weight")
        if weight is not None and not 10 <= weight <= 1000:
            raise block.fail("weight", f"must be between 10 and 1000, not {weight}")
    unified = r.string_map("unified")
    for key in unified:
        if "/" in key or "." not in key:
            raise SpecError(f"{path}.unified", f'"{key}" is not a cgroup v2 file name')
