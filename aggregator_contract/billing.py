"""The Billing contract's client and its arithmetic in Python (docs/billing.md).

    bill = Billing.deploy(w3, operator, coordinator.address)
    bill.register_meters({meter_addr: home_addr, ...})
    bill.open_billing(session, Tariff(delta_h=0.25, period=1), [home, ...])
    Billing(w3, bill.address, home_account).deposit(home, wei)
    Billing(w3, bill.address, meter_account).post(session, 0, [wh, ...])
    bill.settle(session, home)                              # anyone, once all readings are in
    replay(bill, coord, session)                            # every bill from chain events alone

Units: readings in Wh (int), prices in the Coordinator's 1e-9 $/kWh, money in wei with
1 ether = 1 $ (WEI_PER_USD). `compute_bill` is the contract's `_bill`, integer for integer;
`feeder_cost` is the feeder's g(S) of a metered aggregate, exact (fractions of a wei).
Every refusal is raised as the client's typed CoordinatorError kinds (`BillingRefused` for
the billing reasons, with `.reason` the revert string).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from aggregator_contract import fixed_point as fp
from aggregator_contract.client import Coordinator, CoordinatorError, send_tx
from aggregator_contract.compile import load as load_artifact

WEI_PER_USD = 10**18  # 1 ether = 1 $ (the lab's money scale)
WEI_PER_WH_PRICE = 10**6  # 1 Wh at 1e-9 $/kWh = 1e-12 $ = 1e6 wei
BPS = 10**4
NKW_WH = 10**24  # nkW * delta (1e-18 h) / 1e24 = Wh
REASONS = ("unknown meter", "billing not open", "home not in session", "already settled",
           "wrong slot", "duplicate reading", "readings missing", "schedule not published",
           "session not finalized", "billing already open", "only operator",
           "unsettled session", "beyond balance", "reading out of range")
OUT, OPEN, SETTLED = 0, 1, 2  # a home's state in a session (Billing.vy)
POST_GAS_BASE = 60_000
POST_GAS_PER_WORD = 26_000  # a storage word from zero, plus calldata and the event
SETTLE_GAS = 1_500_000


class BillingRefused(CoordinatorError):
    """A refusal of the Billing contract; `reason` is its revert string."""


def _typed(e: CoordinatorError) -> CoordinatorError:
    if isinstance(e, BillingRefused):
        return e
    out = BillingRefused(e.what, e.reason)
    out.args = e.args
    return out


TARIFF_FIELDS = ("delta_wad", "period", "tol_wh", "tol_bps", "imbalance_bps")  # struct order


@dataclass(frozen=True)
class Tariff:
    """The billing terms of a session (contract struct Tariff)."""

    delta_h: float  # slot length, as the session's
    period: int = 1  # slots per reading (1: per slot; 4: hourly at 15 min)
    tol_wh: int = 20  # deviation tolerance per reading period (Wh) ...
    tol_bps: int = 500  # ... plus 5 % of |scheduled|
    imbalance_bps: int = 5000  # deviation price: 50 % of |the period's price|

    def as_tuple(self) -> tuple:
        return (fp.wad(self.delta_h), self.period, self.tol_wh, self.tol_bps,
                self.imbalance_bps)

    @property
    def delta_wad(self) -> int:
        return fp.wad(self.delta_h)


@dataclass(frozen=True)
class Bill:
    """One home's bill (contract struct Bill): Wh and wei."""

    import_wh: int
    export_wh: int
    deviation_wh: int
    energy_wei: int
    export_wei: int
    deviation_wei: int
    total_wei: int

    def usd(self) -> dict[str, float]:
        return {k.removesuffix("_wei") + "_usd": v / WEI_PER_USD
                for k, v in asdict(self).items() if k.endswith("_wei")}


# ---------------------------------------------------------------- the arithmetic


