"""Image references, manifests, configs and --change parsing; Docker's human formats."""

from __future__ import annotations

import pytest

from stockade.cli.format import human_ago, human_size, parse_time
from stockade.errors import SpecError, StockadeError
from stockade.image.unpack import UnsafeLayer, clean_name
from stockade.spec.image import (
    OCI_LAYER_GZIP,
    Descriptor,
    Platform,
    apply_change,
    parse_config,
    parse_manifest,
    parse_reference,
    pick_platform,
)

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    "text, full, familiar",
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("user/app", "docker.io/user/app:latest", "user/app:latest"),
        ("index.docker.io/library/debian:12", "docker.io/library/debian:12", "debian:12"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1", "localhost:5000/a/b:v1"),
        ("quay.io/x/y@" + D1, "quay.io/x/y@" + D1, "quay.io/x/y@" + D1),
        ("127.0.0.1:5000/x:t@" + D1, "127.0.0.1:5000/x:t@" + D1, "127.0.0.1:5000/x:t@" + D1),
    ],
)
def test_references(text: str, full: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar


def test_reference_details() -> None:
    ref = parse_reference("busybox")
    assert (ref.registry_host, ref.path, ref.reference) == ("registry-1.docker.io", "library/busybox", "latest")
    assert parse_reference("a/b@" + D1).reference == D1


@pytest.mark.parametrize("text", ["", "Busybox", "a:b:c", "a/b:" + "x" * 200, "a@sha256:123", "a//b", "-a", "a b"])
def test_bad_references(text: str) -> None:
    with pytest.raises(StockadeError, match="invalid reference format"):
        parse_reference(text)


def manifest_doc(media: str = "application/vnd.docker.distribution.manifest.v2+json") -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": media,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": D1, "size": 10},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D2, "size": 20}],
    }


def test_docker_manifest_converts_to_oci() -> None:
    m = parse_manifest(manifest_doc(), "m")
    assert m.config.media_type == "application/vnd.oci.image.config.v1+json"
    assert m.layers[0].media_type == OCI_LAYER_GZIP
    assert m.to_json()["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


def test_manifest_errors_name_the_field() -> None:
    doc = manifest_doc()
    doc["layers"][0]["digest"] = "md5:abc"
    with pytest.raises(SpecError, match=r"m.layers\[0\].digest: invalid digest"):
        parse_manifest(doc, "m")
    doc = manifest_doc()
    doc["layers"][0]["mediaType"] = "application/x-rar"
    with pytest.raises(SpecError, match=r"m.layers\[0\].mediaType: unsupported layer media type"):
        parse_manifest(doc, "m")
    with pytest.raises(SpecError, match="unsupported manifest media type"):
        parse_manifest({"schemaVersion": 1, "mediaType": "application/vnd.docker.distribution.manifest.v1+json"}, "m")


def test_platform_pick() -> None:
    entries = [
        Descriptor("application/vnd.oci.image.manifest.v1+json", D1, 1, platform=Platform("linux", "arm64", "v8")),
        Descriptor("application/vnd.oci.image.manifest.v1+json", D2, 1, platform=Platform("linux", "amd64")),
    ]
    assert pick_platform(entries, Platform("linux", "amd64"), "x").digest == D2
    assert pick_platform(entries, Platform("linux", "arm64", "v8"), "x").digest == D1
    with pytest.raises(StockadeError, match="no image for platform linux/s390x"):
        pick_platform(entries, Platform("linux", "s390x"), "x")


def test_config_parsing() -> None:
    cfg = parse_config(
        {
            "rootfs": {"type": "layers", "diff_ids": [D1]},
            "config": {"Env": ["A=1"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}}},
        },
        "c",
    )
    assert (cfg.diff_ids, cfg.env, cfg.cmd, cfg.exposed_ports) == ([D1], ["A=1"], ["sh"], ["80/tcp"])
    with pytest.raises(SpecError, match=r"c.config.Env: must be an array of strings"):
        parse_config({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Env": "A=1"}}, "c")
    with pytest.raises(SpecError, match=r"c.rootfs.type"):
        parse_config({"rootfs": {"type": "squash"}}, "c")


def test_changes() -> None:
    config: dict = {}
    apply_change(config, 'CMD ["/bin/sh", "-c", "echo"]')
    apply_change(config, "ENTRYPOINT /init --flag")
    apply_change(config, "ENV A=1 B='two words'")
    apply_change(config, "ENV A 3")
    apply_change(config, "WORKDIR /srv")
    apply_change(config, "USER 1000:1000")
    apply_change(config, "EXPOSE 80 53/udp")
    apply_change(config, "LABEL a=b")
    c = config["config"]
    assert c["Cmd"] == ["/bin/sh", "-c", "echo"]
    assert c["Entrypoint"] == ["/bin/sh", "-c", "/init --flag"]
    assert c["Env"] == ["B=two words", "A=3"]
    assert (c["WorkingDir"], c["User"], c["Labels"]) == ("/srv", "1000:1000", {"a": "b"})
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    for bad in ("RUN x", "EXPOSE http", "CMD", "LABEL novalue"):
        with pytest.raises(StockadeError, match="--change"):
            apply_change({}, bad)


def test_clean_name() -> None:
    assert clean_name("/etc/passwd") == "etc/passwd"
    assert clean_name("./a/./b/") == "a/b"
    assert clean_name("a/../b") == "b"
    assert clean_name("./") == ""
    with pytest.raises(UnsafeLayer):
        clean_name("../x")


def test_human_formats() -> None:
    assert human_size(0) == "0B"
    assert human_size(1983000) == "1.983MB"
    assert human_size(172_200_000) == "172.2MB"
    assert human_ago(100.0, now=100.5) == "Less than a second ago"
    assert human_ago(0.0, now=3 * 7 * 86400) == "3 weeks ago"
    assert human_ago(0.0, now=7200) == "2 hours ago"
    assert parse_time("2026-01-01T00:00:00.123456789Z") == pytest.approx(1767225600.123456)
    assert parse_time("garbage") is None
