"""`stockade image ...` and the Docker-style short forms (pull, push, images, rmi, tag, save,
load, import, history, login, logout)."""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from stockade.cli.common import UsageError, _go_template, _Parser, _parser, print_docs  # noqa: F401 - re-exported
from stockade.cli.format import human_ago, human_size, parse_time, table, truncate
from stockade.errors import StockadeError
from stockade.image.store import DANGLING, Image, ImageError, Store
from stockade.spec.image import Reference, digest_hex, parse_platform, parse_reference

SHORT_FORMS = {
    "pull": "pull",
    "push": "push",
    "images": "ls",
    "rmi": "rm",
    "tag": "tag",
    "save": "save",
    "load": "load",
    "import": "import",
    "history": "history",
}
SUBCOMMANDS = (
    "pull",
    "push",
    "ls",
    "list",
    "inspect",
    "history",
    "tag",
    "rm",
    "prune",
    "save",
    "load",
    "import",
    "verify",
    "build-base",
)


def image_size(store: Store, image: Image) -> int:
    from stockade.image.layers import layer_size

    total = 0
    for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=False):
        size = layer_size(store, diff_id)
        total += size if size is not None else layer.size
    return total


# Commands ------------------------------------------------------------------------------------
def cmd_pull(store: Store, argv: list[str]) -> int:
    from stockade.image.transfer import pull

    p = _parser("stockade pull")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--platform")
    p.add_argument("--tls-verify", default="true", help="false: allow plain HTTP for this registry")
    p.add_argument("name")
    args = p.parse_args(argv)
    ref = parse_reference(args.name)
    want = parse_platform(args.platform) if args.platform else None
    result = pull(store, ref, want, quiet=args.quiet, insecure=args.tls_verify == "false")
    if args.quiet:
        print(result.image.id)
    else:
        print(f"Status: Downloaded newer image for {ref.familiar}\n{ref}")
    return 0


def cmd_push(store: Store, argv: list[str]) -> int:
    from stockade.image.transfer import push

    p = _parser("stockade push")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--tls-verify", default="true")
    p.add_argument("--chunk-size", type=int, default=0, help="upload in PATCH chunks of this many bytes")
    p.add_argument("--digestfile")
    p.add_argument("name")
    p.add_argument("destination", nargs="?")
    args = p.parse_args(argv)
    image = store.lookup(args.name)
    dest = parse_reference(args.destination or args.name)
    digest = push(store, image, dest, quiet=args.quiet, insecure=args.tls_verify == "false", chunk_size=args.chunk_size)
    if args.digestfile:
        Path(args.digestfile).write_text(digest)
    if not args.quiet:
        print(f"{dest.tag or 'latest'}: digest: {digest} size: {len(store.read_blob(image.manifest_digest))}")
    return 0


def cmd_ls(store: Store, argv: list[str]) -> int:
    p = _parser("stockade images")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("--digests", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("--format")
    p.add_argument("reference", nargs="?")
    args = p.parse_args(argv)
    rows = []
    for image in sorted(store.images(), key=lambda i: parse_time(i.config.created) or 0, reverse=True):
        names: list[Reference | None] = list(image.names) or [None]
        for name in names:
            if args.reference and (name is None or not _matches(name, args.reference)):
                continue
            rows.append((image, name))
    if args.quiet:
        idents = dict.fromkeys(image.id if args.no_trunc else image.short_id for image, _name in rows)
        if idents:
            print("\n".join(idents))
        return 0
    if args.format == "json":
        out = [_ls_json(store, image, name) for image, name in rows]
        print(json.dumps(out, indent=4))
        return 0
    if args.format:
        raise UsageError(f'--format "{args.format}": only "json" is supported')
    header = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "CREATED", "SIZE"]
    body = []
    for image, name in rows:
        repo = name.familiar_repository if name else "<none>"
        tag = (name.tag or "<none>") if name else "<none>"
        digest = next(
            (r.rpartition("@")[2] for r in image.repo_digests if name and r.startswith(name.repository + "@")), "<none>"
        )
        ident = image.id if args.no_trunc else image.short_id
        row = [
            repo,
            tag,
            *([digest] if args.digests else []),
            ident,
            human_ago(parse_time(image.config.created)),
            human_size(image_size(store, image)),
        ]
        body.append(row)
    print(table(header, body))
    return 0


