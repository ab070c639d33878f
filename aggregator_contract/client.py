"""Typed client of the Coordinator and its ScheduleRegistry (web3.py 8), used by device
nodes, the MQTT bridge, the orchestrator and the tests.

    w3 = connect("http://127.0.0.1:8545")             # HTTP + ExtraDataToPOAMiddleware
    coord = Coordinator.deploy(w3, operator)           # deploys and binds the registry too
    coord.register_devices([(addr, min_kw, max_kw), ...])
    sid = coord.open_session(feeder, settings, [addr, ...], deadline_s=30)
    dev = Coordinator(w3, coord.address, device_account)
    cur = dev.current()                                # CurrentVars | None (finalized)
    dev.submit(sid, cur.round, x)                      # x: np.ndarray (kW), rounded to 1e-9
    coord.wait_for_round(sid, cur.round + 1, timeout=60)
    dev.publish_schedule(sid)                          # after finalization: x_i to the registry
    coord.schedule(sid)                                # Schedule | None before finalization
    coord.end_session(sid)                             # operator: stop it unconverged
    coord.propose_operator(addr); Coordinator(w3, coord.address, new).accept_operator()
    coord.rounds(sid), coord.submissions(sid)          # events: replay/verify from the chain

The boundary is typed: results are decoded by field name (web3's `decode_tuples`), and
every refusal of the contracts is raised as the subclass of CoordinatorError named after its
kind (WrongRound and its SessionEnded, NotWhitelisted and its NotPendingOperator,
OutOfBounds, AlreadySubmitted, BoundsFrozen, DeadlineNotReached, ...), NotMined when a
transaction did not get mined. A caller catches the kinds it expects and nothing else.

Transaction data is encoded with web3's public `Contract.encode_abi`, signed locally
(LocalAccount.sign_transaction + send_raw_transaction; no node holds a device key) and sent
one at a time per account. Fees (the chain's, chain/genesis.py): EIP-1559 with
maxPriorityFeePerGas = 1 gwei (== every node's --miner.gasprice, so txs relayed over p2p are
mined) and maxFeePerGas = 2*baseFee + tip. Gas: estimated for deploy/register/open (operator,
rare); a fixed bound for submit/advance (`close_gas_bound`), because whether a submission
closes the round is only known when it is mined. Nonces are tracked locally per account and
re-read from the node after a nonce error. A dry run (eth_estimateGas) precedes the
operator's sends; a mined revert is replayed to recover its reason.

The contract keeps only a hash of each device's last submission: `submit` sends the previous
x_i along (from memory, or after a restart from the device's last Submitted event).

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
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from aggregator_contract import fixed_point as fp
from aggregator_contract.compile import load as load_artifact
from aggregator_contract.reference import AdmmSettings, Feeder
from chain.genesis import tx_fees

RECEIPT_TIMEOUT = 120.0
REGISTER_BATCH = 500  # devices per register_devices transaction (~13M gas)


# ---------------------------------------------------------------- refusals


class CoordinatorError(RuntimeError):
    """A transaction or call the contracts rejected (`reason` is the revert string)."""

    reasons: tuple[str, ...] = ()  # revert strings of this kind (prefixes)

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class WrongRound(CoordinatorError):
    """For a round (or session) that is not the open one: the round moved on."""

    reasons = ("wrong round", "wrong session", "session finalized")


class SessionEnded(WrongRound):
    """The operator ended the session unconverged (`end_session`): no submission or
    advance is taken any more. A WrongRound, so that a device waiting on the round moving
    on sees it; the device process then stops."""

    reasons = ("session ended",)


class DeadlineNotReached(CoordinatorError):
    """`advance` before the round's deadline (block.timestamp < round start + deadline_s)."""

    reasons = ("round deadline not reached",)


class BoundsFrozen(CoordinatorError):
    """Re-bounding a device that takes part in the open session."""

    reasons = ("device in open session",)


class AlreadySubmitted(CoordinatorError):
    reasons = ("already submitted",)


class NotWhitelisted(CoordinatorError):
    """The sender (or a listed device) is not whitelisted, or not in the session."""

    reasons = ("not whitelisted", "device not whitelisted", "device not in session",
               "only operator", "only coordinator", "only deployer", "not a participant")


