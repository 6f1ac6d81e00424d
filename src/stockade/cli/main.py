"""`stockade`: the Docker-style CLI. Until the engine lands it offers `version` and `info`."""

from __future__ import annotations

import sys

from stockade import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(
            "usage: stockade version | info\n\nThe engine (run, ps, images...) is not built yet; use stockade-runtime."
        )
        return 0 if args else 1
    if args[0] in ("version", "--version", "-v"):
        print(f"stockade version {__version__}")
        return 0
    if args[0] == "info":
        from stockade.runtime.cgroups import detect_layout

        print(f"stockade {__version__}\ncgroup layout: {detect_layout().kind}")
        return 0
    print(f'stockade: unknown command "{args[0]}" (the engine is not built yet; see stockade-runtime)', file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