def _matches(name: Reference, pattern: str) -> bool:
    want = parse_reference(pattern, default_tag=False)
    return name.repository == want.repository and (want.tag is None or name.tag == want.tag)


def _ls_json(store: Store, image: Image, name: Reference | None) -> dict[str, Any]:
    return {
        "Id": image.id,
        "Repository": name.familiar_repository if name else "<none>",
        "Tag": (name.tag or "<none>") if name else "<none>",
        "Names": [str(n) for n in image.names],
        "Digest": image.manifest_digest,
        "RepoDigests": image.repo_digests,
        "Created": image.config.created,
        "Size": image_size(store, image),
    }


def inspect_doc(store: Store, image: Image) -> dict[str, Any]:
    raw = image.config.raw
    return {
        "Id": image.id,
        "Digest": image.manifest_digest,
        "RepoTags": [n.familiar for n in image.names if n.tag],
        "RepoDigests": image.repo_digests,
        "Created": image.config.created,
        "Author": raw.get("author", ""),
        "Architecture": image.config.architecture,
        "Os": image.config.os,
        "Config": raw.get("config") or {},
        "Size": image_size(store, image),
        "RootFS": {"Type": "layers", "Layers": image.config.diff_ids},
        "Manifest": {
            "MediaType": "application/vnd.oci.image.manifest.v1+json",
            "Layers": [layer.to_json() for layer in image.manifest.layers],
        },
        "History": image.config.history,
        "Labels": image.config.labels,
    }


def cmd_inspect(store: Store, argv: list[str]) -> int:
    p = _parser("stockade image inspect")
    p.add_argument("--format", "-f")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    print_docs([inspect_doc(store, store.lookup(n)) for n in args.names], args.format)
    return 0


def cmd_history(store: Store, argv: list[str]) -> int:
    p = _parser("stockade history")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-H", "--human", default="true")
    p.add_argument("name")
    args = p.parse_args(argv)
    image = store.lookup(args.name)
    from stockade.image.layers import layer_size

    sizes = [
        layer_size(store, d) or layer.size
        for d, layer in zip(image.config.diff_ids, image.manifest.layers, strict=False)
    ]
    entries = []
    layer_index = 0
    for item in image.config.history:
        size = 0
        if not item.get("empty_layer") and layer_index < len(sizes):
            size = sizes[layer_index]
            layer_index += 1
        entries.append((item, size))
    entries.reverse()
    rows = []
    for i, (item, size) in enumerate(entries):
        ident = (image.id if args.no_trunc else image.short_id) if i == 0 else "<missing>"
        if args.quiet:
            rows.append([ident])
            continue
        created_by = str(item.get("created_by", ""))
        if not args.no_trunc:
            created_by = truncate(created_by, 45)
        created = (
            human_ago(parse_time(str(item.get("created", ""))))
            if args.human == "true"
            else str(item.get("created", ""))
        )
        shown_size = human_size(size) if args.human == "true" else str(size)
        rows.append([ident, created, created_by, shown_size, str(item.get("comment", ""))])
    if args.quiet:
        print("\n".join(r[0] for r in rows))
    else:
        print(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], rows))
    return 0


def cmd_tag(store: Store, argv: list[str]) -> int:
    p = _parser("stockade tag")
    p.add_argument("source")
    p.add_argument("target")
    args = p.parse_args(argv)
    image = store.lookup(args.source)
    target = parse_reference(args.target)
    if target.digest:
        raise UsageError(f"tag {args.target}: a tag cannot contain a digest")
    store.set_name(target, image.manifest_digest, len(store.read_blob(image.manifest_digest)))
    return 0


