"""Fixtures and helpers of the contract tests: the Coordinator in titanoboa (py-evm,
in-process, for the contract's logic) and on a real geth v1.13.15 Clique chain started by
chain.network (for the web3 client). Import the fixtures into a test module by name."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import boa
import numpy as np
import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak

from aggregator_contract import fixed_point as fp
from aggregator_contract.client import blueprint_initcode, session_params
from aggregator_contract.compile import load as load_artifact
from aggregator_contract.reference import AdmmSettings, Feeder


def make_account(label: str):
    """A deterministic throwaway key (tests only)."""
    return Account.from_key(keccak(text=f"energy-chain-lab test {label}"))


def tou_feeder(slots: int, capacity: float = 40.0, export: float = 20.0) -> Feeder:
    hours = np.arange(slots) * 24.0 / slots
    price = np.where((hours >= 17) & (hours < 21), 0.35, 0.12)
    return Feeder(24.0 / slots, price, np.full(slots, capacity), np.full(slots, export), 0.01)


class BoxQuadratic:
    """A synthetic private problem with a closed form: f(x) = (q/2)||x - target||^2 on the box
    [lo, hi]; the local step is clip((q target + rho v) / (q + rho), lo, hi)."""

    def __init__(self, rng: np.random.Generator, slots: int) -> None:
        self.lo = -float(rng.uniform(1, 5))
        self.hi = float(rng.uniform(3, 10))
        self.q = float(rng.uniform(0.1, 2))
        self.target = rng.uniform(-4, 8, slots)

    def solve(self, v: np.ndarray, rho: float) -> np.ndarray:
        return np.clip((self.q * self.target + rho * v) / (self.q + rho), self.lo, self.hi)


@dataclass
class BoaSession:
    """A deployed Coordinator in boa with registered devices and an open session. Keeps
    each device's last accepted submission (packed), which `submit` sends as x_prev."""

    c: object  # boa ABI contract
    registry: object
    operator: str
    devices: list[str]
    feeder: Feeder
    settings: AdmmSettings
    deadline_s: int
    session: int
    bounds: list[tuple[float, float]]
    last: dict = field(default_factory=dict)  # device -> packed words of its last submission

    def submit(self, i: int, x: np.ndarray, round: int | None = None,
               session: int | None = None, x_prev: list[int] | None = None) -> int:
        """Submit as device i; returns the gas used by the call."""
        r = self.c.round() if round is None else round
        words = fp.pack_kw(x)
        prev = self.last.get(self.devices[i], []) if x_prev is None else x_prev
        with boa.env.prank(self.devices[i]):
            self.c.submit(self.session if session is None else session, r, words, prev)
        self.last[self.devices[i]] = words
        return self.c._computation.get_gas_used()

    def current(self):
        """(round, rho, xbar, zbar, u) as floats, or None once finalized."""
        cur = self.c.current()
        if not cur[0]:
            return None
        return (cur[2], fp.from_wad(cur[3]), fp.from_fixed(cur[6]), fp.from_fixed(cur[7]),
                fp.from_fixed(cur[8]))

    def final(self):
        """The registry's record of the session: (finalized, converged, round, ...)."""
        return self.registry.finals(self.session)

    def fingerprint(self) -> tuple:
        """Everything a rejected call could have changed, as seen from outside."""
        c = self.c
        return (c.current(), c.session_id(), c.round(), c.submitted(), c.rho_wad(),
                c.round_deadline(), c.is_finalized(self.session), c.operator(),
                self.registry.finals(self.session),
                tuple(c.device_bounds(d) for d in self.devices),
                tuple(c.x_hash(d) for d in self.devices),
                c.pending_operator(),
                tuple(self.registry.schedule(self.session, d) for d in self.devices))


def boa_deploy(operator: str):
    """(coordinator, registry) deployed and bound, as Coordinator.deploy does on geth."""
    reg_art, art = load_artifact("ScheduleRegistry"), load_artifact("Coordinator")
    reg_factory = boa.loads_abi(json.dumps(reg_art.abi), name="ScheduleRegistry")
    factory = boa.loads_abi(json.dumps(art.abi), name="Coordinator")
    with boa.env.prank(operator):
        bp_addr, _ = boa.env.deploy_code(bytecode=blueprint_initcode())
        reg_addr, _ = boa.env.deploy_code(bytecode=bytes.fromhex(reg_art.bytecode[2:]))
        init = bytes.fromhex(art.bytecode[2:]) + abi_encode(["address", "address"],
                                                            [str(reg_addr), str(bp_addr)])
        addr, _ = boa.env.deploy_code(bytecode=init)
        registry = reg_factory.at(reg_addr)
        registry.bind(addr)
    return factory.at(addr), registry


def boa_session(devices: int, slots: int, settings: AdmmSettings | None = None,
                deadline_s: int = 5,
                bounds: list[tuple[float, float]] | None = None,
                feeder: Feeder | None = None,
                participants: int | None = None) -> BoaSession:
    """Deploy, whitelist `devices` and open a session with the first `participants` of
    them (all by default)."""
    operator = boa.env.generate_address("operator")
    devs = [boa.env.generate_address(f"device{i}") for i in range(devices)]
    c, registry = boa_deploy(operator)
    if bounds is None:
        bounds = [(-5.0, 10.0)] * devices
    feeder = feeder or tou_feeder(slots)
    settings = settings or AdmmSettings()
    with boa.env.prank(operator):
        c.register_devices([(d, *fp.to_fixed(b)) for d, b in zip(devs, bounds, strict=True)])
        sid = c.open_session(session_params(feeder, settings, deadline_s),
                             fp.pack_kw(feeder.price, fp.PRICE_SCALE),
                             fp.pack_kw(feeder.capacity), fp.pack_kw(feeder.export_limit),
                             devs[:participants])
    return BoaSession(c, registry, operator, devs, feeder, settings, deadline_s, sid,
                      bounds)


@pytest.fixture
def boa_env():
    """A fresh py-evm environment per test (isolation without journal checkpoints)."""
    with boa.swap_env(boa.Env()):
        yield boa.env


@pytest.fixture(scope="module")
def geth_chain(tmp_path_factory):
    """A throwaway Clique network from chain.network: one signer (period 0) and one member
    node, with the operator and 4 device accounts funded. Yields (network, operator,
    devices)."""
    from chain.network import Network

    operator = make_account("operator")
    devices = [make_account(f"device{i}") for i in range(4)]
    run_dir = tmp_path_factory.mktemp("contract-chain")
    net = Network.start(run_dir, members=1, signers=1, period=0,
                        fund=[operator.address, *(d.address for d in devices)])
    try:
        yield net, operator, devices
    finally:
        net.stop()
