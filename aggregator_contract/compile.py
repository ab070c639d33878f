"""The compiled contracts, shipped as build artifacts (`aggregator_contract/artifacts/`).

Processes load the JSON artifact (ABI, init and runtime bytecode, compiler version, EVM
version, the source's sha256); nothing compiles at import. After editing a `.vy` file run
`make contracts` (`python -m aggregator_contract.compile`); `load` refuses an artifact
whose source hash no longer matches, and a test checks that the artifacts equal a fresh
compile. The EVM version comes from each source's `#pragma evm-version paris` (the chain is
London-level: no PUSH0).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"
CONTRACTS = ("Coordinator", "ScheduleRegistry", "Billing")
EVM_VERSION = "paris"


class StaleArtifact(RuntimeError):
    """The artifact was built from another version of the source."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list
    bytecode: str  # init code, 0x-prefixed
    bytecode_runtime: str
    compiler: str
    evm_version: str
    source_sha256: str

    @property
    def runtime_size(self) -> int:
        return (len(self.bytecode_runtime) - 2) // 2


def _sha(src: str) -> str:
    return hashlib.sha256(src.encode()).hexdigest()


def compile_source(name: str) -> Artifact:
    """Compile `<name>.vy` with the installed (pinned) vyper."""
    import vyper

    src = (HERE / f"{name}.vy").read_text()
    if f"#pragma evm-version {EVM_VERSION}" not in src:
        raise ValueError(f"{name}.vy: missing '#pragma evm-version {EVM_VERSION}'")
    out = vyper.compile_code(src, output_formats=["abi", "bytecode", "bytecode_runtime"])
    return Artifact(name, out["abi"], out["bytecode"], out["bytecode_runtime"],
                    f"vyper {vyper.__version__}", EVM_VERSION, _sha(src))


@functools.cache
def load(name: str) -> Artifact:
    """The shipped artifact of `name`; StaleArtifact if its source changed since."""
    path = ARTIFACTS / f"{name}.json"
    if not path.is_file():
        raise StaleArtifact(f"{path} missing: run `make contracts`")
    data = json.loads(path.read_text())
    art = Artifact(name=name, **data)
    src = HERE / f"{name}.vy"
    if src.is_file() and _sha(src.read_text()) != art.source_sha256:
        raise StaleArtifact(f"{path} was built from another {src.name}: run `make contracts`")
    return art


def write(art: Artifact) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    data = {k: v for k, v in art.__dict__.items() if k != "name"}
    path = ARTIFACTS / f"{art.name}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def main() -> int:
    for name in CONTRACTS:
        art = compile_source(name)
        path = write(art)
        print(f"{path.relative_to(HERE.parent)}: runtime {art.runtime_size} bytes "
              f"({art.compiler}, evm {art.evm_version})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
