"""linux.resources validation, size and duration parsing for update/events."""

from __future__ import annotations

import pytest

from stockade.cli.runtime import UsageError, _duration, _update_resources
from stockade.errors import ContainerError, SpecError
from stockade.runtime.resources import parse_bytes
from stockade.spec.resources import check_resources


@pytest.mark.parametrize(
    "raw,message",
    [
        (
            {"memory": {"limit": -5}},
            "linux.resources.memory.limit: must be -1 (unlimited) or a non-negative number, not -5",
        ),
        ({"memory": {"limit": 100, "swap": 50}}, "memory+swap limit 50 is below the memory limit 100"),
        ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness: must be between 0 and 100"),
        ({"cpu": {"period": 10}}, "linux.resources.cpu.period: must be between 1000 and 1000000"),
        ({"cpu": {"shares": -1}}, "linux.resources.cpu.shares"),
        ({"cpu": {"cpus": "2-1"}}, 'linux.resources.cpu.cpus: "2-1" is not a list'),
        ({"pids": {"limit": -2}}, "linux.resources.pids.limit"),
        (
            {"devices": [{"allow": True, "access": "rwx"}]},
            'linux.resources.devices[0].access: "rwx" must be made of r, w and m',
        ),
        ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight: must be between 10 and 1000, not 5"),
        ({"unified": {"../escape": "1"}}, "is not a cgroup v2 file name"),
    ],
)
def test_bad_resources(raw, message):
    with pytest.raises(SpecError) as info:
        check_resources(raw)
    assert message in str(info.value)


def test_good_resources():
    check_resources(
        {
            "memory": {"limit": -1, "swap": -1},
            "cpu": {"quota": -1, "period": 100000, "cpus": "0-1,3"},
            "pids": {"limit": 0},
        }
    )


@pytest.mark.parametrize(
    "text,value",
    [("1048576", 1 << 20), ("64m", 64 << 20), ("1G", 1 << 30), ("512kb", 512 << 10), ("-1", -1), ("1.5g", 3 << 29)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["lots", "12q", "", "m"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ContainerError):
        parse_bytes(text)


def test_durations():
    assert _duration("100ms") == pytest.approx(0.1)
    assert _duration("5s") == 5 and _duration("1m") == 60 and _duration("2") == 2
    with pytest.raises(UsageError):
        _duration("soon")


def test_update_flags_become_resources():
    res = _update_resources(
        {"memory": "64m", "cpu_quota": "20000", "cpu_period": "100000", "pids_limit": "20", "cpuset_cpus": "0"}
    )
    assert res == {
        "memory": {"limit": 64 << 20},
        "cpu": {"quota": 20000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 20},
    }


def test_rdma_lines():
    from stockade.runtime.cgroups.base import rdma_lines

    lines = rdma_lines({"rdma": {"mlx4_0": {"hcaHandles": 2, "hcaObjects": 2000}, "mlx5_1": {"hcaHandles": 3}}})
    assert lines == ["mlx4_0 hca_handle=2 hca_object=2000", "mlx5_1 hca_handle=3"]
