"""Typed client of the Coordinator contract (web3.py 8), used by device nodes, the MQTT
bridge, the orchestrator and the tests.

    w3 = connect("http://127.0.0.1:8545")             # HTTP + ExtraDataToPOAMiddleware
    coord = Coordinator.deploy(w3, operator)           # operator: eth_account LocalAccount
    coord.register_devices([(addr, min_kw, max_kw), ...])
    sid = coord.open_session(feeder, settings, [addr, ...], deadline_blocks=20)
    dev = Coordinator(w3, coord.address, device_account)
    cur = dev.current()                                # CurrentVars | None (finalized)
    dev.submit(sid, cur.round, x)                      # x: np.ndarray (kW), rounded to 1e-9
    coord.wait_for_round(sid, cur.round + 1, timeout=60)
    coord.schedule(sid)                                # Schedule | None before finalization
    coord.rounds(sid), coord.submissions(sid)          # events: replay/verify from the chain

Transactions are signed locally (LocalAccount.sign_transaction + send_raw_transaction; no
node holds a device key) and sent one at a time per account, each waited for. Fees (the
chain's, chain/genesis.py): EIP-1559 with maxPriorityFeePerGas = 1 gwei (== every node's
--miner.gasprice, so txs relayed over p2p are mined) and maxFeePerGas = 2*baseFee + tip.
Gas: estimated for deploy/register/open (operator, rare); a fixed bound for submit/advance
(`close_gas_bound`), because whether a submission closes the round (~2.8M gas at T=96,
N=10, vs ~0.22M) is only known when it is mined. Nonces are tracked locally per account and
re-read from the node after a nonce error. Every revert surfaces as CoordinatorError with
the contract's reason: a dry run (eth_call) precedes each send, and a mined revert is
replayed to recover its reason.

Units: the client speaks kW, $/kWh, hours and plain floats; fixed_point.py converts.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from aggregator_contract import fixed_point as fp
from aggregator_contract.compile import compile_coordinator
from aggregator_contract.reference import AdmmSettings, Feeder
from chain.genesis import tx_fees

RECEIPT_TIMEOUT = 120.0


class CoordinatorError(RuntimeError):
    """A transaction or call the contract rejected (`reason` is its revert string), or that
    did not get mined."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


@dataclass(frozen=True)
class CurrentVars:
    session: int
    round: int
    rho: float
    deadline: int  # block number after which anyone may advance
    submitted: int  # submissions received in this round
    xbar: np.ndarray  # kW
    zbar: np.ndarray
    u: np.ndarray


@dataclass(frozen=True)
class RoundRecord:
    """One RoundClosed event. xbar, zbar in kW; u after residual balancing."""

    session: int
    round: int
    r: float
    s: float
    eps_pri: float
    eps_dual: float
    rho: float
    rho_next: float
    converged: bool
    stragglers: int
    xbar: np.ndarray
    zbar: np.ndarray
    u: np.ndarray
    block: int
    tx_hash: str


@dataclass(frozen=True)
class Submission:
    session: int
    round: int
    device: str
    x: np.ndarray  # kW, as the contract holds it
    block: int
    tx_hash: str


@dataclass(frozen=True)
class SessionInfo:
    """A session's parameters, from its SessionOpened event (floats, as given)."""

    session: int
    devices: list[str]
    feeder: Feeder
    settings: AdmmSettings
    deadline_blocks: int
    block: int


@dataclass(frozen=True)
class Schedule:
    session: int
    round: int  # the last round
    converged: bool  # False: max rounds reached
    block: int
    timestamp: int
    x: dict[str, np.ndarray]  # device address -> x_i (kW)


def connect(url: str, timeout: float = 60.0) -> Web3:
    """A web3 client on a node's HTTP endpoint, with Clique's ExtraDataToPOAMiddleware.
    (web3 8 has no synchronous WebSocket provider; use AsyncWeb3 for subscriptions.)"""
    from web3.middleware import ExtraDataToPOAMiddleware

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"connect({url!r}): expected an http(s):// URL")
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


def close_gas_bound(devices: int, slots: int) -> int:
    """Gas limit of a submission that may close the round (measured on geth: 2.84M at
    N=10, T=96; 3.30M in a session's first rounds, whose storage starts empty), with headroom
    (3.9M there)."""
    words = fp.words_for(slots)
    return 1_000_000 + devices * words * 8_000 + words * 40_000


class _Nonces:
    """Next nonce per (chain endpoint, address); one transaction at a time per account."""

    _lock = threading.Lock()
    _next: dict[tuple[int, str], int] = {}

    @classmethod
    def take(cls, w3: Web3, address: str) -> int:
        key = (id(w3.provider), address)
        with cls._lock:
            if key not in cls._next:
                cls._next[key] = w3.eth.get_transaction_count(address, "pending")
            n = cls._next[key]
            cls._next[key] = n + 1
            return n

    @classmethod
    def forget(cls, w3: Web3, address: str) -> None:
        with cls._lock:
            cls._next.pop((id(w3.provider), address), None)


