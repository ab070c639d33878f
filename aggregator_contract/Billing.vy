#pragma version 0.4.3
#pragma evm-version paris
"""
@title Billing: meters post what each home drew; each home is settled against its
       finalized schedule at the session's prices, from deposits held here
@custom:contract-name Billing
@license MIT
@notice The operator whitelists one meter key per home and opens the billing of a
        finalized session with its tariff. Each home's meter posts its readings (Wh, one
        per reading period: a slot, or an hour committed with a hash of its slot readings).
        Once every reading of a home is in, anyone may settle it: the bill is read from the
        ScheduleRegistry (the home's final x_i) and the Coordinator's session data (pi),
        and moved from the home's balance to the operator's (the utility).
@dev Units (exact integers; docs/billing.md):
       reading m_p     Wh per reading period p (k slots), signed: import > 0, export < 0
       schedule x_t    1e-9 kW (the registry's packed words); x_p = sum over p's slots of
                       round(x_t * delta / 1e24) Wh, rounded half away from zero per slot
       price pi_t      1e-9 $/kWh (the Coordinator's scale, read from the session's data
                       contract); a period's price is the mean of its k slots' prices
       money           wei, 1 ether = 1 $ (1 wei = 1e-18 $), int256 balances
     With these scales 1 Wh at 1e-9 $/kWh is 1e-12 $ = 10**6 wei, so for k dividing 100
       energy    sum_p max(m_p, 0)  * P_p * (10**6 / k)            P_p = sum of p's pi_t
       export    sum_p max(-m_p, 0) * P_p * (10**6 / k)
       deviation sum_p e_p * |P_p| * imbalance_bps * (100 / k),
                 e_p = max(0, |m_p - x_p| - tol_wh - |x_p| * tol_bps // 10**4)
       total     energy - export + deviation
     are exact: no rounding in money (the schedule's conversion to Wh is the only rounding).
     The price is pi_t, not the marginal pi_t + gamma*s_t: sum over homes of
     (energy - export) is then exactly sum_t pi_t * S_t of the metered aggregate S, and the
     feeder's quadratic term (gamma/2) * sum_t S_t^2 * delta is the documented remainder.
     The session's prices come from the Coordinator's own session data contract (created
     by its open_session at nonce = session id, its code abi_encode(pi, C/N, E/N, C, E)
     padded to 96 words each): no one restates them. The slot length delta is stated by the
     operator in the tariff; `lab bill` checks it against the SessionOpened event.
"""

MAX_SLOTS: constant(uint256) = 384
LANES: constant(uint256) = 4
MAX_WORDS: constant(uint256) = 96
MAX_HOMES: constant(uint256) = 4096
LANE_MASK: constant(uint256) = 2**64 - 1
MAX_WH: constant(int256) = 2**62  # |reading| below this (zigzag + 1 fits a 64-bit lane)
# the session data contract: 5 offsets, then pi's length word, then pi's 96 words
PRICE_AT: constant(uint256) = 192
NKW_WH: constant(int256) = 10**24  # nkW * delta (WAD h) / 1e24 = Wh
BPS: constant(uint256) = 10**4

# a home's state in a session
OUT: constant(uint256) = 0
OPEN: constant(uint256) = 1
SETTLED: constant(uint256) = 2


struct Final:
    finalized: bool
    converged: bool
    round: uint256
    block: uint256
    timestamp: uint256
    devices: uint256
    slots: uint256


struct Tariff:
    delta_wad: uint256  # slot length (1e-18 h), as in the Coordinator's session
    period: uint256  # slots per reading: 1 (per slot) or k (e.g. 4: hourly), k | 100, k | T
    tol_wh: uint256  # deviation tolerance per reading period, Wh
    tol_bps: uint256  # plus this share of |scheduled| (1e-4)
    imbalance_bps: uint256  # deviation price: |period price| * imbalance_bps / 1e4


struct Session:
    consts: address  # the Coordinator's data contract of the session (prices)
    slots: uint256
    tariff: Tariff


struct Bill:
    import_wh: int256
    export_wh: int256
    deviation_wh: int256  # beyond the tolerance, summed over periods
    energy_wei: int256
    export_wei: int256  # credited
    deviation_wei: int256
    total_wei: int256  # energy - export + deviation


