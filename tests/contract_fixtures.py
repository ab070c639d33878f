"""Fixtures and helpers of the contract tests: the Coordinator in titanoboa (py-evm,
in-process, for the contract's logic) and on a real geth v1.13.15 Clique chain started by
chain.network (for the web3 client). Import the fixtures into a test module by name."""

from __future__ import annotations

import json
from dataclasses import dataclass

import boa
import numpy as np
import pytest
from eth_account import Account
from eth_utils import keccak

from aggregator_contract import fixed_point as fp
from aggregator_contract.compile import compile_coordinator
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
    """A deployed Coordinator in boa with registered devices and an open session."""

    c: object  # boa ABI contract
    operator: str
    devices: list[str]
    feeder: Feeder
    settings: AdmmSettings
    deadline_blocks: int
    session: int
    bounds: list[tuple[float, float]]

    def submit(self, i: int, x: np.ndarray, round: int | None = None,
               session: int | None = None) -> int:
        """Submit as device i; returns the gas used by the call."""
        r = self.c.round() if round is None else round
        with boa.env.prank(self.devices[i]):
            self.c.submit(self.session if session is None else session, r, fp.pack_kw(x))
        return self.c._computation.get_gas_used()

    def current(self):
        """(round, rho, xbar, zbar, u) as floats, or None once finalized."""
        cur = self.c.current()
        if not cur[0]:
            return None
        return (cur[2], fp.from_wad(cur[3]), fp.from_fixed(cur[6]), fp.from_fixed(cur[7]),
                fp.from_fixed(cur[8]))

    def fingerprint(self) -> tuple:
        """Everything a rejected call could have changed, as seen from outside."""
        c = self.c
        return (c.current(), c.session_id(), c.round(), c.submitted(), c.rho_wad(),
                c.round_deadline(), c.finals(self.session), c.operator(),
                tuple(c.device_bounds(d) for d in self.devices),
                tuple(c.schedule(self.session, d) for d in self.devices))


def boa_deploy(operator: str):
    art = compile_coordinator()
    with boa.env.prank(operator):
        addr, _ = boa.env.deploy_code(bytecode=bytes.fromhex(art.bytecode[2:]))
    return boa.loads_abi(json.dumps(art.abi), name="Coordinator").at(addr)


def boa_session(devices: int, slots: int, settings: AdmmSettings | None = None,
                deadline_blocks: int = 5,
                bounds: list[tuple[float, float]] | None = None,
                feeder: Feeder | None = None) -> BoaSession:
    operator = boa.env.generate_address("operator")
    devs = [boa.env.generate_address(f"device{i}") for i in range(devices)]
    c = boa_deploy(operator)
    if bounds is None:
        bounds = [(-5.0, 10.0)] * devices
    feeder = feeder or tou_feeder(slots)
    settings = settings or AdmmSettings()
    with boa.env.prank(operator):
        c.register_devices([(d, *fp.to_fixed(b)) for d, b in zip(devs, bounds, strict=True)])
        sid = c.open_session(session_params(feeder, settings, deadline_blocks),
                             fp.pack_kw(feeder.price, fp.PRICE_SCALE),
                             fp.pack_kw(feeder.capacity), fp.pack_kw(feeder.export_limit), devs)
    return BoaSession(c, operator, devs, feeder, settings, deadline_blocks, sid, bounds)


def session_params(feeder: Feeder, s: AdmmSettings, deadline_blocks: int) -> tuple:
    return (feeder.slots, fp.wad(feeder.delta_h), fp.wad(feeder.gamma), fp.wad(s.rho0),
            fp.wad(s.eps_abs), fp.wad(s.eps_rel), fp.wad(s.mu), fp.wad(s.tau),
            int(s.max_rounds), int(deadline_blocks))


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
