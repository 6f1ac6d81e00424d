"""`stockade network create|ls|inspect|rm|prune|connect|disconnect`, with Docker's flags and columns."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from stockade.cli.common import UsageError, _go_template, _parser, each, print_docs
from stockade.cli.format import table


def _runroot(root: Path) -> Path:
    from stockade.engine.lifecycle import runroot_for

    return runroot_for(root)


def _options(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f'{flag} "{pair}": want KEY=VALUE')
        out[key] = value
    return out


def cmd_create(root: Path, argv: list[str]) -> int:
    from stockade.network.store import Networks

    p = _parser("stockade network create")
    p.add_argument("-d", "--driver", default="bridge")
    p.add_argument("--subnet", action="append", default=[])
    p.add_argument("--gateway", action="append", default=[])
    p.add_argument("--internal", action="store_true")
    p.add_argument("--ipv6", action="store_true")
    p.add_argument("-o", "--opt", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    p.add_argument("name")
    args = p.parse_args(argv)
    if args.driver != "bridge":
        raise UsageError(f'network create: driver "{args.driver}" is not supported (only bridge)')
    subnet, gateway, subnet6, gateway6 = _addressing(args.subnet, args.gateway, args.ipv6)
    options = _options(args.opt, "-o/--opt")
    known = {"isolate", "com.docker.network.bridge.name", "com.docker.network.bridge.enable_icc",
             "com.docker.network.driver.mtu", "mtu"}  # fmt: skip
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"-o {unknown[0]}: unknown option (want isolate=true, mtu=N, com.docker.network.bridge.name=NAME)"
        )
    if "mtu" in options:
        options["com.docker.network.driver.mtu"] = options.pop("mtu")
    mtu = options.get("com.docker.network.driver.mtu", "")
    if mtu and not (mtu.isdigit() and 68 <= int(mtu) <= 65535):
        raise UsageError(f"-o mtu={mtu}: want a number from 68 to 65535")
    net = Networks(root).create(args.name, subnet, gateway, args.internal, options, _options(args.label, "--label"),
                                ipv6=args.ipv6, subnet6=subnet6, gateway6=gateway6)  # fmt: skip
    print(net.id)
    return 0


def _addressing(subnets: list[str], gateways: list[str], ipv6: bool) -> tuple[Any, Any, Any, Any]:
    """--subnet/--gateway (each at most once per IP version; an IPv6 one needs --ipv6)."""
    from stockade.network.config import parse_gateway, parse_gateway6, parse_subnet, parse_subnet6

    v4 = [s for s in subnets if ":" not in s]
    v6 = [s for s in subnets if ":" in s]
    if len(v4) > 1 or len(v6) > 1:
        raise UsageError("--subnet: at most one IPv4 and one IPv6 subnet")
    if v6 and not ipv6:
        raise UsageError(f"--subnet {v6[0]}: an IPv6 subnet needs --ipv6")
    subnet = parse_subnet(v4[0]) if v4 else None
    subnet6 = parse_subnet6(v6[0]) if v6 else None
    gateway = gateway6 = None
    for text in gateways:
        if ":" in text:
            if subnet6 is None or gateway6 is not None:
                raise UsageError(f"--gateway {text}: needs an IPv6 --subnet (one gateway each)")
            gateway6 = parse_gateway6(text, subnet6)
        else:
            if subnet is None or gateway is not None:
                raise UsageError(f"--gateway {text}: needs --subnet (one gateway each)")
            gateway = parse_gateway(text, subnet)
    return subnet, gateway, subnet6, gateway6


def _listing(root: Path) -> list[Any]:
    from stockade.network.store import Networks

    networks = Networks(root)
    networks.find("bridge")  # the predefined networks exist from the first listing
    return sorted(networks.all(), key=lambda n: n.name)


def cmd_ls(root: Path, argv: list[str]) -> int:
    p = _parser("stockade network ls")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("--format", default="table")
    p.add_argument("--no-trunc", action="store_true")
    args = p.parse_args(argv)
    nets = _listing(root)
    for f in args.filter:
        key, _, value = f.partition("=")
        if key == "name":
            nets = [n for n in nets if value in n.name]
        elif key == "id":
            nets = [n for n in nets if n.id.startswith(value)]
        elif key == "driver":
            nets = [n for n in nets if n.driver == value]
        elif key == "label":
            k, _, v = value.partition("=")
            nets = [n for n in nets if k in n.doc["Labels"] and (not v or n.doc["Labels"][k] == v)]
        else:
            raise UsageError(f'--filter "{f}": unknown filter (want name, id, driver, label)')
    rows = [{"ID": n.id if args.no_trunc else n.id[:12], "Name": n.name, "Driver": n.driver, "Scope": "local",
             "Internal": str(n.internal).lower(), "CreatedAt": n.doc["Created"]} for n in nets]  # fmt: skip
    if args.quiet:
        for r in rows:
            print(r["ID"])
    elif args.format == "json":
        for r in rows:
            print(json.dumps(r))
    elif args.format in ("table", ""):
        print(
            table(
                ["NETWORK ID", "NAME", "DRIVER", "SCOPE"], [[r["ID"], r["Name"], r["Driver"], r["Scope"]] for r in rows]
            )
        )
    else:
        fmt = args.format.removeprefix("table ").replace("\\t", "\t")
        for r in rows:
            print(_go_template(fmt, r))
    return 0


def cmd_inspect(root: Path, argv: list[str]) -> int:
    from stockade.network.store import Networks

    p = _parser("stockade network inspect")
    p.add_argument("-f", "--format")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    networks = Networks(root)
    docs = []
    for name in args.names:
        doc = dict(networks.find(name).doc)
        doc["Containers"] = {
            k: {kk: vv for kk, vv in v.items() if kk != "Aliases"} for k, v in doc["Containers"].items()
        }
        docs.append(doc)
    print_docs(docs, args.format)
    return 0


def cmd_rm(root: Path, argv: list[str]) -> int:
    from stockade.engine.networking import remove_network

    p = _parser("stockade network rm")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    runroot = _runroot(root)
    return each(args.names, lambda n: remove_network(root, runroot, n))


def cmd_prune(root: Path, argv: list[str]) -> int:
    from stockade.engine.networking import remove_network, users
    from stockade.errors import StockadeError
    from stockade.network.config import PREDEFINED

    p = _parser("stockade network prune")
    p.add_argument("-f", "--force", action="store_true")
    args = p.parse_args(argv)
    if not args.force and sys.stdin.isatty():
        answer = input("WARNING! This will remove all custom networks not used by at least one container.\n"
                       "Are you sure you want to continue? [y/N] ")  # fmt: skip
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    removed = []
    runroot = _runroot(root)
    for net in _listing(root):
        if net.name in PREDEFINED or users(root, net.id) or net.members:
            continue
        try:
            removed.append(remove_network(root, runroot, net.id))
        except StockadeError as exc:
            print(f"stockade: {exc}", file=sys.stderr)
    if removed:
        print("Deleted Networks:\n" + "\n".join(removed))
    return 0


def cmd_connect(root: Path, argv: list[str]) -> int:
    from stockade.engine.containers import Containers
    from stockade.engine.networking import connect

    p = _parser("stockade network connect")
    p.add_argument("--ip", default="")
    p.add_argument("--alias", action="append", default=[])
    p.add_argument("network")
    p.add_argument("container")
    args = p.parse_args(argv)
    ctr = Containers(root).find(args.container)
    connect(root, _runroot(root), ctr, args.network, args.ip, args.alias)
    return 0


def cmd_disconnect(root: Path, argv: list[str]) -> int:
    from stockade.engine.containers import Containers
    from stockade.engine.networking import disconnect

    p = _parser("stockade network disconnect")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("network")
    p.add_argument("container")
    args = p.parse_args(argv)
    disconnect(root, _runroot(root), Containers(root).find(args.container), args.network)
    return 0


COMMANDS = {"create": cmd_create, "ls": cmd_ls, "list": cmd_ls, "inspect": cmd_inspect, "rm": cmd_rm,
            "remove": cmd_rm, "prune": cmd_prune, "connect": cmd_connect, "disconnect": cmd_disconnect}  # fmt: skip


def run(root: Path, command: str, argv: list[str]) -> int:
    if command not in COMMANDS:
        raise UsageError(f'unknown command "network {command}" (want {", ".join(sorted(COMMANDS))})')
    return int(COMMANDS[command](root, argv))