interface Registry:
    def finals(session: uint256) -> Final: view
    def ended(session: uint256) -> bool: view
    def schedule(session: uint256, device: address) -> DynArray[uint256, MAX_WORDS]: view


interface CoordinatorView:
    def registry() -> address: view


event MeterRegistered:
    meter: indexed(address)
    home: indexed(address)


event BillingOpened:
    session: indexed(uint256)
    consts: address
    slots: uint256
    tariff: Tariff
    homes: DynArray[address, MAX_HOMES]


event Readings:
    session: indexed(uint256)
    home: indexed(address)
    meter: indexed(address)
    first: uint256  # the first reading period
    wh: DynArray[int256, MAX_SLOTS]
    commitments: DynArray[bytes32, MAX_SLOTS]  # hourly: keccak of each hour's slot readings


event Settled:
    session: indexed(uint256)
    home: indexed(address)
    bill: Bill
    balance: int256  # the home's balance after


event Deposited:
    account: indexed(address)
    sender: indexed(address)
    amount: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


coordinator: public(immutable(address))
registry: public(immutable(address))
operator: public(immutable(address))

meter_home: public(HashMap[address, address])
sessions: HashMap[uint256, Session]
home_state: HashMap[uint256, HashMap[address, uint256]]
# readings: 4 lanes a word, lane = zigzag(Wh) + 1 (0: not posted yet)
readings: HashMap[uint256, HashMap[address, uint256[MAX_WORDS]]]
balances: public(HashMap[address, int256])
unsettled: public(HashMap[address, uint256])  # billing sessions a home is open in


@deploy
def __init__(coordinator_: address):
    """
    @dev The deployer becomes the operator (the utility whose balance the bills credit).
    @param coordinator_ The Coordinator; its ScheduleRegistry is read from it.
    """
    assert coordinator_.codesize > 0, "no coordinator"
    coordinator = coordinator_
    registry = staticcall CoordinatorView(coordinator_).registry()
    operator = msg.sender


# ---------------------------------------------------------------- operator


@external
def register_meters(meters: DynArray[address, MAX_HOMES], homes: DynArray[address, MAX_HOMES]):
    """
    @dev Whitelist meter keys, each for one home (a meter may be moved to another home).
    @param meters The meters' addresses.
    @param homes The home (device address) of each meter.
    """
    assert msg.sender == operator, "only operator"
    assert len(meters) == len(homes), "meters and homes differ in length"
    for i: uint256 in range(len(meters), bound=MAX_HOMES):
        assert meters[i] != empty(address) and homes[i] != empty(address), "zero address"
        self.meter_home[meters[i]] = homes[i]
        log MeterRegistered(meter=meters[i], home=homes[i])


@external
def open_billing(session: uint256, tariff: Tariff, homes: DynArray[address, MAX_HOMES]):
    """
    @dev Open the billing of a finalized session for `homes` (its participants); not of
         one the operator ended unconverged (`end_session`): it has no schedule to bill.
    @param session The Coordinator's session id; finalized, not ended.
    @param tariff The slot length (as the session's), the reading period k (k | 100,
           k | T), the deviation tolerance and the imbalance price.
    @param homes The homes to settle, distinct.
    """
    assert msg.sender == operator, "only operator"
    assert self.sessions[session].slots == 0, "billing already open"
    f: Final = staticcall Registry(registry).finals(session)
    assert f.finalized, "session not finalized"
    assert not staticcall Registry(registry).ended(session), "session ended"
    assert tariff.period > 0 and 100 % tariff.period == 0, "period must divide 100"
    assert f.slots % tariff.period == 0, "period must divide T"
    assert tariff.delta_wad > 0 and tariff.delta_wad < 2**100, "bad delta"
    assert tariff.tol_wh < 2**62 and tariff.tol_bps <= BPS, "bad tolerance"
    assert tariff.imbalance_bps <= 100 * BPS, "bad imbalance price"
    assert len(homes) > 0, "no homes"
    consts: address = self._consts(session)
    assert consts.codesize > PRICE_AT, "no session data"
    self.sessions[session] = Session(consts=consts, slots=f.slots, tariff=tariff)
    for h: address in homes:
        assert h != empty(address), "zero address"
        assert self.home_state[session][h] == OUT, "duplicate home"
        self.home_state[session][h] = OPEN
        self.unsettled[h] += 1
    log BillingOpened(session=session, consts=consts, slots=f.slots, tariff=tariff, homes=homes)


