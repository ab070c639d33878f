"""Keys of a run, one file per account, under ``<run>/keys/``.

Layout (each account in its own file, so a process can be handed exactly one key):

    keys/operator.key              operator (deploys the contract, registers devices)
    keys/devices/<device_id>.key   one per device
    keys/meters/<device_id>.key    one per home's meter (posts its readings to Billing)
    keys/signers/<name>.json       Clique signer: Web3 Secret Storage (keystore v3) JSON
    keys/signers/<name>.pass       ... and its password, read by ``geth --password``

Format choice: operator and device keys are plain hex private keys (``0x`` + 64 hex digits,
one line) in files of mode 0600 -- a private lab chain gains nothing from encrypting them,
and decrypting a scrypt keystore costs ~0.1-1 s per process. Signer keys must live in a
geth keystore to be unlocked by ``geth --unlock``, so they are keystore JSON (scrypt with
light parameters, n=2**12) with a random password in a 0600 file next to them.
``load_account`` reads either format.

Keys are never overwritten: ensure_* returns the existing key if its file is present, so a
restarted run keeps its addresses (and its genesis stays valid).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

_DEVICE_ID = re.compile(r"^[a-z0-9_-]+$")
_SCRYPT_N = 2**12  # light: lab chain, and keeps geth's unlock and our decrypt fast


def keys_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "keys"


def operator_path(run_dir: str | Path) -> Path:
    return keys_dir(run_dir) / "operator.key"


def device_path(run_dir: str | Path, device_id: str) -> Path:
    if not _DEVICE_ID.match(device_id):
        raise ValueError(f"device id {device_id!r}: expected [a-z0-9_-]+ (used as a file name)")
    return keys_dir(run_dir) / "devices" / f"{device_id}.key"


def meter_path(run_dir: str | Path, device_id: str) -> Path:
    """The key of home ``device_id``'s meter (metering/): not the device's key, so the
    meter cannot submit schedules and the device cannot post readings."""
    return device_path(run_dir, device_id).parents[1] / "meters" / f"{device_id}.key"


def signer_path(run_dir: str | Path, name: str) -> Path:
    return keys_dir(run_dir) / "signers" / f"{name}.json"


def password_path(keystore: str | Path) -> Path:
    """The password file that goes with a keystore JSON file."""
    return Path(keystore).with_suffix(".pass")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file created with mode 0600 (no window with wider access)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written key


def _ensure_hex_key(path: Path) -> LocalAccount:
    if path.exists():
        return load_account(path)
    acct = Account.create()
    write_private(path, "0x" + bytes(acct.key).hex() + "\n")
    return acct


def ensure_operator(run_dir: str | Path) -> LocalAccount:
    """The run's operator account, created on first use."""
    return _ensure_hex_key(operator_path(run_dir))


def ensure_device(run_dir: str | Path, device_id: str) -> LocalAccount:
    """Device ``device_id``'s account, created on first use."""
    return _ensure_hex_key(device_path(run_dir, device_id))


def ensure_devices(run_dir: str | Path, device_ids: list[str]) -> dict[str, LocalAccount]:
    return {d: ensure_device(run_dir, d) for d in device_ids}


def ensure_meters(run_dir: str | Path, device_ids: list[str]) -> dict[str, LocalAccount]:
    """Each home's meter account, created on first use."""
    return {d: _ensure_hex_key(meter_path(run_dir, d)) for d in device_ids}


def ensure_signer(run_dir: str | Path, name: str) -> LocalAccount:
    """Clique signer ``name``: keystore JSON + password file, created on first use."""
    path = signer_path(run_dir, name)
    if path.exists():
        return load_account(path)
    acct = Account.create()
    password = secrets.token_hex(16)
    keystore = Account.encrypt(acct.key, password, kdf="scrypt", iterations=_SCRYPT_N)
    write_private(password_path(path), password)
    write_private(path, json.dumps(keystore))
    return acct


def load_account(path: str | Path) -> LocalAccount:
    """Load an account from a hex key file or a keystore JSON (+ its ``.pass`` file)."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise ValueError(f"key file {path}: cannot read ({e.strerror})") from e
    if text.startswith("{"):
        try:
            keystore = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"key file {path}: invalid keystore JSON ({e})") from e
        pw = password_path(path)
        if not pw.exists():
            raise ValueError(f"key file {path}: keystore without its password file {pw}")
        try:
            key = Account.decrypt(keystore, pw.read_text().strip())
        except ValueError as e:
            raise ValueError(f"key file {path}: cannot decrypt with {pw} ({e})") from e
        return Account.from_key(key)
    if not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", text):
        raise ValueError(f"key file {path}: expected 0x + 64 hex digits or a keystore JSON")
    return Account.from_key(text if text.startswith("0x") else "0x" + text)