class NotPendingOperator(NotWhitelisted):
    """`accept_operator` by anyone but the proposed operator."""

    reasons = ("not the pending operator",)


class OutOfBounds(CoordinatorError):
    """A value outside what the contract accepts (device bounds, lengths, padding, limits)."""

    reasons = ("x out of bounds", "wrong length", "nonzero padding", "bound beyond",
               "min above max", "N * ")


class StalePrevious(CoordinatorError):
    """x_prev was not the device's last submission."""

    reasons = ("x_prev",)


class NotMined(CoordinatorError):
    """Sent but not mined in time, or refused by the node."""


class Refused(CoordinatorError):
    """Any other refusal (the reason says which)."""


# subclasses before their base: the first kind whose reasons match is raised
_KINDS: tuple[type[CoordinatorError], ...] = (SessionEnded, WrongRound, AlreadySubmitted,
                                              NotPendingOperator, NotWhitelisted,
                                              OutOfBounds, StalePrevious, DeadlineNotReached,
                                              BoundsFrozen)


def refusal(what: str, reason: str) -> CoordinatorError:
    """The typed exception of a revert reason."""
    for kind in _KINDS:
        if reason.startswith(kind.reasons):
            return kind(what, reason)
    return Refused(what, reason)


# ---------------------------------------------------------------- typed results


@dataclass(frozen=True)
class CurrentVars:
    session: int
    round: int
    rho: float
    deadline: int  # block timestamp (s) from which a participant or the operator may advance
    submitted: int  # submissions received in this round
    xbar: np.ndarray  # kW
    zbar: np.ndarray
    u: np.ndarray


@dataclass(frozen=True)
class RoundRecord:
    """One RoundClosed event. xbar, zbar in kW; u after residual balancing. `raw` holds the
    event's integers and packed words as emitted, for bit-exact verification."""

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
    import_excess_kw: float  # the schedule's largest excess over C (step 5)
    export_excess_kw: float  # ... below -E
    factor: float  # step 6's balancing factor
    xbar: np.ndarray
    zbar: np.ndarray
    u: np.ndarray
    block: int
    tx_hash: str
    raw: dict  # the event's integer fields and packed words, as emitted


@dataclass(frozen=True)
class Submission:
    session: int
    round: int
    device: str
    x: np.ndarray  # kW, as the contract holds it
    words: tuple[int, ...]  # as sent (packed)
    block: int
    tx_hash: str


@dataclass(frozen=True)
class SessionInfo:
    """A session's parameters, from its SessionOpened event (floats, as given)."""

    session: int
    devices: list[str]
    feeder: Feeder
    settings: AdmmSettings
    deadline_s: int  # round deadline, seconds of block time
    block: int
    raw_params: dict  # the contract's integers


@dataclass(frozen=True)
class Schedule:
    session: int
    round: int  # the last round
    converged: bool  # False: max rounds reached, or ended by the operator
    ended: bool  # ended unconverged by the operator (end_session)
    block: int
    timestamp: int
    x: dict[str, np.ndarray]  # device address -> x_i (kW)


def connect(url: str, timeout: float = 60.0) -> Web3:
    """A web3 client on a node (http(s):// or ipc://), with Clique's
    ExtraDataToPOAMiddleware. (web3 8 has no synchronous WebSocket provider; use AsyncWeb3
    for subscriptions.)"""
    from chain.network import make_w3

    return make_w3(url, timeout)


# Gas of a submission that may close the round, measured on geth v1.13.15 with `make
# bench-gas` (T=96): ~270k for a plain submission, 1.09-1.15M for the closing one, whatever
# N. The bound scales with T (storage words) and keeps ~60% headroom. (A block holds
# transactions by the gas they use: the limit only has to fit in what is left of the block.)
def close_gas_bound(slots: int) -> int:
    """Gas limit of a submission (or advance) that may close the round."""
    return 400_000 + fp.words_for(slots) * 60_000


def publish_gas(words: int) -> int:
    """Gas limit of publish_schedule / publish_plan of `words` packed words: each stored
    from zero (22,100) plus the registry's hash check against the Coordinator's word.
    A fixed limit, so that a device sends without a dry run."""
    return 200_000 + words * 25_000