# ---------------------------------------------------------------- meters


@external
def post(session: uint256, first: uint256, wh: DynArray[int256, MAX_SLOTS],
         commitments: DynArray[bytes32, MAX_SLOTS]):
    """
    @dev A meter posts consecutive readings of its home, once each.
    @param session A session whose billing is open.
    @param first The reading period of wh[0] (a slot; an hour when the tariff's period is 4
           slots of 15 min).
    @param wh Energy per period, Wh, import positive, export negative.
    @param commitments Empty, or one per reading: a hash of the period's slot readings
           (hourly totals, docs/billing.md); recorded in the event only.
    """
    home: address = self.meter_home[msg.sender]
    assert home != empty(address), "unknown meter"
    s: Session = self.sessions[session]
    assert s.slots != 0, "billing not open"
    st: uint256 = self.home_state[session][home]
    assert st != OUT, "home not in session"
    assert st != SETTLED, "already settled"
    n: uint256 = len(wh)
    assert n > 0 and first + n <= s.slots // s.tariff.period, "wrong slot"
    assert len(commitments) == 0 or len(commitments) == n, "commitments differ in length"
    w0: uint256 = first // LANES
    word: uint256 = self.readings[session][home][w0]
    for i: uint256 in range(n, bound=MAX_SLOTS):
        p: uint256 = first + i
        w: uint256 = p // LANES
        if w != w0:
            self.readings[session][home][w0] = word
            w0 = w
            word = self.readings[session][home][w]
        sh: uint256 = (p % LANES) * 64
        assert (word >> sh) & LANE_MASK == 0, "duplicate reading"
        v: int256 = wh[i]
        assert v > -MAX_WH and v < MAX_WH, "reading out of range"
        word |= (self._zigzag(v) + 1) << sh
    self.readings[session][home][w0] = word
    log Readings(session=session, home=home, meter=msg.sender, first=first, wh=wh,
                 commitments=commitments)


# ---------------------------------------------------------------- settlement and money


@external
def settle(session: uint256, home: address) -> Bill:
    """
    @dev Settle `home` once all its readings are in (anyone may call): its bill moves from
         its balance to the operator's.
    @param session A session whose billing is open.
    @param home A home of that session.
    @return The bill (Wh and wei; docs/billing.md).
    """
    s: Session = self.sessions[session]
    assert s.slots != 0, "billing not open"
    st: uint256 = self.home_state[session][home]
    assert st != OUT, "home not in session"
    assert st != SETTLED, "already settled"
    bill: Bill = self._bill(session, home, s)
    self.home_state[session][home] = SETTLED
    self.unsettled[home] -= 1
    self.balances[home] -= bill.total_wei
    self.balances[operator] += bill.total_wei
    log Settled(session=session, home=home, bill=bill, balance=self.balances[home])
    return bill


@external
@payable
def deposit(account: address):
    """
    @dev Add msg.value to `account`'s balance (a home's deposit, paid by anyone).
    @param account The account credited.
    """
    assert msg.value > 0, "nothing deposited"
    assert account != empty(address), "zero address"
    self.balances[account] += convert(msg.value, int256)
    log Deposited(account=account, sender=msg.sender, amount=msg.value)


@external
@nonreentrant
def withdraw(amount: uint256):
    """
    @dev Pay out of the sender's balance; a home only once every billing it is in is
         settled.
    @param amount Wei.
    """
    assert self.unsettled[msg.sender] == 0, "unsettled session"
    assert amount > 0 and convert(amount, int256) <= self.balances[msg.sender], (
        "beyond balance"
    )
    self.balances[msg.sender] -= convert(amount, int256)
    send(msg.sender, amount)
    log Withdrawn(account=msg.sender, amount=amount)


# ---------------------------------------------------------------- reads


@view
@external
def bill(session: uint256, home: address) -> Bill:
    """
    @dev The bill `settle` would make now (reverts while readings are missing).
    @param session A session whose billing is open.
    @param home A home of that session.
    @return The bill.
    """
    s: Session = self.sessions[session]
    assert s.slots != 0, "billing not open"
    assert self.home_state[session][home] != OUT, "home not in session"
    return self._bill(session, home, s)