@functools.cache
def _chain_id(w3: Web3) -> int:
    """The chain id of a connection, asked once (it never changes)."""
    return int(w3.eth.chain_id)


def _reason(err: Exception) -> str:
    msg = getattr(err, "message", None) or str(err)
    return msg.removeprefix("execution reverted: ").removeprefix("execution reverted")


@dataclass
class PendingTx:
    """A sent transaction; `receipt()` waits for it and raises with the revert reason."""

    w3: Web3
    tx: dict
    tx_hash: Any
    what: str

    def receipt(self, timeout: float = RECEIPT_TIMEOUT) -> Any:
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(self.tx_hash, timeout=timeout,
                                                               poll_latency=0.02)
        except Exception as e:  # noqa: BLE001 - web3's TimeExhausted and transport errors
            _Nonces.forget(self.w3, self.tx["from"])
            raise CoordinatorError(self.what,
                                   f"tx {self.tx_hash.hex()} not mined: {e}") from None
        if receipt["status"] != 1:
            call = {k: self.tx[k] for k in ("from", "to", "data", "value", "gas") if k in self.tx}
            try:
                self.w3.eth.call(call, receipt["blockNumber"] - 1)
                reason = "reverted (no reason: out of gas?)"
            except ContractLogicError as e:
                reason = _reason(e)
            raise CoordinatorError(self.what, f"tx {self.tx_hash.hex()} reverted: {reason}")
        return receipt


def send_tx(w3: Web3, account: LocalAccount, tx: dict, what: str, gas: int | None = None,
            timeout: float = RECEIPT_TIMEOUT, wait: bool = True) -> Any:
    """Sign, send and (unless `wait` is False: then a PendingTx) wait for `tx` (a dict with
    to/data/value); returns the receipt. Raises CoordinatorError with the revert reason.

    Without `gas`, eth_estimateGas is the dry run (it raises with the revert reason). With a
    fixed `gas` (the submissions, every round) there is no dry run: geth's estimate is a
    binary search of EVM runs, and for a round-closing submission each run is the whole
    aggregate update, on every device, every round. A submission that reverts is mined as a
    failed transaction (contract state unchanged) and its reason recovered by replaying it."""
    tx = {"from": account.address, "value": 0, **tx}
    if gas is None:
        try:
            gas = int(w3.eth.estimate_gas(tx) * 1.2) + 10_000
        except ContractLogicError as e:
            raise CoordinatorError(what, _reason(e)) from None
    base_fee = w3.eth.get_block("latest")["baseFeePerGas"]
    tx |= tx_fees(base_fee)
    tx["gas"] = gas
    tx["chainId"] = _chain_id(w3)
    for attempt in range(2):
        tx["nonce"] = _Nonces.take(w3, account.address)
        signed = account.sign_transaction(tx)
        try:
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
            break
        except Web3RPCError as e:
            _Nonces.forget(w3, account.address)
            if attempt or "nonce" not in str(e).lower():
                raise CoordinatorError(what, f"node refused the transaction: {e}") from None
    pending = PendingTx(w3, tx, tx_hash, what)
    return pending.receipt(timeout) if wait else pending


