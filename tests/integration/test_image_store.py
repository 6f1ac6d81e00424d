"""The image store, root filesystems from images, and import/save/load through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import USERNS_BASE, Bundle, requires_root
from imagekit import oci_layout, sha, skopeo, tar_bytes
from stockade.image import rootfs
from stockade.image.store import DigestMismatch, Store
from stockade.spec.runtime import IDMapping

pytestmark = requires_root
STOCKADE = str(Path(sys.executable).parent / "stockade")
MAP = [IDMapping(0, USERNS_BASE, 65536)]


class Cli:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        raw = subprocess.run([STOCKADE, "--root", str(self.root), *args], capture_output=True, input=input, timeout=300)
        proc = subprocess.CompletedProcess(
            raw.args, raw.returncode, raw.stdout.decode(errors="replace"), raw.stderr.decode(errors="replace")
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"stockade {' '.join(args)} ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    @property
    def store(self) -> Store:
        return Store(self.root / "images")


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "data")


def layered_image(tmp_path: Path, store: Store) -> Any:
    """Three layers: a base, one that deletes and changes, one with an opaque directory."""
    base = tar_bytes(
        [
            {"name": "bin", "type": "dir"},
            {"name": "etc/hosts", "data": "base hosts"},
            {"name": "etc/motd", "data": "hello"},
            {"name": "var/lib/old1", "data": "1"},
            {"name": "var/lib/old2", "data": "2"},
            {"name": "owned", "data": "u", "uid": 1000, "gid": 1000},
        ]
    )
    mid = tar_bytes([{"name": "etc/.wh.motd", "data": ""}, {"name": "etc/hosts", "data": "mid hosts"}])
    top = tar_bytes([{"name": "var/lib/.wh..wh..opq", "data": ""}, {"name": "var/lib/new", "data": "n"}])
    layout = tmp_path / "layout"
    oci_layout(layout, [base, mid, top], tag="v1")
    skopeo("copy", f"oci:{layout}:v1", f"oci:{store.root}:localhost/layered:v1")
    return store.lookup("localhost/layered:v1")


def test_store_layout_is_readable_by_skopeo_and_umoci(cli: Cli, tmp_path: Path) -> None:
    cli("image", "build-base", "busybox")
    skopeo("copy", f"oci:{cli.store.root}:localhost/busybox:latest", f"docker-archive:{tmp_path / 'x.tar'}:a/b:1")
    out = subprocess.run(
        ["umoci", "unpack", "--image", f"{cli.store.root}:localhost/busybox:latest", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bundle/rootfs/bin/busybox").exists()
    assert cli("image", "verify").returncode == 0


def test_overlay_rootfs_with_whiteouts_and_idmapped_layers(cli: Cli, tmp_path: Path) -> None:
    store = cli.store.init()
    image = layered_image(tmp_path, store)
    container = tmp_path / "c1"
    fs = rootfs.prepare(store, image, container, MAP, MAP)
    try:
        assert (fs.driver, fs.idmap) == ("overlay", "idmapped-mount")
        target = fs.target
        assert (target / "etc/hosts").read_text() == "mid hosts"
        assert not (target / "etc/motd").exists()
        assert sorted(os.listdir(target / "var/lib")) == ["new"]
        assert os.stat(target / "owned").st_uid == USERNS_BASE + 1000
        assert os.stat(target / "etc/hosts").st_uid == USERNS_BASE
        # The shared layer itself is untouched: still the tar's IDs.
        base_layer = fs.lowers[-1]
        assert os.stat(base_layer / "owned").st_uid == 1000
        (target / "etc/hosts").write_text("changed")
        (target / "added").write_text("a")
        os.unlink(target / "var/lib/new")
        assert rootfs.diff(fs.upper, fs.lowers) == [
            ("A", "/added"),
            ("C", "/etc"),
            ("C", "/etc/hosts"),
            ("C", "/var"),
            ("C", "/var/lib"),
            ("D", "/var/lib/new"),
        ]  # type: ignore[arg-type]
    finally:
        rootfs.release(fs.target)


def test_chown_copy_and_copy_drivers(cli: Cli, tmp_path: Path) -> None:
    store = cli.store.init()
    image = layered_image(tmp_path, store)
    fs = rootfs.prepare(store, image, tmp_path / "c2", MAP, MAP, driver="overlay-chown")
    try:
        assert fs.idmap == "chown-copy"
        assert os.stat(fs.target / "owned").st_uid == USERNS_BASE + 1000
        assert not (fs.target / "etc/motd").exists()
    finally:
        rootfs.release(fs.target)
    fs = rootfs.prepare(store, image, tmp_path / "c3", MAP, MAP, driver="copy")
    assert fs.driver == "copy"
    assert (fs.target / "etc/hosts").read_text() == "mid hosts"
    assert not (fs.target / "etc/motd").exists()
    assert sorted(os.listdir(fs.target / "var/lib")) == ["new"]
    assert os.stat(fs.target / "owned").st_uid == USERNS_BASE + 1000


def test_container_runs_on_an_idmapped_image_rootfs(cli: Cli, tmp_path: Path, bundle: Bundle, runtime: Any) -> None:
    """busybox image -> overlay with idmapped layers -> a container in a user namespace sees its files as root's."""
    cli("image", "build-base", "busybox")
    store = cli.store
    shutil.rmtree(bundle.rootfs)  # the image provides it
    fs = rootfs.prepare(store, store.lookup("localhost/busybox"), bundle.path, MAP, MAP)
    try:
        bundle.userns_maps().sh("stat -c '%u:%g' /bin/busybox; echo hi > /tmp/x; cat /tmp/x")
        bundle.config["root"] = {"path": "rootfs", "readonly": False}
        assert runtime.run_output(bundle).split() == ["0:0", "hi"]
        assert rootfs.diff(fs.upper, fs.lowers) == [("C", "/tmp"), ("A", "/tmp/x")]  # type: ignore[arg-type]
    finally:
        rootfs.release(fs.target)