@view
@external
def state(session: uint256, home: address) -> uint256:
    """
    @dev A home's state in a billing session.
    @param session The session id.
    @param home The home.
    @return 0 not in it, 1 open, 2 settled.
    """
    return self.home_state[session][home]


@view
@external
def session_data(session: uint256) -> address:
    """
    @dev The Coordinator's data contract of `session`, whose code holds its prices.
    @param session The session id.
    @return Its address (code empty if no such session yet).
    """
    return self._consts(session)


# ---------------------------------------------------------------- internals


@internal
@view
def _bill(session: uint256, home: address, s: Session) -> Bill:
    t: Tariff = s.tariff
    x: DynArray[uint256, MAX_WORDS] = staticcall Registry(registry).schedule(session, home)
    assert len(x) == (s.slots + LANES - 1) // LANES, "schedule not published"
    prices: uint256[MAX_WORDS] = abi_decode(
        slice(s.consts.code, PRICE_AT, 32 * MAX_WORDS), uint256[MAX_WORDS]
    )
    k: uint256 = t.period
    unit: int256 = convert(10**6 // k, int256)  # wei per (Wh * 1e-9 $/kWh) over k slots
    dunit: int256 = convert(t.imbalance_bps * 100 // k, int256)
    delta: int256 = convert(t.delta_wad, int256)
    out: Bill = empty(Bill)
    for p: uint256 in range(s.slots // k, bound=MAX_SLOTS):
        lane: uint256 = (self.readings[session][home][p // LANES] >> ((p % LANES) * 64)) & (
            LANE_MASK
        )
        assert lane != 0, "readings missing"
        m: int256 = self._unzigzag(lane - 1)
        price: int256 = 0
        sched: int256 = 0
        for j: uint256 in range(k, bound=100):
            slot: uint256 = p * k + j
            sh: uint256 = (slot % LANES) * 64
            price += self._unzigzag((prices[slot // LANES] >> sh) & LANE_MASK)
            sched += self._div(self._unzigzag((x[slot // LANES] >> sh) & LANE_MASK) * delta,
                               NKW_WH)
        if m > 0:
            out.import_wh += m
            out.energy_wei += m * price * unit
        else:
            out.export_wh -= m
            out.export_wei -= m * price * unit
        tol: int256 = convert(t.tol_wh + convert(abs(sched), uint256) * t.tol_bps // BPS, int256)
        excess: int256 = abs(m - sched) - tol
        if excess > 0:
            out.deviation_wh += excess
            out.deviation_wei += excess * abs(price) * dunit
    out.total_wei = out.energy_wei - out.export_wei + out.deviation_wei
    return out


@internal
@view
def _consts(session: uint256) -> address:
    """
    The address of the Coordinator's CREATE with nonce `session`: its open_session creates
    one data contract per session, and a contract's nonce starts at 1 (EIP-161).
    """
    assert session > 0 and session < 2**16, "bad session"
    c: bytes20 = convert(coordinator, bytes20)
    n: bytes32 = convert(session, bytes32)
    rlp: Bytes[25] = b""
    if session < 128:
        rlp = concat(b"\xd6\x94", c, slice(n, 31, 1))
    elif session < 256:
        rlp = concat(b"\xd7\x94", c, b"\x81", slice(n, 31, 1))
    else:
        rlp = concat(b"\xd8\x94", c, b"\x82", slice(n, 30, 2))
    return convert(convert(keccak256(rlp), uint256) & (2**160 - 1), address)


@internal
@pure
def _zigzag(v: int256) -> uint256:
    if v >= 0:
        return convert(v, uint256) << 1
    return (convert(-v, uint256) << 1) - 1


@internal
@pure
def _unzigzag(z: uint256) -> int256:
    if z & 1 == 1:
        return -convert(z >> 1, int256) - 1
    return convert(z >> 1, int256)


@internal
@pure
def _div(a: int256, b: int256) -> int256:
    """a / b (b > 0) rounded half away from zero."""
    h: int256 = b // 2
    if a >= 0:
        return (a + h) // b
    return -((-a + h) // b)
