"""Compile Coordinator.vy with the pinned vyper for EVM `paris` (the chain is London-only:
no PUSH0). Cached in memory and on disk under build/, keyed by the source and compiler."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("Coordinator.vy")
BUILD_DIR = Path(__file__).resolve().parent.parent / "build" / "contracts"
EVM_VERSION = "paris"


@dataclass(frozen=True)
class Artifact:
    abi: list
    bytecode: str  # init code, 0x-prefixed
    bytecode_runtime: str


def _cache_key(src: str) -> str:
    import vyper

    h = hashlib.sha256()
    h.update(f"{vyper.__version__}|{EVM_VERSION}|".encode())
    h.update(src.encode())
    return h.hexdigest()[:24]


@functools.cache
def compile_coordinator(path: Path = SOURCE) -> Artifact:
    """ABI and bytecode of the Coordinator (about 4 s the first time, then from build/)."""
    src = Path(path).read_text()
    cache = BUILD_DIR / f"Coordinator-{_cache_key(src)}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
    else:
        import vyper
        from vyper.compiler.settings import Settings

        out = vyper.compile_code(
            src,
            output_formats=["abi", "bytecode", "bytecode_runtime"],
            settings=Settings(evm_version=EVM_VERSION),
        )
        data = {k: out[k] for k in ("abi", "bytecode", "bytecode_runtime")}
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(cache)  # atomic: parallel test workers never read half a file
    return Artifact(data["abi"], data["bytecode"], data["bytecode_runtime"])