def cmd_rm(store: Store, argv: list[str]) -> int:
    p = _parser("stockade rmi")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    failed = 0
    for text in args.names:
        try:
            _remove_one(store, text, args.force)
        except StockadeError as exc:
            print(f"stockade: {exc}", file=sys.stderr)
            failed = 1
    return failed


def _remove_one(store: Store, text: str, force: bool) -> None:
    image = store.lookup(text)
    # A pull in progress holds the image too, but it is not a container using it.
    users = [h for h, d in store.holders().items()
             if d == image.manifest_digest and not h.startswith(("pull-", DANGLING))]  # fmt: skip
    by_id = digest_hex(image.id).startswith(text.removeprefix("sha256:"))
    targets = list(image.names) if by_id or len(image.names) <= 1 else [parse_reference(text)]
    if by_id and len(image.names) > 1 and not force:
        raise ImageError(
            f"{text}: image is referenced by {len(image.names)} names ({', '.join(n.familiar for n in image.names)}): remove them by name or use --force"
        )
    if users and len(targets) == len(image.names) and not force:
        user = users[0][4:16] if users[0].startswith("ctr-") else users[0]
        raise ImageError(f"{text}: image is in use by container {user} (use --force to remove the name anyway)")
    for ref in targets:
        if store.remove_name(ref):
            print(f"Untagged: {ref.familiar}")
    if len(targets) == len(image.names) and not users:
        store.forget_unnamed(image.manifest_digest)
        removed, _freed = store.collect_garbage(grace_seconds=float("inf"))
        for digest in removed:
            if not digest.startswith("layer"):
                print(f"Deleted: {digest}")


def cmd_prune(store: Store, argv: list[str]) -> int:
    p = _parser("stockade image prune")
    p.add_argument("-a", "--all", action="store_true", help="remove every image no container uses")
    p.add_argument("-f", "--force", action="store_true")
    args = p.parse_args(argv)
    holders = store.holders()
    used = {d for h, d in holders.items() if not h.startswith(DANGLING)}  # by containers, pulls
    for holder, digest in holders.items():  # dangling images (unnamed commits) nobody uses
        if holder.startswith(DANGLING) and digest not in used:
            store.forget_unnamed(digest)
    if args.all:
        for image in store.images():
            if image.manifest_digest not in used:
                for name in image.names:
                    store.remove_name(name)
                    print(f"untagged: {name.familiar}")
    removed, freed = store.collect_garbage()
    for digest in removed:
        print(f"deleted: {digest}")
    print(f"Total reclaimed space: {human_size(freed)}")
    return 0