def words_hash(words: Sequence[int]) -> int:
    """The 160-bit hash the contract keeps of a submission: keccak(abi_encode(uint256[]))."""
    return int.from_bytes(keccak(abi_encode(["uint256[]"], [list(words)])), "big") & (
        2**160 - 1)


# An ERC-5202 blueprint (0xFE7100 + initcode) whose initcode returns the bytes appended to it
# as the new contract's code: PUSH1 13, CODESIZE, SUB, DUP1, PUSH1 13, PUSH1 0, CODECOPY,
# PUSH1 0, RETURN (13 bytes, so the arguments start at byte 13). The Coordinator creates
# one data contract per session from it (the session's constants, read by EXTCODECOPY).
DATA_BLUEPRINT = bytes.fromhex("fe7100" "600d380380600d6000396000f3")


def blueprint_initcode(code: bytes = DATA_BLUEPRINT) -> bytes:
    """Deployment code that stores `code` as is: PUSH1 len, DUP1, PUSH1 11, PUSH1 0,
    CODECOPY, PUSH1 0, RETURN, then `code`."""
    return bytes([0x60, len(code)]) + bytes.fromhex("80600b6000396000f3") + code


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


_FEE_TTL_S = 1.0
_fees: dict[int, tuple[float, int]] = {}  # id(w3.provider) -> (when read, base fee)


def _base_fee(w3: Web3) -> int:
    """The latest block's base fee, read at most once a second per connection: a device
    process sending 500 submissions a round asks once, not 500 times. The fee cap is twice
    the base fee (tx_fees), and the base fee moves by at most 1/8 a block."""
    now = time.monotonic()
    key = id(w3.provider)
    seen = _fees.get(key)
    if seen is None or now - seen[0] > _FEE_TTL_S:
        seen = (now, int(w3.eth.get_block("latest")["baseFeePerGas"]))
        _fees[key] = seen
    return seen[1]


def _reason(err: Exception) -> str:
    msg = getattr(err, "message", None) or str(err)
    return msg.removeprefix("execution reverted: ").removeprefix("execution reverted")


@dataclass
class PendingTx:
    """A sent transaction; `receipt()` waits for it and raises the typed refusal."""

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
            raise NotMined(self.what, f"tx {self.tx_hash.hex()} not mined: {e}") from None
        # geth can serve a receipt before the node's head reaches its block (a block imported
        # in a sync batch): wait for the head, so that a read after this sees the write
        deadline = time.monotonic() + timeout
        while self.w3.eth.block_number < receipt["blockNumber"]:
            if time.monotonic() > deadline:
                raise NotMined(self.what, f"tx {self.tx_hash.hex()}: block "
                               f"{receipt['blockNumber']} never became this node's head")
            time.sleep(0.02)
        if receipt["status"] != 1:
            call = {k: self.tx[k] for k in ("from", "to", "data", "value", "gas") if k in self.tx}
            try:
                self.w3.eth.call(call, receipt["blockNumber"] - 1)
                reason = "reverted (no reason: out of gas?)"
            except ContractLogicError as e:
                reason = _reason(e) or "reverted without a reason (out of gas?)"
            except Web3RPCError as e:  # geth answers "out of gas" as a plain RPC error
                reason = _reason(e)
            err = refusal(self.what, reason)
            err.args = (f"{self.what}: tx {self.tx_hash.hex()} reverted: {reason}",)
            raise err
        return receipt


def send_tx(w3: Web3, account: LocalAccount, tx: dict, what: str, gas: int | None = None,
            timeout: float = RECEIPT_TIMEOUT, wait: bool = True) -> Any:
    """Sign, send and (unless `wait` is False: then a PendingTx) wait for `tx` (a dict with
    to/data/value, or a contract deployment); returns the receipt. Raises the typed refusal.

    Without `gas`, eth_estimateGas is the dry run (it raises with the revert reason). With a
    fixed `gas` (the submissions, every round) there is no dry run; a submission that
    reverts is mined as a failed transaction (state unchanged) and its reason recovered by
    replaying it."""
    tx = {"from": account.address, "value": 0, **tx}
    if gas is None:
        try:
            gas = int(w3.eth.estimate_gas(tx) * 1.2) + 10_000
        except ContractLogicError as e:
            raise refusal(what, _reason(e)) from None
    tx |= tx_fees(_base_fee(w3))
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
                raise NotMined(what, f"node refused the transaction: {e}") from None
    pending = PendingTx(w3, tx, tx_hash, what)
    return pending.receipt(timeout) if wait else pending