class Coordinator:
    """A deployed Coordinator. `account` signs transactions; None for read-only use."""

    def __init__(self, w3: Web3, address: str, account: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.account = account
        self.contract = w3.eth.contract(address=self.address, abi=compile_coordinator().abi)
        self.deploy_receipt: Any = None  # set by deploy()
        self._sizes: dict[int, int] = {}

    # ---- operator ----------------------------------------------------------------------

    @classmethod
    def deploy(cls, w3: Web3, operator: LocalAccount) -> Coordinator:
        """Deploy a new Coordinator; `operator` pays and becomes its operator."""
        art = compile_coordinator()
        receipt = send_tx(w3, operator, {"data": art.bytecode}, "deploy Coordinator")
        out = cls(w3, receipt["contractAddress"], operator)
        out.deploy_receipt = receipt
        return out

    def register_devices(self, entries: Iterable[tuple[str, float, float]]) -> Any:
        """Whitelist (address, min_kw, max_kw) entries (or update their bounds). Bounds are
        rounded to 1e-9 kW like submissions, so a value at a bound stays inside."""
        args = []
        for addr, lo, hi in entries:
            lo_i, hi_i = fp.to_fixed([lo, hi])
            args.append((to_checksum_address(addr), lo_i, hi_i))
        return self._transact(self.contract.functions.register_devices(args),
                              f"register_devices({len(args)} devices)")

    def open_session(self, feeder: Feeder, settings: AdmmSettings, devices: Sequence[str],
                     deadline_blocks: int) -> int:
        """Open the next session; returns its id."""
        t = feeder.slots
        params = (t, fp.wad(feeder.delta_h), fp.wad(feeder.gamma), fp.wad(settings.rho0),
                  fp.wad(settings.eps_abs), fp.wad(settings.eps_rel), fp.wad(settings.mu),
                  fp.wad(settings.tau), int(settings.max_rounds), int(deadline_blocks))
        fn = self.contract.functions.open_session(
            params, fp.pack_kw(feeder.price, fp.PRICE_SCALE), fp.pack_kw(feeder.capacity),
            fp.pack_kw(feeder.export_limit), [to_checksum_address(d) for d in devices])
        receipt = self._transact(fn, f"open_session({len(devices)} devices, T={t})")
        (ev,) = self.contract.events.SessionOpened().process_receipt(receipt)
        return int(ev["args"]["session"])

    # ---- devices and anyone ------------------------------------------------------------

    def submit(self, session: int, round: int, x: np.ndarray, wait: bool = True) -> Any:
        """Submit x_i (kW, length T) for the round; rounded to 1e-9 kW. Returns the receipt
        (or, with wait=False, a PendingTx whose receipt() waits)."""
        x = np.asarray(x, dtype=float)
        n = self._session_size(session)
        fn = self.contract.functions.submit(session, round, fp.pack_kw(x))
        return self._transact(fn, f"submit(session={session}, round={round})",
                              gas=close_gas_bound(max(n, 1), x.shape[0]), wait=wait)

    def topics(self, *events: str) -> list[str]:
        """Log topics (event signature hashes) of the named events, for subscriptions."""
        from eth_utils import event_abi_to_log_topic

        abis = {e["name"]: e for e in self.contract.abi if e.get("type") == "event"}
        return ["0x" + event_abi_to_log_topic(abis[name]).hex() for name in events]

    @staticmethod
    def rounded(x: np.ndarray) -> np.ndarray:
        """x as the contract stores it (1e-9 kW, rounded to nearest)."""
        return fp.from_fixed(fp.to_fixed(np.asarray(x, dtype=float)))

    def advance(self, session: int) -> Any:
        """Close the round after its deadline, stragglers keeping their previous x_i."""
        n = self._session_size(session)
        slots = int(self.contract.functions.params().call()[0])
        return self._transact(self.contract.functions.advance(session),
                              f"advance(session={session})", gas=close_gas_bound(n, slots))

    def publish_plan(self, session: int, words: Sequence[int]) -> Any:
        """After finalization: this device's on/off plans (mqtt_bridge.plan words)."""
        return self._transact(self.contract.functions.publish_plan(session, list(words)),
                              f"publish_plan(session={session}, {len(words)} words)")

    # ---- reads -------------------------------------------------------------------------

    def last_x(self, session: int, device: str) -> np.ndarray:
        """The x_i the contract holds for `device` (its last submission; zeros before)."""
        return fp.from_fixed(self.contract.functions.last_x(
            session, to_checksum_address(device)).call())

    def has_submitted(self, session: int, round: int, device: str) -> bool:
        return bool(self.contract.functions.has_submitted(
            session, round, to_checksum_address(device)).call())

    def plan_words(self, session: int, device: str) -> list[int]:
        """The plan words `device` published for `session` ([] before)."""
        return [int(w) for w in self.contract.functions.plan(
            session, to_checksum_address(device)).call()]

    def current(self) -> CurrentVars | None:
        """The open round's shared variables; None when no session is open."""
        c = self.contract.functions.current().call()
        if not c[0]:
            return None
        return CurrentVars(session=c[1], round=c[2], rho=fp.from_wad(c[3]), deadline=c[4],
                           submitted=c[5], xbar=fp.from_fixed(c[6]), zbar=fp.from_fixed(c[7]),
                           u=fp.from_fixed(c[8]))

    def session_id(self) -> int:
        return int(self.contract.functions.session_id().call())

    def session_devices(self, session: int) -> list[str]:
        return list(self.contract.functions.session_devices(session).call())

    def is_finalized(self, session: int) -> bool:
        return bool(self.contract.functions.finals(session).call()[0])

    def schedule(self, session: int, block: int | str = "latest") -> Schedule | None:
        """Every device's final x_i; None before finalization."""
        f = self.contract.functions.finals(session).call(block_identifier=block)
        if not f[0]:
            return None
        x = {}
        for d in self.session_devices(session):
            entry = self.contract.functions.schedule(session, d).call(block_identifier=block)
            x[d] = fp.from_fixed(entry[5])
        return Schedule(session=session, converged=bool(f[1]), round=int(f[2]),
                        block=int(f[3]), timestamp=int(f[4]), x=x)

    def session_info(self, session: int, from_block: int = 0) -> SessionInfo:
        """The parameters of `session`, from its SessionOpened event."""
        logs = self.contract.events.SessionOpened().get_logs(
            from_block=from_block, argument_filters={"session": session})
        if not logs:
            raise CoordinatorError(f"session_info({session})", "no SessionOpened event")
        a = logs[0]["args"]
        p = a["params"]
        t = int(p["slots"])
        feeder = Feeder(
            delta_h=fp.from_wad(p["delta_wad"]),
            price=fp.unpack_kw(a["price"], t, fp.PRICE_SCALE),
            capacity=fp.unpack_kw(a["capacity"], t),
            export_limit=fp.unpack_kw(a["export_limit"], t),
            gamma=fp.from_wad(p["gamma_wad"]))
        settings = AdmmSettings(
            rho0=fp.from_wad(p["rho0_wad"]), eps_abs=fp.from_wad(p["eps_abs_wad"]),
            eps_rel=fp.from_wad(p["eps_rel_wad"]), max_rounds=int(p["max_rounds"]),
            mu=fp.from_wad(p["mu_wad"]), tau=fp.from_wad(p["tau_wad"]))
        return SessionInfo(session, list(a["devices"]), feeder, settings,
                           int(p["deadline_blocks"]), logs[0]["blockNumber"])

    def rounds(self, session: int, from_block: int = 0) -> list[RoundRecord]:
        """Every closed round of `session` (RoundClosed events), in order."""
        t = self._slots(session)
        logs = self.contract.events.RoundClosed().get_logs(
            from_block=from_block, argument_filters={"session": session})
        out = []
        for lg in logs:
            a = lg["args"]
            out.append(RoundRecord(
                session=a["session"], round=a["round"], r=fp.from_wad(a["r"]),
                s=fp.from_wad(a["s"]), eps_pri=fp.from_wad(a["eps_pri"]),
                eps_dual=fp.from_wad(a["eps_dual"]), rho=fp.from_wad(a["rho"]),
                rho_next=fp.from_wad(a["rho_next"]), converged=a["converged"],
                stragglers=a["stragglers"], xbar=fp.unpack_kw(a["xbar"], t),
                zbar=fp.unpack_kw(a["zbar"], t), u=fp.unpack_kw(a["u"], t),
                block=lg["blockNumber"], tx_hash=lg["transactionHash"].hex()))
        return sorted(out, key=lambda r: r.round)

    def submissions(self, session: int, round: int | None = None,
                    from_block: int = 0) -> list[Submission]:
        """Submitted events of `session` (optionally one round), in chain order."""
        t = self._slots(session)
        filt: dict[str, Any] = {"session": session}
        if round is not None:
            filt["round"] = round
        logs = self.contract.events.Submitted().get_logs(from_block=from_block,
                                                         argument_filters=filt)
        return [Submission(a["session"], a["round"], a["device"], fp.unpack_kw(a["x"], t),
                           lg["blockNumber"], lg["transactionHash"].hex())
                for lg in logs for a in [lg["args"]]]

    def wait_for_round(self, session: int, round: int, timeout: float = 60.0,
                       poll: float = 0.2) -> CurrentVars | None:
        """Block until `session` is at `round` or later (returns its variables) or finalized
        (returns None). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            cur = self.current()
            if cur is not None and cur.session == session and cur.round >= round:
                return cur
            if self.is_finalized(session):
                return None
            if time.monotonic() > deadline:
                raise TimeoutError(f"session {session} round {round} not reached in {timeout}s")
            time.sleep(poll)

    def wait_finalized(self, session: int, timeout: float = 120.0,
                       poll: float = 0.2) -> Schedule:
        deadline = time.monotonic() + timeout
        while (sched := self.schedule(session)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"session {session} not finalized in {timeout}s")
            time.sleep(poll)
        return sched

    # ---- internals ---------------------------------------------------------------------

    def _session_size(self, session: int) -> int:
        """N of a session (fixed once open), read once."""
        if session not in self._sizes:
            self._sizes[session] = len(self.session_devices(session))
        return self._sizes[session]

    def _slots(self, session: int) -> int:
        return int(self.contract.functions.slots_of(session).call())

    def _transact(self, fn: Any, what: str, gas: int | None = None, wait: bool = True) -> Any:
        if self.account is None:
            raise CoordinatorError(what, "this Coordinator client has no account to sign with")
        tx = {"to": self.address, "data": fn._encode_transaction_data()}
        return send_tx(self.w3, self.account, tx, what, gas=gas, wait=wait)