def div_half_away(a: int, b: int) -> int:
    """a / b (b > 0) rounded half away from zero, as the contracts do."""
    q = (abs(a) + b // 2) // b
    return q if a >= 0 else -q


def slot_wh(x_nkw: Sequence[int], delta_wad: int) -> list[int]:
    """The scheduled energy of each slot in Wh, as the contract rounds it."""
    return [div_half_away(v * delta_wad, NKW_WH) for v in x_nkw]


def compute_bill(readings: Sequence[int], x_nkw: Sequence[int], price: Sequence[int],
                 delta_wad: int, period: int, tol_wh: int, tol_bps: int,
                 imbalance_bps: int) -> Bill:
    """The contract's `_bill`: readings per period (Wh), the schedule (nkW per slot) and the
    prices (1e-9 $/kWh per slot)."""
    k = period
    unit, dunit = 10**6 // k, imbalance_bps * 100 // k
    sched_slots = slot_wh(x_nkw, delta_wad)
    imp = exp = dev = e_wei = x_wei = d_wei = 0
    for p, m in enumerate(readings):
        pr = sum(price[p * k:(p + 1) * k])
        sched = sum(sched_slots[p * k:(p + 1) * k])
        if m > 0:
            imp += m
            e_wei += m * pr * unit
        else:
            exp -= m
            x_wei -= m * pr * unit
        excess = abs(m - sched) - (tol_wh + abs(sched) * tol_bps // BPS)
        if excess > 0:
            dev += excess
            d_wei += excess * abs(pr) * dunit
    return Bill(imp, exp, dev, e_wei, x_wei, d_wei, e_wei - x_wei + d_wei)


def feeder_cost(aggregate_wh: Sequence[int], price: Sequence[int], gamma_wad: int,
                delta_wad: int, period: int = 1) -> tuple[Fraction, Fraction]:
    """g(S) of a metered aggregate in wei, exactly: (linear part, quadratic part) of
    sum_t delta*(pi_t*s_t + gamma/2*s_t^2), s_t = E_t/delta kW for the energy E_t of slot t.
    With hourly readings (period k > 1) only period totals are known: s is taken flat over
    the period's slots (E_t = E_p/k)."""
    k = period
    lin = quad = Fraction(0)
    delta_h = Fraction(delta_wad, fp.WAD)
    gamma = Fraction(gamma_wad, fp.WAD)
    for p, e in enumerate(aggregate_wh):
        for t in range(p * k, (p + 1) * k):
            e_kwh = Fraction(e, 1000 * k)
            lin += e_kwh * Fraction(price[t], fp.PRICE_SCALE) * WEI_PER_USD
            quad += gamma / 2 * e_kwh * e_kwh / delta_h * WEI_PER_USD
    return lin, quad


def commitment(slot_wh_values: Sequence[int], salt: bytes) -> bytes:
    """The hash an hourly reading carries: keccak(abi_encode(int256[] slot readings,
    bytes32 salt)). Without a secret salt the few plausible Wh values of an hour's slots
    could be found by trying them all."""
    return keccak(abi_encode(["int256[]", "bytes32"], [list(slot_wh_values), salt]))


def salt_for(secret: bytes, session: int, period: int) -> bytes:
    """A meter's per-reading salt derived from its own secret (its key), so it can reveal
    one hour without the others."""
    return hashlib.sha256(secret + session.to_bytes(32, "big") + period.to_bytes(32, "big")
                          ).digest()


# ---------------------------------------------------------------- the client


class Billing:
    """A deployed Billing contract. `account` signs; None for read-only use."""

    def __init__(self, w3: Web3, address: str, account: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.account = account
        self.contract = w3.eth.contract(address=self.address, abi=load_artifact("Billing").abi,
                                        decode_tuples=True)
        self.deploy_receipt: Any = None

    @classmethod
    def deploy(cls, w3: Web3, operator: LocalAccount, coordinator: str) -> Billing:
        art = load_artifact("Billing")
        factory = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        r = send_tx(w3, operator, {"data": factory.constructor(
            to_checksum_address(coordinator)).data_in_transaction}, "deploy Billing")
        out = cls(w3, r["contractAddress"], operator)
        out.deploy_receipt = r
        return out

    def with_account(self, account: LocalAccount) -> Billing:
        return Billing(self.w3, self.address, account)

    # ---- writes --------------------------------------------------------------------------

    def register_meters(self, meters: Mapping[str, str]) -> Any:
        """meter address -> home (device) address."""
        ms = [to_checksum_address(m) for m in meters]
        hs = [to_checksum_address(h) for h in meters.values()]
        return self._transact(self.contract.functions.register_meters(ms, hs),
                              f"register_meters({len(ms)})")

    def open_billing(self, session: int, tariff: Tariff, homes: Iterable[str]) -> Any:
        hs = [to_checksum_address(h) for h in homes]
        return self._transact(self.contract.functions.open_billing(session, tariff.as_tuple(),
                                                                   hs),
                              f"open_billing(session={session}, {len(hs)} homes)")

    def deposit(self, account: str, wei: int) -> Any:
        fn = self.contract.functions.deposit(to_checksum_address(account))
        return self._transact(fn, f"deposit({account})", value=wei)

    def withdraw(self, wei: int) -> Any:
        return self._transact(self.contract.functions.withdraw(wei), f"withdraw({wei})")

    def post(self, session: int, first: int, wh: Sequence[int],
             commitments: Sequence[bytes] = (), wait: bool = True) -> Any:
        """The sender meter's readings of periods first, first+1, ... (Wh). A fixed gas
        limit (no dry run): a refusal is mined and its reason recovered."""
        words = (len(wh) + 3) // 4 + 1
        fn = self.contract.functions.post(session, first, [int(v) for v in wh],
                                          [bytes(c) for c in commitments])
        return self._transact(fn, f"post(session={session}, first={first}, {len(wh)})",
                              gas=POST_GAS_BASE + POST_GAS_PER_WORD * words
                              + 2_000 * len(wh), wait=wait)

    def settle(self, session: int, home: str, wait: bool = True) -> Any:
        return self._transact(self.contract.functions.settle(session,
                                                             to_checksum_address(home)),
                              f"settle(session={session}, {home})", gas=SETTLE_GAS, wait=wait)

    # ---- reads -----------------------------------------------------------------------------

    def balance(self, account: str, block: int | str = "latest") -> int:
        return int(self.contract.functions.balances(to_checksum_address(account)).call(
            block_identifier=block))

    def state(self, session: int, home: str) -> int:
        """A home's billing state in `session`: OUT, OPEN or SETTLED."""
        return int(self.contract.functions.state(session, to_checksum_address(home)).call())

    def operator(self) -> str:
        return self.contract.functions.operator().call()

    def events(self, name: str, from_block: int = 0, to_block: int | str = "latest",
               **filters: Any) -> list:
        return list(self.contract.events[name]().get_logs(
            from_block=from_block, to_block=to_block, argument_filters=filters or None))

    # ---- internals -------------------------------------------------------------------------

    def _transact(self, fn: Any, what: str, gas: int | None = None, wait: bool = True,
                  value: int = 0) -> Any:
        if self.account is None:
            raise BillingRefused(what, "this Billing client has no account to sign with")
        data = self.contract.encode_abi(fn.abi_element_identifier, args=fn.args)
        try:
            return send_tx(self.w3, self.account,
                           {"to": self.address, "data": data, "value": value}, what,
                           gas=gas, wait=wait)
        except CoordinatorError as e:
            raise _typed(e) from None


# ---------------------------------------------------------------- replay from the chain


@dataclass
class Replay:
    """Every bill of a session recomputed from chain events alone, with what the chain
    says (Settled events, balances)."""

    session: int
    tariff: tuple
    homes: list[str]
    bills: dict[str, Bill]  # recomputed
    settled: dict[str, Bill]  # the Settled events
    balances: dict[str, int]  # the contract's balances (view), operator included
    replayed_balances: dict[str, int]  # deposits - withdrawals - totals, from events
    readings: dict[str, list[int]]  # Wh per period
    price: list[int]
    gamma_wad: int
    delta_wad: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _last_words(coord: Coordinator, session: int, from_block: int) -> dict[str, list[int]]:
    """Each device's last submission of the session (its final x_i), from Submitted events."""
    last: dict[str, list[int]] = {}
    for s in coord.submissions(session, from_block=from_block):
        last[s.device] = list(s.words)
    return last


def replay(billing: Billing, coord: Coordinator, session: int, from_block: int = 0) -> Replay:
    """Recompute the session's bills from events alone: BillingOpened (tariff, homes),
    SessionOpened (prices, gamma, delta), Submitted (the final x_i), Readings; compare with
    Settled and with the contract's balances."""
    problems: list[str] = []
    opened = billing.events("BillingOpened", from_block, session=session)
    if not opened:
        raise BillingRefused(f"replay({session})", "no BillingOpened event")
    a = opened[0]["args"]
    tariff = tuple(int(a["tariff"][k]) for k in TARIFF_FIELDS)
    delta_wad, period, tol_wh, tol_bps, imb = tariff
    homes = [to_checksum_address(h) for h in a["homes"]]
    t = int(a["slots"])
    info = coord.session_info(session, from_block=from_block)
    price_words = _price_words(coord, session, from_block)
    price = fp.unpack(price_words, t)
    if int(info.raw_params["delta_wad"]) != delta_wad:
        problems.append(f"tariff delta {delta_wad} differs from the session's "
                        f"{info.raw_params['delta_wad']}")
    x_words = _last_words(coord, session, info.block)
    readings: dict[str, list[int | None]] = {h: [None] * (t // period) for h in homes}
    for lg in billing.events("Readings", from_block, session=session):
        h, first = lg["args"]["home"], int(lg["args"]["first"])
        for i, v in enumerate(lg["args"]["wh"]):
            readings[h][first + i] = int(v)
    settled = {lg["args"]["home"]: Bill(**{k: int(v) for k, v in lg["args"]["bill"].items()})
               for lg in billing.events("Settled", from_block, session=session)}
    bills: dict[str, Bill] = {}
    for h in homes:
        if any(v is None for v in readings[h]):
            problems.append(f"{h}: readings missing")
            continue
        bills[h] = compute_bill(readings[h], fp.unpack(x_words.get(h, []), t) if h in x_words
                                else [0] * t, price, delta_wad, period, tol_wh, tol_bps, imb)
        if h not in settled:
            problems.append(f"{h}: not settled")
        elif settled[h] != bills[h]:
            problems.append(f"{h}: Settled {settled[h]} differs from the replay {bills[h]}")
    # balances from events: deposits - withdrawals - totals (+ totals to the operator)
    op = to_checksum_address(billing.operator())
    replayed: dict[str, int] = {}
    for lg in billing.events("Deposited", from_block):
        acc = lg["args"]["account"]
        replayed[acc] = replayed.get(acc, 0) + int(lg["args"]["amount"])
    for lg in billing.events("Withdrawn", from_block):
        acc = lg["args"]["account"]
        replayed[acc] = replayed.get(acc, 0) - int(lg["args"]["amount"])
    for lg in billing.events("Settled", from_block):
        h, total = lg["args"]["home"], int(lg["args"]["bill"]["total_wei"])
        replayed[h] = replayed.get(h, 0) - total
        replayed[op] = replayed.get(op, 0) + total
    accounts = sorted({*homes, op, *replayed})
    balances = {acc: billing.balance(acc) for acc in accounts}
    for acc in accounts:
        if balances[acc] != replayed.get(acc, 0):
            problems.append(f"{acc}: balance {balances[acc]} on chain, {replayed.get(acc, 0)} "
                            "from the events")
    return Replay(session, tariff, homes, bills, settled, balances, replayed,
                  {h: [int(v) for v in r] for h, r in readings.items() if None not in r},
                  price, int(info.raw_params["gamma_wad"]), delta_wad, problems)


def _price_words(coord: Coordinator, session: int, from_block: int) -> list[int]:
    logs = coord.contract.events.SessionOpened().get_logs(
        from_block=from_block, argument_filters={"session": session})
    return [int(w) for w in logs[0]["args"]["price"]]


def settlement_sums(rep: Replay) -> dict[str, Any]:
    """The must-show identity: sum of bills + remainder = feeder cost of the metered
    aggregate, where remainder = the quadratic congestion term - the deviation charges.
    Exact (Fractions of a wei); floats in $ for reading."""
    k = rep.tariff[1]
    agg = [sum(r[p] for r in rep.readings.values()) for p in range(len(rep.price) // k)]
    lin, quad = feeder_cost(agg, rep.price, rep.gamma_wad, rep.delta_wad, k)
    total = sum(b.total_wei for b in rep.bills.values())
    deviation = sum(b.deviation_wei for b in rep.bills.values())
    remainder = quad - deviation
    usd = float
    return {"homes": len(rep.bills), "bills_usd": usd(Fraction(total, WEI_PER_USD)),
            "energy_net_usd": usd(Fraction(total - deviation, WEI_PER_USD)),
            "deviation_usd": usd(Fraction(deviation, WEI_PER_USD)),
            "congestion_usd": usd(quad / WEI_PER_USD),
            "remainder_usd": usd(remainder / WEI_PER_USD),
            "feeder_cost_usd": usd((lin + quad) / WEI_PER_USD),
            "linear_equal_exactly": Fraction(total - deviation) == lin,
            "identity_exact": total + remainder == lin + quad}
