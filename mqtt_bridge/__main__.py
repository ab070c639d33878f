"""`python -m mqtt_bridge {broker|bridge|emulator|watch} ...`: the process entry points."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = ("broker", "bridge", "emulator", "watch")
    if not argv or argv[0] not in commands:
        raise SystemExit(f"usage: python -m mqtt_bridge {{{'|'.join(commands)}}} ...")
    cmd, rest = argv[0], argv[1:]
    if cmd == "broker":
        from mqtt_bridge.broker import main as run
    elif cmd == "bridge":
        from mqtt_bridge.bridge import main as run
    elif cmd == "emulator":
        from mqtt_bridge.emulator import main as run
    else:
        from mqtt_bridge.watch import main as run
    run(rest)


if __name__ == "__main__":
    main()