def cmd_save(store: Store, argv: list[str]) -> int:
    from stockade.image.archive import SaveItem, save_docker_archive, save_oci_archive

    p = _parser("stockade save")
    p.add_argument("-o", "--output")
    p.add_argument("--format", default="docker-archive", choices=["docker-archive", "oci-archive"])
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    items = []
    for text in args.names:
        image = store.lookup(text)
        ref = None
        try:
            ref = parse_reference(text)
        except StockadeError:
            pass
        tags = [ref] if ref is not None and ref in image.names else []
        items.append(SaveItem(image, tags))
    if args.output is None and sys.stdout.isatty():
        raise UsageError("save: refusing to write an archive to a terminal (use -o FILE or redirect)")
    save = save_docker_archive if args.format == "docker-archive" else save_oci_archive
    if args.output is None:
        save(store, items, sys.stdout.buffer)
        return 0
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            save(store, items, f)
        os.rename(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return 0


def cmd_load(store: Store, argv: list[str]) -> int:
    from stockade.image.archive import load_archive

    p = _parser("stockade load")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--platform")
    args = p.parse_args(argv)
    loaded = load_archive(store, Path(args.input), parse_platform(args.platform) if args.platform else None)
    for image, tags in loaded:
        for tag in tags:
            print(f"Loaded image: {tag.familiar}")
        if not tags:
            print(f"Loaded image ID: {image.id}")
    return 0


def cmd_import(store: Store, argv: list[str]) -> int:
    from stockade.image.archive import import_tarball

    p = _parser("stockade import")
    p.add_argument("-c", "--change", action="append", default=[])
    p.add_argument("-m", "--message", default="")
    p.add_argument("file")
    p.add_argument("reference", nargs="?")
    args = p.parse_args(argv)
    ref = parse_reference(args.reference) if args.reference else None
    if args.file == "-":
        image = import_tarball(store, sys.stdin.buffer, ref, args.change, args.message, "import from stdin")
    else:
        try:
            f = open(args.file, "rb")  # noqa: SIM115
        except OSError as exc:
            raise ImageError(f"import {args.file}: {exc.strerror}") from None
        with f:
            image = import_tarball(store, f, ref, args.change, args.message, f"import {args.file}")
    print(image.id)
    return 0


def cmd_verify(store: Store, argv: list[str]) -> int:
    _parser("stockade image verify").parse_args(argv)
    problems = store.verify()
    for problem in problems:
        print(problem)
    if not problems:
        print(f"store {store.root}: {len(list(store.blobs.iterdir()))} blobs verified, no problems")
    return 1 if problems else 0


def cmd_build_base(store: Store, argv: list[str]) -> int:
    from stockade.image.base import build_busybox, build_debian

    p = _parser("stockade image build-base")
    p.add_argument("distro", choices=["debian", "busybox"])
    p.add_argument("--suite", default="bookworm")
    p.add_argument("--mirror")
    p.add_argument("--tag")
    p.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    args = p.parse_args(argv)
    if args.distro == "busybox":
        image = build_busybox(store, parse_reference(args.tag or "localhost/busybox:latest"), args.force)
    else:
        image = build_debian(
            store, args.suite, args.mirror, parse_reference(args.tag or f"localhost/debian:{args.suite}"), args.force
        )
    print(image.id)
    return 0


COMMANDS = {
    "pull": cmd_pull,
    "push": cmd_push,
    "ls": cmd_ls,
    "list": cmd_ls,
    "inspect": cmd_inspect,
    "history": cmd_history,
    "tag": cmd_tag,
    "rm": cmd_rm,
    "prune": cmd_prune,
    "save": cmd_save,
    "load": cmd_load,
    "import": cmd_import,
    "verify": cmd_verify,
    "build-base": cmd_build_base,
}


def run(store_root: Path, sub: str, argv: list[str]) -> int:
    if sub not in COMMANDS:
        raise UsageError(f'image: unknown command "{sub}" (want one of {", ".join(SUBCOMMANDS)})')
    store = Store(store_root).init()
    return COMMANDS[sub](store, argv)


# login/logout --------------------------------------------------------------------------------
def cmd_login(argv: list[str]) -> int:
    from stockade.image import credentials
    from stockade.image.registry import Registry, check_login

    p = _parser("stockade login")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--tls-verify", default="true")
    p.add_argument("server", nargs="?", default="docker.io")
    args = p.parse_args(argv)
    server = _server(args.server)
    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = args.password if args.password is not None else getpass.getpass("Password: ")
    if not username or not password:
        raise UsageError("login: username and password are required")
    host = "registry-1.docker.io" if server == "docker.io" else server
    check_login(Registry(host, insecure=args.tls_verify == "false", credentials=(username, password)))
    credentials.store(server, username, password)
    print("Login Succeeded")
    return 0


def cmd_logout(argv: list[str]) -> int:
    from stockade.image import credentials

    p = _parser("stockade logout")
    p.add_argument("server", nargs="?", default="docker.io")
    args = p.parse_args(argv)
    server = _server(args.server)
    if not credentials.remove(server):
        print(f"Not logged in to {server}")
        return 0
    print(f"Removing login credentials for {server}")
    return 0


def _server(text: str) -> str:
    for prefix in ("https://", "http://"):
        text = text.removeprefix(prefix)
    text = text.rstrip("/").removesuffix("/v1").removesuffix("/v2")
    return "docker.io" if text in ("index.docker.io", "registry-1.docker.io") else text