def test_import_with_changes_and_history(cli: Cli, tmp_path: Path) -> None:
    tar = tar_bytes([{"name": "hello", "data": "world"}])
    (tmp_path / "r.tar").write_bytes(tar)
    out = cli(
        "import",
        "-c",
        'CMD ["/hello"]',
        "-c",
        "ENV A=1 B=2",
        "-c",
        "EXPOSE 80",
        "-m",
        "mine",
        str(tmp_path / "r.tar"),
        "me/imp:1",
    )
    image_id = out.stdout.strip()
    doc = json.loads(cli("image", "inspect", "me/imp:1").stdout)[0]
    assert doc["Id"] == image_id
    assert doc["Config"]["Cmd"] == ["/hello"] and doc["Config"]["Env"] == ["A=1", "B=2"]
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}}
    assert doc["RootFS"]["Layers"] == [sha(tar)]
    history = cli("history", "me/imp:1").stdout.splitlines()
    assert history[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert history[1].startswith(image_id.split(":")[1][:12]) and history[1].rstrip().endswith("mine")
    listing = cli("images").stdout.splitlines()
    assert listing[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert listing[1].split()[:3] == ["me/imp", "1", image_id.split(":")[1][:12]]
    assert cli("images", "-q").stdout.strip() == image_id.split(":")[1][:12]
    # Bad input: a bad --change or a malicious tar leaves nothing in the store.
    blobs_before = sorted(os.listdir(cli.store.blobs))
    bad = cli("import", "-c", "RUN rm -rf /", str(tmp_path / "r.tar"), check=False)
    assert bad.returncode != 0 and "unsupported instruction 'RUN'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    (tmp_path / "evil.tar").write_bytes(tar_bytes([{"name": "../../evil", "data": "x"}]))
    bad = cli("import", str(tmp_path / "evil.tar"), "me/evil", check=False)
    assert bad.returncode == 1 and "climbs out of the layer" in bad.stderr
    assert cli("image", "prune").returncode == 0
    assert sorted(os.listdir(cli.store.blobs)) == blobs_before
    assert not [p for p in os.listdir(cli.store.layers) if p.startswith(".tmp")]


def test_save_load_roundtrip_with_skopeo(cli: Cli, tmp_path: Path) -> None:
    store = cli.store.init()
    layered_image(tmp_path, store)
    for fmt in ("docker-archive", "oci-archive"):
        archive = tmp_path / f"img-{fmt}.tar"
        cli("save", "--format", fmt, "-o", str(archive), "localhost/layered:v1")
        dest = tmp_path / f"copy-{fmt}"
        skopeo("copy", f"{fmt}:{archive}", f"oci:{dest}:x")
        assert (dest / "index.json").exists()
    # An archive skopeo wrote loads into a fresh store, and the image is the same.
    skopeo("copy", f"oci:{store.root}:localhost/layered:v1", f"docker-archive:{tmp_path / 'sk.tar'}:sk/img:2")
    other = Cli(tmp_path / "other")
    assert "Loaded image: sk/img:2" in other("load", "-i", str(tmp_path / "sk.tar")).stdout
    original = store.lookup("localhost/layered:v1")
    loaded = other.store.lookup("sk/img:2")
    assert loaded.config.diff_ids == original.config.diff_ids
    skopeo(
        "copy", f"oci:{store.root}:localhost/layered:v1", f"oci-archive:{tmp_path / 'sk-oci.tar'}:docker.io/sk/oci:3"
    )
    assert "Loaded image: sk/oci:3" in other("load", "-i", str(tmp_path / "sk-oci.tar")).stdout
    assert other("image", "verify").returncode == 0
    bad = other("load", "-i", str(tmp_path / "r.tar"), check=False)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1


def test_tag_rmi_holds_and_prune(cli: Cli, tmp_path: Path) -> None:
    cli("image", "build-base", "busybox")
    cli("tag", "localhost/busybox", "mine:1")
    store = cli.store
    image = store.lookup("mine:1")
    store.hold("container-abc", image.manifest_digest)
    refused = cli("rmi", "mine:1", check=False)
    assert refused.returncode == 0  # another name still points at it: only the name goes
    assert "Untagged: mine:1" in refused.stdout
    refused = cli("rmi", "localhost/busybox", check=False)
    assert refused.returncode == 1 and "in use by container container-abc" in refused.stderr
    assert cli("rmi", "-f", "localhost/busybox").returncode == 0
    assert cli("image", "prune").returncode == 0
    assert store.has_blob(image.manifest_digest) and store.has_blob(image.id)  # held: kept
    store.release("container-abc")
    cli("image", "prune")
    assert not os.listdir(store.blobs) and not os.listdir(store.layers)
    missing = cli("rmi", "nope", check=False)
    assert missing.returncode == 1 and "nope: image not known" in missing.stderr


def test_bad_blobs_never_land(tmp_path: Path) -> None:
    store = Store(tmp_path / "s").init()
    data = b"payload"
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        store.write_blob(sha(b"other"), len(data), [data])
    with pytest.raises(DigestMismatch, match="size mismatch"):
        store.write_blob(sha(data), 3, [data])
    assert not os.listdir(store.blobs) and not os.listdir(store.ingest)
    # Corruption after the fact is found by verify.
    digest = store.put_bytes(b"good")
    store.blob_path(digest).write_bytes(b"evil")
    problems = store.verify()
    assert problems and "content hashes to" in problems[0]


def test_reference_errors_are_one_line(cli: Cli) -> None:
    for args, text in [
        (("pull", "BusyBox"), "repository name must be lowercase"),
        (("pull", "a:b:c"), "invalid reference format"),
        (("image", "frobnicate"), 'unknown command "frobnicate"'),
        (("tag", "nothing", "x"), "nothing: image not known"),
    ]:
        proc = cli(*args, check=False)
        assert proc.returncode != 0
        assert text in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_import_from_stdin_gzip(cli: Cli) -> None:
    import gzip

    data = gzip.compress(tar_bytes([{"name": "f", "data": "1"}]))
    out = cli("import", "-", "stdin/img", input=data)
    assert out.stdout.startswith("sha256:")
    image = cli.store.lookup("stdin/img")
    assert image.config.diff_ids == [sha(tar_bytes([{"name": "f", "data": "1"}]))]


def test_zstd_and_uncompressed_layers_load(cli: Cli, tmp_path: Path) -> None:
    layout = tmp_path / "zl"
    first = tar_bytes([{"name": "z/file", "data": "zstd layer"}])
    oci_layout(layout, [first], tag="docker.io/me/zstd:1", compress="zstd")
    archive = tmp_path / "zl.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    assert "Loaded image: me/zstd:1" in cli("load", "-i", str(archive)).stdout
    image = cli.store.lookup("me/zstd:1")
    assert image.manifest.layers[0].media_type.endswith("+zstd")
    assert (cli.store.layers / image.config.diff_ids[0].split(":")[1] / "diff/z/file").read_text() == "zstd layer"


def test_many_layers_beyond_the_mount_option_limit(cli: Cli, tmp_path: Path) -> None:
    """150 layers: their paths add up to far more than the 4 KiB a mount option string allows."""
    layers = [
        tar_bytes([{"name": f"layer{i:03d}", "data": str(i)}, {"name": "top", "data": str(i)}]) for i in range(150)
    ]
    layout = tmp_path / "many"
    oci_layout(layout, layers, tag="docker.io/me/many:1", compress=False)
    archive = tmp_path / "many.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    cli("load", "-i", str(archive))
    store = cli.store
    image = store.lookup("me/many:1")
    assert sum(len(str(store.layers / d.split(":")[1] / "diff")) + 1 for d in image.config.diff_ids) > 4096
    for maps, name in (([], "plain"), (MAP, "mapped")):
        fs = rootfs.prepare(store, image, tmp_path / name, maps, maps)
        try:
            assert (fs.target / "top").read_text() == "149"
            assert len([n for n in os.listdir(fs.target) if n.startswith("layer")]) == 150
        finally:
            rootfs.release(fs.target)
