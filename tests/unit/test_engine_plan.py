"""Image config + run options -> OCI config, with Docker's rules for command, env and user."""

from __future__ import annotations

import pytest

from stockade.engine.idranges import IDMap
from stockade.engine.plan import PlanError, RunOptions, container_config, merge_env, process_args, resolve_user
from stockade.spec.image import parse_config
from stockade.spec.runtime import load_config

D = "sha256:" + "a" * 64
PASSWD = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\nbob:x:1000:1000::/home/bob:/bin/sh\n"
GROUP = "root:x:0:\nwww:x:33:\nbob:x:1000:\nstaff:x:50:bob,www\n"


def image(**cfg: object) -> object:
    return parse_config({"rootfs": {"type": "layers", "diff_ids": [D]}, "config": cfg}, "c")


def test_command_rules() -> None:
    img = image(Entrypoint=["/init"], Cmd=["serve"])
    assert process_args(img, RunOptions()) == ["/init", "serve"]  # type: ignore[arg-type]
    assert process_args(img, RunOptions(command=["sh"])) == ["/init", "sh"]  # type: ignore[arg-type]
    assert process_args(img, RunOptions(entrypoint=["/bin/sh"])) == ["/bin/sh"]  # type: ignore[arg-type]
    assert process_args(img, RunOptions(entrypoint=[], command=["ls"])) == ["ls"]  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="no command specified"):
        process_args(image(), RunOptions())  # type: ignore[arg-type]


def test_env_rules() -> None:
    env = merge_env(["A=1", "PATH=/img"], ["A=2", "FROM_HOST", "UNSET_HOST", "B="], {"FROM_HOST": "h"}, "box", tty=True)
    assert env == ["PATH=/img", "HOSTNAME=box", "A=2", "FROM_HOST=h", "B=", "TERM=xterm"]
    with pytest.raises(PlanError, match='invalid environment variable "=x"'):
        merge_env([], ["=x"], {}, "h", False)


def test_user_resolution() -> None:
    assert resolve_user("www", PASSWD, GROUP) == (33, 33, [50])
    assert resolve_user("1000", PASSWD, GROUP) == (1000, 1000, [50])
    assert resolve_user("bob:staff", PASSWD, GROUP) == (1000, 50, [])
    assert resolve_user("4242:4242", PASSWD, GROUP) == (4242, 4242, [])
    with pytest.raises(PlanError, match="unable to find user nobody"):
        resolve_user("nobody", PASSWD, GROUP)
    with pytest.raises(PlanError, match="unable to find group wheel"):
        resolve_user("bob:wheel", PASSWD, GROUP)


def test_container_config_is_secure_and_isolated() -> None:
    img = image(Cmd=["sh"], Env=["X=1"], WorkingDir="/srv", User="www")
    cfg = container_config(img, RunOptions(hostname="web"), IDMap(1_000_000, 2_000_000, 65536), {}, PASSWD, GROUP)  # type: ignore[arg-type]
    assert cfg["process"]["args"] == ["sh"] and cfg["process"]["cwd"] == "/srv"
    assert cfg["process"]["user"] == {"uid": 33, "gid": 33, "additionalGids": [50]}
    assert "X=1" in cfg["process"]["env"] and "HOSTNAME=web" in cfg["process"]["env"]
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1_000_000, "size": 65536}]
    assert cfg["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 2_000_000, "size": 65536}]
    assert cfg["process"]["noNewPrivileges"] is True and "seccomp" in cfg["linux"]
    assert "CAP_SYS_ADMIN" not in cfg["process"]["capabilities"]["bounding"]
    load_config(cfg, "/bundle")  # what the runtime accepts
    with pytest.raises(PlanError, match="not an absolute path"):
        container_config(img, RunOptions(workdir="rel"), IDMap(1, 1, 1), {}, PASSWD, GROUP)  # type: ignore[arg-type]


def test_with_user_adds_the_user_and_group_once() -> None:
    from stockade.engine.plan import with_user

    passwd, group = with_user("root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n", "alice", 1000, 1000, "/home/alice")
    assert passwd.splitlines() == ["root:x:0:0:root:/root:/bin/sh", "alice:*:1000:1000:alice:/home/alice:/bin/sh"]
    assert group.splitlines() == ["root:x:0:", "alice:x:1000:"]
    assert with_user(passwd, group, "bob", 1000, 1000, "/home/bob") == (passwd, group)  # the image's wins
    assert with_user("", "", "alice", 5, 6, "/") == ("alice:*:5:6:alice:/:/bin/sh\n", "alice:x:6:\n")