class Coordinator:
    """A deployed Coordinator (and its registry). `account` signs; None for read-only use."""

    def __init__(self, w3: Web3, address: str, account: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.account = account
        self.contract = w3.eth.contract(address=self.address, abi=load_artifact(
            "Coordinator").abi, decode_tuples=True)
        self._registry: Any = None
        self.deploy_receipt: Any = None  # set by deploy()
        self.open_receipt: Any = None  # set by open_session()
        self.deploy_gas: dict[str, int] = {}
        self._slots_of: dict[int, int] = {}
        self._sent: dict[int, list[int]] = {}  # session -> this account's last sent words

    @property
    def registry(self) -> Any:
        """The ScheduleRegistry contract (web3), found from the Coordinator."""
        if self._registry is None:
            addr = self.contract.functions.registry().call()
            self._registry = self.w3.eth.contract(
                address=addr, abi=load_artifact("ScheduleRegistry").abi, decode_tuples=True)
        return self._registry

    # ---- operator ----------------------------------------------------------------------

    @classmethod
    def deploy(cls, w3: Web3, operator: LocalAccount) -> Coordinator:
        """Deploy the data blueprint, a ScheduleRegistry and a Coordinator writing to it;
        `operator` pays, becomes the Coordinator's operator and binds the registry to it."""
        reg_art, coord_art = load_artifact("ScheduleRegistry"), load_artifact("Coordinator")
        r0 = send_tx(w3, operator, {"data": "0x" + blueprint_initcode().hex()},
                     "deploy data blueprint")
        reg_factory = w3.eth.contract(abi=reg_art.abi, bytecode=reg_art.bytecode)
        r1 = send_tx(w3, operator, {"data": reg_factory.constructor().data_in_transaction},
                     "deploy ScheduleRegistry")
        registry = w3.eth.contract(address=r1["contractAddress"], abi=reg_art.abi,
                                   decode_tuples=True)
        factory = w3.eth.contract(abi=coord_art.abi, bytecode=coord_art.bytecode)
        r2 = send_tx(w3, operator, {"data": factory.constructor(
            r1["contractAddress"], r0["contractAddress"]).data_in_transaction},
            "deploy Coordinator")
        out = cls(w3, r2["contractAddress"], operator)
        r3 = out._transact(registry.functions.bind(out.address), "bind ScheduleRegistry")
        out.deploy_receipt = r2
        out.deploy_gas = {"blueprint": int(r0["gasUsed"]), "registry": int(r1["gasUsed"]),
                          "coordinator": int(r2["gasUsed"]), "bind": int(r3["gasUsed"])}
        return out

    def register_devices(self, entries: Iterable[tuple[str, float, float]]) -> list[Any]:
        """Whitelist (address, min_kw, max_kw) entries (or update their bounds), in
        transactions of REGISTER_BATCH devices; returns their receipts. Bounds are rounded
        to 1e-9 kW like submissions, so a value at a bound stays inside."""
        args = []
        for addr, lo, hi in entries:
            lo_i, hi_i = fp.to_fixed([lo, hi])
            args.append((to_checksum_address(addr), lo_i, hi_i))
        return [self._transact(self.contract.functions.register_devices(
                    args[k:k + REGISTER_BATCH]),
                    f"register_devices({len(args[k:k + REGISTER_BATCH])} devices)")
                for k in range(0, len(args), REGISTER_BATCH)]

    def open_session(self, feeder: Feeder, settings: AdmmSettings, devices: Sequence[str],
                     deadline_s: int) -> int:
        """Open the next session, with rounds that may be advanced `deadline_s` seconds (of
        block time) after they start; returns its id."""
        t = feeder.slots
        fn = self.contract.functions.open_session(
            session_params(feeder, settings, deadline_s),
            fp.pack_kw(feeder.price, fp.PRICE_SCALE), fp.pack_kw(feeder.capacity),
            fp.pack_kw(feeder.export_limit), [to_checksum_address(d) for d in devices])
        receipt = self._transact(fn, f"open_session({len(devices)} devices, T={t})")
        self.open_receipt = receipt
        (ev,) = self.contract.events.SessionOpened().process_receipt(receipt)
        return int(ev["args"]["session"])

    def end_session(self, session: int) -> Any:
        """End the open session unconverged: devices' later submissions and advances are
        refused (SessionEnded); the registry records it as ended."""
        return self._transact(self.contract.functions.end_session(session),
                              f"end_session({session})")

    def propose_operator(self, new_operator: str) -> Any:
        """Step 1 of the hand-over: `new_operator` may then accept the role."""
        return self._transact(self.contract.functions.propose_operator(
            to_checksum_address(new_operator)), f"propose_operator({new_operator})")

    def accept_operator(self) -> Any:
        """Step 2 of the hand-over, signed by the proposed operator."""
        return self._transact(self.contract.functions.accept_operator(), "accept_operator()")

    def operator(self) -> str:
        return str(self.contract.functions.operator().call())

    def pending_operator(self) -> str:
        return str(self.contract.functions.pending_operator().call())

    # ---- devices and anyone ------------------------------------------------------------

    def submit(self, session: int, round: int, x: np.ndarray, wait: bool = True) -> Any:
        """Submit x_i (kW, length T) for the round; rounded to 1e-9 kW. The previous
        submission goes along (see module doc). Returns the receipt (or, with wait=False, a
        PendingTx whose receipt() waits)."""
        x = np.asarray(x, dtype=float)
        words = fp.pack_kw(x)
        prev = self.held_words(session)
        fn = self.contract.functions.submit(session, round, words, prev)
        out = self._transact(fn, f"submit(session={session}, round={round})",
                             gas=close_gas_bound(x.shape[0]), wait=wait)
        self._sent[session] = words
        return out

    def forget_sent(self, session: int) -> None:
        """Forget the last submission kept in memory (it was refused): the next submit
        reads the chain's."""
        self._sent.pop(session, None)

    def topics(self, *events: str) -> list[str]:
        """Log topics (event signature hashes) of the named events, for subscriptions."""
        return [self.contract.events[name].topic for name in events]

    @staticmethod
    def rounded(x: np.ndarray) -> np.ndarray:
        """x as the contract stores it (1e-9 kW, rounded to nearest)."""
        return fp.from_fixed(fp.to_fixed(np.asarray(x, dtype=float)))

    def advance(self, session: int) -> Any:
        """Close the round after its deadline, stragglers keeping their previous x_i."""
        return self._transact(self.contract.functions.advance(session),
                              f"advance(session={session})",
                              gas=close_gas_bound(self._slots(session)))

    def publish_schedule(self, session: int, device: str | None = None,
                         wait: bool = True) -> Any:
        """After finalization: copy `device`'s (default: this account's) final x_i into the
        registry. Anyone may; the contract checks it against the device's last hash."""
        device = to_checksum_address(device or self._me())
        own = self.account is not None and device == self.account.address
        words = self.held_words(session) if own else self.last_words(session, device)
        if not words:
            raise Refused(f"publish_schedule({device})", "device never submitted")
        return self._transact(self.registry.functions.publish_schedule(session, device, words),
                              f"publish_schedule(session={session}, {device})",
                              gas=publish_gas(len(words)), wait=wait)

    def publish_plan(self, session: int, words: Sequence[int], wait: bool = True) -> Any:
        """After finalization: this device's on/off plans (mqtt_bridge.plan words), to the
        registry (which checks with the Coordinator that the sender took part)."""
        return self._transact(self.registry.functions.publish_plan(session, list(words)),
                              f"publish_plan(session={session}, {len(words)} words)",
                              gas=publish_gas(len(words)), wait=wait)

    # ---- reads -------------------------------------------------------------------------

    def last_words(self, session: int, device: str) -> list[int]:
        """`device`'s last submission in `session`, packed ([] before its first): from
        its last Submitted event, checked against the hash the contract keeps."""
        device = to_checksum_address(device)
        kept = self.contract.functions.x_hash(device).call()
        sid, rnd, h = int(kept.session), int(kept.rounds), int(kept.hash)
        if sid != session or h == 0:
            return []
        logs = self.contract.events.Submitted().get_logs(
            from_block=0, argument_filters={"session": session, "round": rnd - 1,
                                            "device": device})
        for lg in reversed(logs):
            words = [int(w) for w in lg["args"]["x"]]
            if words_hash(words) == h:
                return words
        raise Refused(f"last_words({device})", f"no Submitted event matches its hash "
                      f"(session {session}, round {rnd - 1})")

    def held_words(self, session: int) -> list[int]:
        """What the contract holds as this account's last submission, packed ([] before
        its first): the last one sent (a refused one is forgotten: `forget_sent`), else
        the chain's (after a restart). Should the memory be wrong, the contract refuses
        with StalePrevious and the device process restarts from the chain."""
        sent = self._sent.get(session)
        if sent is not None:
            return sent
        return self.last_words(session, self._me())

    def held_x(self, session: int) -> np.ndarray:
        """held_words in kW (zeros before the first submission): the x_i this account's
        device pulls its next local step towards."""
        words = self.held_words(session)
        t = self._slots(session)
        return fp.unpack_kw(words, t) if words else np.zeros(t)

    def last_x(self, session: int, device: str) -> np.ndarray:
        """The x_i the contract counts for `device` (its last submission; zeros before)."""
        words = self.last_words(session, device)
        t = self._slots(session)
        return fp.unpack_kw(words, t) if words else np.zeros(t)

    def has_submitted(self, session: int, round: int, device: str) -> bool:
        return bool(self.contract.functions.has_submitted(
            session, round, to_checksum_address(device)).call())

    def plan_words(self, session: int, device: str) -> list[int]:
        """The plan words `device` published for `session` ([] before)."""
        return [int(w) for w in self.registry.functions.plan(
            session, to_checksum_address(device)).call()]

    def current(self) -> CurrentVars | None:
        """The open round's shared variables; None when no session is open."""
        c = self.contract.functions.current().call()
        if not c.active:
            return None
        return CurrentVars(session=c.session, round=c.round, rho=fp.from_wad(c.rho_wad),
                           deadline=c.deadline, submitted=c.submitted,
                           xbar=fp.from_fixed(c.xbar), zbar=fp.from_fixed(c.zbar),
                           u=fp.from_fixed(c.u))

    def session_id(self) -> int:
        return int(self.contract.functions.session_id().call())

    def session_devices(self, session: int) -> list[str]:
        return self.session_info(session).devices

    def is_finalized(self, session: int) -> bool:
        """True once the session is over: converged, at max rounds, or ended."""
        return bool(self.contract.functions.is_finalized(session).call())

    def is_ended(self, session: int) -> bool:
        """True when the operator ended the session unconverged (end_session)."""
        return bool(self.registry.functions.ended(session).call())

    def final_record(self, session: int, block: int | str = "latest") -> Any:
        """The registry's record of a finalized session (its `finalized` False before)."""
        return self.registry.functions.finals(session).call(block_identifier=block)

    def schedule(self, session: int, block: int | str = "latest") -> Schedule | None:
        """Every device's final x_i, None before finalization: each device's last
        Submitted event of the session (chain data; the registry holds the copies devices
        published, for contracts to read)."""
        f = self.final_record(session, block)
        if not f.finalized:
            return None
        t = int(f.slots)
        info = self.session_info(session)
        last: dict[str, list[int]] = {}
        for lg in self.contract.events.Submitted().get_logs(
                from_block=info.block, to_block=block,
                argument_filters={"session": session, "round": int(f.round)}):
            last[lg["args"]["device"]] = [int(w) for w in lg["args"]["x"]]
        x = {}
        for d in info.devices:
            words = last.get(d)
            if words is None:  # a straggler in the last round: its latest submission
                logs = self.contract.events.Submitted().get_logs(
                    from_block=info.block, to_block=block,
                    argument_filters={"session": session, "device": d})
                words = [int(w) for w in logs[-1]["args"]["x"]] if logs else []
            x[d] = fp.unpack_kw(words, t) if words else np.zeros(t)
        ended = bool(self.registry.functions.ended(session).call(block_identifier=block))
        return Schedule(session=session, converged=bool(f.converged), ended=ended,
                        round=int(f.round), block=int(f.block), timestamp=int(f.timestamp),
                        x=x)

    def registry_schedule(self, session: int, device: str) -> np.ndarray | None:
        """The copy of `device`'s final x_i in the registry (None until published)."""
        words = self.registry.functions.schedule(session, to_checksum_address(device)).call()
        return fp.unpack_kw(words, self._slots(session)) if words else None

    def session_info(self, session: int, from_block: int = 0) -> SessionInfo:
        """The parameters of `session`, from its SessionOpened event."""
        logs = self.contract.events.SessionOpened().get_logs(
            from_block=from_block, argument_filters={"session": session})
        if not logs:
            raise Refused(f"session_info({session})", "no SessionOpened event")
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
            mu=fp.from_wad(p["mu_wad"]), tau=fp.from_wad(p["tau_wad"]),
            alpha=fp.from_wad(p["alpha_wad"]),
            viol_tol_kw=p["viol_tol_nkw"] / fp.KW_SCALE)
        self._slots_of[session] = t
        return SessionInfo(session, list(a["devices"]), feeder, settings,
                           int(p["deadline_s"]), logs[0]["blockNumber"], dict(p))

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
                stragglers=a["stragglers"],
                import_excess_kw=a["import_excess"] / fp.KW_SCALE,
                export_excess_kw=a["export_excess"] / fp.KW_SCALE,
                factor=fp.from_wad(a["factor"]), xbar=fp.unpack_kw(a["xbar"], t),
                zbar=fp.unpack_kw(a["zbar"], t), u=fp.unpack_kw(a["u"], t),
                block=lg["blockNumber"], tx_hash=lg["transactionHash"].hex(),
                raw={k: (list(v) if isinstance(v, list | tuple) else v)
                     for k, v in a.items()}))
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
                           tuple(int(w) for w in a["x"]), lg["blockNumber"],
                           lg["transactionHash"].hex())
                for lg in logs for a in [lg["args"]]]

    def wait_for_round(self, session: int, round: int, timeout: float = 60.0,
                       poll: float = 0.2) -> CurrentVars | None:
        """Block until `session` is at `round` or later (returns its variables) or finalized
        (returns None). Raises SessionEnded when the operator ended it, TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            cur = self.current()
            if cur is not None and cur.session == session and cur.round >= round:
                return cur
            if self.is_finalized(session):
                if self.is_ended(session):
                    raise SessionEnded(f"wait_for_round({session}, {round})", "session ended")
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

    def _me(self) -> str:
        if self.account is None:
            raise Refused("sign", "this Coordinator client has no account to sign with")
        return self.account.address


    def _slots(self, session: int) -> int:
        if session not in self._slots_of:
            self.session_info(session)
        return self._slots_of[session]

    def _transact(self, fn: Any, what: str, gas: int | None = None, wait: bool = True) -> Any:
        self._me()
        contract = self.contract if fn.address == self.address else self.w3.eth.contract(
            abi=fn.contract_abi)
        data = contract.encode_abi(fn.abi_element_identifier, args=fn.args, kwargs=fn.kwargs)
        return send_tx(self.w3, self.account, {"to": fn.address, "data": data}, what,
                       gas=gas, wait=wait)


def session_params(feeder: Feeder, s: AdmmSettings, deadline_s: int) -> tuple:
    """The contract's AdmmParams tuple of a session (round deadline in seconds)."""
    return (feeder.slots, fp.wad(feeder.delta_h), fp.wad(feeder.gamma), fp.wad(s.rho0),
            fp.wad(s.eps_abs), fp.wad(s.eps_rel), fp.wad(s.mu), fp.wad(s.tau),
            int(s.max_rounds), int(deadline_s), fp.wad(s.alpha),
            fp.to_fixed([s.viol_tol_kw])[0])
