"""Per-run credentials and ACLs for the lab's broker.

Who may do what, derived from the actuators' conventions (conventions/):
    bridge        commands every actuator, reads their reports, owns the run's lab topics
                  and Home Assistant discovery configs
    emu-<n>       one emulated device: reads its own command topics, writes its own state,
                  acknowledgments and availability (and, for Shelly, its RPC answers), nothing
                  of any other device; so it can neither command a neighbour, nor forge its
                  acknowledgment, nor retain an `Offline` will in its name
    gw-<n>        an emulated gateway (Zigbee2MQTT's bridge state)
    observer      reads everything, writes nothing (`lab watch`, the live page)
    meter         reserved for the metering issue: reads everything
Files, in `RUN/broker/` (mode 0600): `passwd` (hashed by mosquitto_passwd), `acl`, and one
`<role>.url` per role holding `mqtt://user:password@host:port`, which a process is given as
`--url @RUN/broker/<role>.url`; `emulators.json` maps each emulated actuator (and gateway)
to its user. With MQTT_URL (an external broker) the lab manages no users: every process uses
the URL's own credentials and that broker's ACLs apply.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from conventions.shelly import CALLER
from mqtt_bridge import topics as tp
from mqtt_bridge.config import BridgeConfig

ROLES = ("bridge", "observer", "meter")


@dataclass
class User:
    name: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    acl: list[tuple[str, str]] = field(default_factory=list)  # (read|write|readwrite, topic)


def plan_users(cfg: BridgeConfig) -> dict[str, User]:
    """Every user of one run's broker with its ACL."""
    bridge = User("bridge", acl=[("readwrite", tp.lab_root(cfg.run) + "/#"),
                                 ("readwrite", tp.HA_PREFIX + "/#")])
    users = {"bridge": bridge, "observer": User("observer", acl=[("read", "#")]),
             "meter": User("meter", acl=[("read", "#")])}
    gateways: dict[str, User] = {}
    for i, a in enumerate(cfg.actuators):
        conv = a.convention
        bridge.acl += [("write", conv.command(True).topic)]
        bridge.acl += [("read", t) for t in conv.report_topics()]
        if a.real:
            continue
        emu = User(f"emu-{i}")
        emu.acl += [("read", t) for t in conv.command_topics()]
        writes = {m.topic for m in conv.state_messages(True)} | {
            conv.availability(True).topic, conv.will().topic}
        emu.acl += [("write", t) for t in sorted(writes)]
        if conv.protocol == "shelly":  # its RPC answers go to the caller's topic
            emu.acl.append(("write", f"{CALLER}/rpc"))
        users[f"actuator:{a.id}"] = emu
        gw = conv.gateway()
        if gw is not None and gw[0].topic not in gateways:
            g = User(f"gw-{len(gateways)}", acl=[("write", gw[0].topic)])
            gateways[gw[0].topic] = g
            users[f"gateway:{gw[0].topic}"] = g
    return users


def _private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def write_mosquitto(broker_dir: Path, users: dict[str, User]) -> tuple[Path, Path]:
    """`passwd` (hashed with mosquitto_passwd -U) and `acl` for mosquitto."""
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    passwd, acl = broker_dir / "passwd", broker_dir / "acl"
    _private(passwd, "".join(f"{u.name}:{u.password}\n" for u in users.values()))
    subprocess.run([exe, "-U", str(passwd)], check=True, capture_output=True)
    os.chmod(passwd, 0o600)
    lines = []
    for u in users.values():
        lines.append(f"user {u.name}")
        lines += [f"topic {access} {topic}" for access, topic in u.acl]
        lines.append("")
    _private(acl, "\n".join(lines))
    return passwd, acl


def url_for(base_url: str, user: User) -> str:
    scheme, rest = base_url.split("://", 1)
    return f"{scheme}://{quote(user.name, safe='')}:{quote(user.password, safe='')}@{rest}"


def write_urls(broker_dir: Path, base_url: str, users: dict[str, User]) -> None:
    """`<role>.url` per role and `emulators.json`, all 0600."""
    for role in ROLES:
        _private(broker_dir / f"{role}.url", url_for(base_url, users[role]) + "\n")
    emus = {k.split(":", 1)[1]: url_for(base_url, u) for k, u in users.items()
            if k.startswith(("actuator:", "gateway:"))}
    _private(broker_dir / "emulators.json", json.dumps(emus, indent=1))


def role_url(run_dir: Path, role: str) -> str | None:
    """A role's URL with its credentials, or the run's plain broker URL without auth."""
    d = Path(run_dir) / "broker"
    for f in (d / f"{role}.url", d / "url"):
        if f.exists():
            return f.read_text().strip()
    return None


def emulator_urls(run_dir: Path | None) -> dict[str, str]:
    f = Path(run_dir) / "broker" / "emulators.json" if run_dir else None
    return json.loads(f.read_text()) if f is not None and f.exists() else {}
