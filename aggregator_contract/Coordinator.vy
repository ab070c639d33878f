#pragma version 0.4.3
"""
@title Coordinator: the aggregator of sharing ADMM (DESIGN.md, "The contract")
@notice Devices submit their x_i for a round; the submission that completes the round (or
        `advance` after the round deadline, with stragglers' previous x_i) runs steps 2-6 of
        aggregator_contract/reference.py in fixed point, then opens the next round or
        finalizes the session.
@dev Fixed point, one scale per quantity (aggregator_contract/fixed_point.py is the Python
     side of the same table):
       power   x_i, xbar, zbar, u, device bounds, C, E      1e-9 kW   ("nkW", int64 range)
       price   pi                                           1e-9 $/kWh
       delta   slot length                                  1e-18 h   (WAD)
       gamma, rho, eps_abs, eps_rel, mu, tau                1e-18     (WAD)
       r, s, eps_pri, eps_dual (events)                     1e-18 kW  (WAD)
     Vectors of T values are packed 4 per uint256 word: lane j (bits 64j..64j+63) of word w
     is slot 4w+j, zigzag-encoded (v >= 0 -> 2v, v < 0 -> -2v-1) so that small negative
     values are small words (cheap calldata); lanes past T must be 0.
     Rounding: every division (xbar = sum/N, zbar = num/den, C/N, E/N, rho*tau, rho/tau,
     u/tau, u*tau, the WAD products in the tolerances) rounds half away from zero; square
     roots (isqrt) round down. Sums of squares are exact integers (units 1e-18 kW^2), so
     r, s and the norms carry 1e-18 kW precision before isqrt.
     The dual residual uses sum_i |dx_i - d|^2 = sum_i |dx_i|^2 - 2<sum_i dx_i, d> + N|d|^2
     (d = dxbar - dzbar), exact over the integers.
     Unchecked (unsafe_*) arithmetic only where int64 lanes and N <= 256 bound the result.
     Storage: each device keeps two packed buffers per session (current and previous x_i);
     a submission writes the older one, so the round close reads both without copying.
     Gas on geth v1.13.15 at T=96, N=10 (`make bench-gas`): ~224k per submission, ~2.84M
     for the one that closes the round; a session's first two rounds cost more (its buffers
     start empty: 22,100 gas per word instead of 5,000).
     Limits: T <= 384, N <= 256; |bounds| within int64. If u ever left int64 (a diverging,
     infeasible session) the close would revert with "value beyond int64".
"""

MAX_SLOTS: constant(uint256) = 384
LANES: constant(uint256) = 4
MAX_WORDS: constant(uint256) = 96  # MAX_SLOTS // LANES
MAX_DEVICES: constant(uint256) = 256
MAX_PLAN_WORDS: constant(uint256) = 32  # on/off plans: 256 slots a word, e.g. 16 actuators x 2
LANE_MASK: constant(uint256) = 2**64 - 1
MAX_LANE: constant(int256) = 2**63 - 1
WAD: constant(int256) = 10**18
WAD_U: constant(uint256) = 10**18

# bit layout of a device's per-session state word
IDX_MASK: constant(uint256) = 2**32 - 1  # index in the session's device list + 1 (0: absent)
ROUND_SHIFT: constant(uint256) = 32  # last submitted round + 1 (0: none)
ROUND_MASK: constant(uint256) = 2**64 - 1
CUR_SHIFT: constant(uint256) = 96  # which of the two buffers holds the current x_i
# xbar, zbar and u words are stored XOR this, so that the zero vector is a non-zero word:
# a round close then rewrites non-zero slots (5,000 gas) instead of filling empty ones
# (22,100 gas) in the first rounds.
STATE_FLIP: constant(uint256) = max_value(uint256)
# bit layout of `status`, the hot state of the latest session read by every submission
# (one storage slot instead of six): round | submitted | N | T | finalized | session id
ST_SUBMITTED: constant(uint256) = 64
ST_N: constant(uint256) = 96
ST_SLOTS: constant(uint256) = 128
ST_FINAL: constant(uint256) = 160
ST_SESSION: constant(uint256) = 192
M32: constant(uint256) = 2**32 - 1
# a whitelisted device's word: registered bit 128 | zigzag(max) << 64 | zigzag(min)
REGISTERED: constant(uint256) = 1 << 128


struct DeviceBounds:
    device: address
    min_nkw: int256
    max_nkw: int256


struct Bounds:
    min_nkw: int256
    max_nkw: int256
    registered: bool


struct AdmmParams:
    slots: uint256
    delta_wad: int256
    gamma_wad: int256
    rho0_wad: int256
    eps_abs_wad: int256
    eps_rel_wad: int256
    mu_wad: int256
    tau_wad: int256
    max_rounds: uint256
    deadline_blocks: uint256


struct Current:
    active: bool
    session: uint256
    round: uint256
    rho_wad: int256
    deadline: uint256
    submitted: uint256
    xbar: DynArray[int256, MAX_SLOTS]
    zbar: DynArray[int256, MAX_SLOTS]
    u: DynArray[int256, MAX_SLOTS]


struct Final:
    finalized: bool
    converged: bool
    round: uint256
    block: uint256
    timestamp: uint256


struct ScheduleEntry:
    finalized: bool
    converged: bool
    round: uint256
    block: uint256
    timestamp: uint256
    x: DynArray[int256, MAX_SLOTS]


struct Residuals:
    r: int256
    s: int256
    eps_pri: int256
    eps_dual: int256


event OperatorChanged:
    previous: indexed(address)
    operator: indexed(address)


event DeviceRegistered:
    device: indexed(address)
    min_nkw: int256
    max_nkw: int256


event SessionOpened:
    session: indexed(uint256)
    params: AdmmParams
    devices: DynArray[address, MAX_DEVICES]
    price: DynArray[uint256, MAX_WORDS]
    capacity: DynArray[uint256, MAX_WORDS]
    export_limit: DynArray[uint256, MAX_WORDS]


event Submitted:
    session: indexed(uint256)
    round: indexed(uint256)
    device: indexed(address)
    x: DynArray[uint256, MAX_WORDS]


event RoundClosed:
    session: indexed(uint256)
    round: indexed(uint256)
    r: int256
    s: int256
    eps_pri: int256
    eps_dual: int256
    rho: int256
    rho_next: int256
    converged: bool
    stragglers: uint256
    xbar: DynArray[uint256, MAX_WORDS]
    zbar: DynArray[uint256, MAX_WORDS]
    u: DynArray[uint256, MAX_WORDS]


event Finalized:
    session: indexed(uint256)
    round: uint256
    converged: bool


event PlanPublished:
    session: indexed(uint256)
    device: indexed(address)
    words: DynArray[uint256, MAX_PLAN_WORDS]


operator: public(address)
device_word: HashMap[address, uint256]

status: uint256  # see ST_* above
params: public(AdmmParams)  # of the latest session
round_deadline: public(uint256)  # block number after which anyone may advance
rho_wad: public(int256)
finals: public(HashMap[uint256, Final])
devices: HashMap[uint256, DynArray[address, MAX_DEVICES]]
slots_of: public(HashMap[uint256, uint256])  # T of each session

# packed vectors of the latest session
price_w: uint256[MAX_WORDS]
capacity_w: uint256[MAX_WORDS]
export_w: uint256[MAX_WORDS]
xbar_w: uint256[MAX_WORDS]
zbar_w: uint256[MAX_WORDS]
u_w: uint256[MAX_WORDS]

# session -> device -> state word (IDX/ROUND/CUR above)
dev_state: HashMap[uint256, HashMap[address, uint256]]
# (session << 160 | device) -> two packed buffers: words [0, MAX_WORDS) and
# [MAX_WORDS, 2*MAX_WORDS). One key (one keccak per access) rather than nested maps.
xbuf: HashMap[uint256, uint256[2 * MAX_WORDS]]
# session -> device -> on/off plans of its switched loads (bit t of a word = slot t), published
# by the device after finalization; the MQTT bridge reads them
plans: HashMap[uint256, HashMap[address, DynArray[uint256, MAX_PLAN_WORDS]]]


@deploy
def __init__():
    """
    @notice The deployer becomes the operator.
    """
    self.operator = msg.sender
    log OperatorChanged(previous=empty(address), operator=msg.sender)


# ---------------------------------------------------------------- operator


@external
def set_operator(new_operator: address):
    """
    @notice Hand the operator role to `new_operator`.
    @param new_operator The new operator (non-zero).
    """
    self._only_operator()
    assert new_operator != empty(address), "zero operator"
    log OperatorChanged(previous=self.operator, operator=new_operator)
    self.operator = new_operator


@external
def register_devices(entries: DynArray[DeviceBounds, MAX_DEVICES]):
    """
    @notice Whitelist devices with their power bounds (1e-9 kW), or update their bounds.
    @param entries (device, min_nkw, max_nkw) with min_nkw <= max_nkw within int64.
    """
    self._only_operator()
    for e: DeviceBounds in entries:
        assert e.device != empty(address), "zero device"
        assert e.min_nkw <= e.max_nkw, "min above max"
        assert e.min_nkw >= -MAX_LANE and e.max_nkw <= MAX_LANE, "bound beyond int64"
        self.device_word[e.device] = REGISTERED | (self._enc(e.max_nkw) << 64) | self._enc(
            e.min_nkw
        )
        log DeviceRegistered(device=e.device, min_nkw=e.min_nkw, max_nkw=e.max_nkw)


@external
def open_session(
    p: AdmmParams,
    price: DynArray[uint256, MAX_WORDS],
    capacity: DynArray[uint256, MAX_WORDS],
    export_limit: DynArray[uint256, MAX_WORDS],
    participants: DynArray[address, MAX_DEVICES],
) -> uint256:
    """
    @notice Open the next session (one at a time: the previous one must be finalized).
            Round 0 starts with xbar = zbar = u = 0, rho = rho0, every x_i = 0.
    @param p Scalars: T, delta, gamma, rho0, tolerances, mu, tau, max rounds, deadline.
    @param price Packed pi (1e-9 $/kWh), ceil(T/4) words.
    @param capacity Packed C (1e-9 kW, >= 0), ceil(T/4) words.
    @param export_limit Packed E (1e-9 kW, >= 0), ceil(T/4) words.
    @param participants The session's devices, whitelisted, distinct.
    @return The new session id.
    """
    self._only_operator()
    sid: uint256 = self.status >> ST_SESSION
    assert sid == 0 or self.finals[sid].finalized, "session in progress"
    assert p.slots > 0 and p.slots <= MAX_SLOTS, "bad slots"
    words: uint256 = (p.slots + LANES - 1) // LANES
    assert len(price) == words, "wrong length: price"
    assert len(capacity) == words, "wrong length: capacity"
    assert len(export_limit) == words, "wrong length: export_limit"
    assert p.delta_wad > 0, "delta must be > 0"
    assert p.gamma_wad >= 0, "gamma must be >= 0"
    assert p.rho0_wad > 0, "rho0 must be > 0"
    assert p.eps_abs_wad >= 0 and p.eps_rel_wad >= 0, "tolerance must be >= 0"
    assert p.mu_wad >= WAD and p.tau_wad >= WAD, "mu and tau must be >= 1"
    assert p.max_rounds > 0, "max_rounds must be > 0"
    assert p.deadline_blocks > 0, "deadline_blocks must be > 0"
    assert len(participants) > 0, "no devices"
    assert p.max_rounds < 2**63, "max_rounds too large"

    sid += 1
    for w: uint256 in range(words, bound=MAX_WORDS):
        for j: uint256 in range(LANES):
            t: uint256 = w * LANES + j
            c: int256 = self._lane(capacity[w], j)
            e: int256 = self._lane(export_limit[w], j)
            if t >= p.slots:
                assert self._lane(price[w], j) == 0 and c == 0 and e == 0, "nonzero padding"
            assert c >= 0 and e >= 0, "capacity and export limit must be >= 0"
        self.price_w[w] = price[w]
        self.capacity_w[w] = capacity[w]
        self.export_w[w] = export_limit[w]
        # the zero vector, stored complemented (non-zero: see STATE_FLIP)
        self.xbar_w[w] = STATE_FLIP
        self.zbar_w[w] = STATE_FLIP
        self.u_w[w] = STATE_FLIP

    i: uint256 = 0
    for d: address in participants:
        assert self.device_word[d] & REGISTERED != 0, "device not whitelisted"
        assert self.dev_state[sid][d] == 0, "duplicate device"
        i += 1
        self.dev_state[sid][d] = i

    self.params = p
    self.devices[sid] = participants
    self.slots_of[sid] = p.slots
    self.status = (
        (sid << ST_SESSION) | (p.slots << ST_SLOTS) | (len(participants) << ST_N)
    )
    self.rho_wad = p.rho0_wad
    self.round_deadline = block.number + p.deadline_blocks
    log SessionOpened(
        session=sid,
        params=p,
        devices=participants,
        price=price,
        capacity=capacity,
        export_limit=export_limit,
    )
    return sid


# ---------------------------------------------------------------- devices


@external
def submit(session: uint256, round: uint256, x: DynArray[uint256, MAX_WORDS]):
    """
    @notice Submit the sender's x_i for `round` of `session`, packed (see header). The
            submission that completes the round runs the aggregate update.
    @param session The current session id.
    @param round The current round.
    @param x ceil(T/4) packed words of x_i in 1e-9 kW, each within the device's bounds.
    """
    dw: uint256 = self.device_word[msg.sender]
    assert dw & REGISTERED != 0, "not whitelisted"
    lo: int256 = self._lane(dw, 0)
    hi: int256 = self._lane(dw, 1)
    status: uint256 = self.status
    assert session != 0 and session == status >> ST_SESSION, "wrong session"
    assert (status >> ST_FINAL) & 1 == 0, "session finalized"
    assert round == status & ROUND_MASK, "wrong round"
    st: uint256 = self.dev_state[session][msg.sender]
    assert st & IDX_MASK != 0, "device not in session"
    assert (st >> ROUND_SHIFT) & ROUND_MASK != round + 1, "already submitted"
    slots: uint256 = (status >> ST_SLOTS) & M32
    words: uint256 = (slots + LANES - 1) // LANES
    assert len(x) == words, "wrong length"

    nxt: uint256 = 1 - ((st >> CUR_SHIFT) & 1)
    key: uint256 = self._key(session, msg.sender)
    base: uint256 = nxt * MAX_WORDS
    for w: uint256 in range(words, bound=MAX_WORDS):
        word: uint256 = x[w]
        for j: uint256 in range(LANES):
            z: uint256 = (word >> unsafe_mul(j, 64)) & LANE_MASK  # _lane, inlined
            v: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                v = unsafe_sub(-v, 1)
            if unsafe_add(w * LANES, j) < slots:
                assert v >= lo and v <= hi, "x out of bounds"
            else:
                assert v == 0, "nonzero padding"
        self.xbuf[key][base + w] = word

    self.dev_state[session][msg.sender] = (
        (st & IDX_MASK) | ((round + 1) << ROUND_SHIFT) | (nxt << CUR_SHIFT)
    )
    count: uint256 = ((status >> ST_SUBMITTED) & M32) + 1
    self.status = status + (1 << ST_SUBMITTED)
    log Submitted(session=session, round=round, device=msg.sender, x=x)
    if count == (status >> ST_N) & M32:
        self._close(session, round)


@external
def advance(session: uint256):
    """
    @notice After the round deadline, anyone may close the round: each missing device's
            previous x_i stands in for its submission (straggler policy).
    @param session The current session id.
    """
    status: uint256 = self.status
    assert session != 0 and session == status >> ST_SESSION, "wrong session"
    assert (status >> ST_FINAL) & 1 == 0, "session finalized"
    assert block.number > self.round_deadline, "round deadline not reached"
    self._close(session, status & ROUND_MASK)


# ---------------------------------------------------------------- reads


@view
@external
def current() -> Current:
    """
    @notice The shared variables of the open round; `active` is False (and the rest empty)
            when no session is open or the latest one is finalized.
    @return (active, session, round, rho, deadline, submitted, xbar, zbar, u); vectors in
            1e-9 kW, rho in 1e-18.
    """
    status: uint256 = self.status
    sid: uint256 = status >> ST_SESSION
    out: Current = empty(Current)
    if sid == 0 or (status >> ST_FINAL) & 1 == 1:
        return out
    slots: uint256 = (status >> ST_SLOTS) & M32
    out.active = True
    out.session = sid
    out.round = status & ROUND_MASK
    out.rho_wad = self.rho_wad
    out.deadline = self.round_deadline
    out.submitted = (status >> ST_SUBMITTED) & M32
    out.xbar = self._unpack_storage(0, slots)
    out.zbar = self._unpack_storage(1, slots)
    out.u = self._unpack_storage(2, slots)
    return out


@view
@external
def schedule(session: uint256, device: address) -> ScheduleEntry:
    """
    @notice A device's final x_i in `session`, with the finalization round, block and time;
            `finalized` is False (and the rest empty) before finalization.
    @param session The session id.
    @param device A participant of that session.
    @return (finalized, converged, round, block, timestamp, x in 1e-9 kW).
    """
    out: ScheduleEntry = empty(ScheduleEntry)
    f: Final = self.finals[session]
    if not f.finalized:
        return out
    st: uint256 = self.dev_state[session][device]
    assert st & IDX_MASK != 0, "device not in session"
    out.finalized = True
    out.converged = f.converged
    out.round = f.round
    out.block = f.block
    out.timestamp = f.timestamp
    out.x = self._device_x(session, device, st)
    return out


@view
@external
def last_x(session: uint256, device: address) -> DynArray[int256, MAX_SLOTS]:
    """
    @notice The x_i the contract holds for `device`: its last submission (or zeros before
            its first), i.e. what the last closed round used. A device resumes from this.
    @param session The session id.
    @param device A participant of that session.
    @return x_i in 1e-9 kW, T values.
    """
    st: uint256 = self.dev_state[session][device]
    assert st & IDX_MASK != 0, "device not in session"
    return self._device_x(session, device, st)


@view
@external
def has_submitted(session: uint256, round: uint256, device: address) -> bool:
    """
    @notice Whether `device` has submitted for `round` of `session`.
    @param session The session id.
    @param round The round.
    @param device The device address.
    @return True once its submission for that round is in.
    """
    st: uint256 = self.dev_state[session][device]
    return (st >> ROUND_SHIFT) & ROUND_MASK == round + 1


@external
def publish_plan(session: uint256, words: DynArray[uint256, MAX_PLAN_WORDS]):
    """
    @notice After finalization, a participant publishes the on/off plans of its switched
            loads, derived from its final x_i by the rule of mqtt_bridge/plan.py (the
            contract cannot check a private split; it records who said what, once).
    @param session A finalized session the sender took part in.
    @param words The plans, ceil(T/256) words per actuator in scenario order.
    """
    assert self.finals[session].finalized, "session not finalized"
    assert self.dev_state[session][msg.sender] & IDX_MASK != 0, "device not in session"
    assert len(words) > 0, "empty plan"
    assert len(self.plans[session][msg.sender]) == 0, "plan already published"
    self.plans[session][msg.sender] = words
    log PlanPublished(session=session, device=msg.sender, words=words)


@view
@external
def plan(session: uint256, device: address) -> DynArray[uint256, MAX_PLAN_WORDS]:
    """
    @notice The on/off plans `device` published for `session` (empty before).
    @param session The session id.
    @param device The device address.
    @return The plan words.
    """
    return self.plans[session][device]


@view
@external
def session_id() -> uint256:
    """
    @notice The latest session (0: none yet).
    @return Its id.
    """
    return self.status >> ST_SESSION


@view
@external
def round() -> uint256:
    """
    @notice The latest session's current round (its last round once finalized).
    @return The round number, from 0.
    """
    return self.status & ROUND_MASK


@view
@external
def submitted() -> uint256:
    """
    @notice Submissions received in the current round.
    @return Their count.
    """
    return (self.status >> ST_SUBMITTED) & M32


@view
@external
def device_bounds(device: address) -> Bounds:
    """
    @notice A device's whitelisting and power bounds (1e-9 kW).
    @param device The device address.
    @return (min_nkw, max_nkw, registered).
    """
    dw: uint256 = self.device_word[device]
    return Bounds(
        min_nkw=self._lane(dw, 0), max_nkw=self._lane(dw, 1), registered=dw & REGISTERED != 0
    )


@view
@external
def session_devices(session: uint256) -> DynArray[address, MAX_DEVICES]:
    """
    @notice The participants of `session`, in submission-index order.
    @param session The session id.
    @return Their addresses.
    """
    return self.devices[session]


# ---------------------------------------------------------------- internals


@internal
@view
def _only_operator():
    assert msg.sender == self.operator, "only operator"


@internal
@pure
def _lane(word: uint256, j: uint256) -> int256:
    """Lane j of a packed word, zigzag-decoded."""
    z: uint256 = (word >> (j * 64)) & LANE_MASK
    v: int256 = convert(z >> 1, int256)
    if z & 1 == 1:
        return -v - 1
    return v


@internal
@pure
def _enc(v: int256) -> uint256:
    """Zigzag-encode v into a 64-bit lane."""
    assert v >= -MAX_LANE and v <= MAX_LANE, "value beyond int64"
    if v >= 0:
        return convert(v, uint256) << 1
    return (convert(-v, uint256) << 1) - 1


@internal
@pure
def _div(a: int256, b: int256) -> int256:
    """a / b (b > 0) rounded half away from zero."""
    h: int256 = b // 2
    if a >= 0:
        return (a + h) // b
    return -((-a + h) // b)


@internal
@pure
def _sqrt_wad(v: int256) -> int256:
    """sqrt(v * 1e-18) in 1e-18 units, rounded down (v in 1e-18 units^2, v >= 0)."""
    return convert(isqrt(convert(v, uint256) * WAD_U), int256)


@internal
@view
def _unpack_storage(which: uint256, slots: uint256) -> DynArray[int256, MAX_SLOTS]:
    out: DynArray[int256, MAX_SLOTS] = []
    for w: uint256 in range((slots + LANES - 1) // LANES, bound=MAX_WORDS):
        word: uint256 = 0
        if which == 0:
            word = self.xbar_w[w] ^ STATE_FLIP
        elif which == 1:
            word = self.zbar_w[w] ^ STATE_FLIP
        else:
            word = self.u_w[w] ^ STATE_FLIP
        for j: uint256 in range(LANES):
            if w * LANES + j < slots:
                out.append(self._lane(word, j))
    return out


@internal
@view
def _device_x(session: uint256, device: address, st: uint256) -> DynArray[int256, MAX_SLOTS]:
    """The current buffer of a device (state word `st`), unpacked."""
    out: DynArray[int256, MAX_SLOTS] = []
    slots: uint256 = self.slots_of[session]
    base: uint256 = ((st >> CUR_SHIFT) & 1) * MAX_WORDS
    key: uint256 = self._key(session, device)
    for w: uint256 in range((slots + LANES - 1) // LANES, bound=MAX_WORDS):
        word: uint256 = self.xbuf[key][base + w]
        for j: uint256 in range(LANES):
            if w * LANES + j < slots:
                out.append(self._lane(word, j))
    return out


@internal
@pure
def _key(session: uint256, device: address) -> uint256:
    """The xbuf key of a device in a session (session ids stay far below 2**96)."""
    return (session << 160) | convert(device, uint256)


@internal
@pure
def _dec(word: uint256, sh: uint256) -> int256:
    """The zigzag lane at bit `sh` of a packed word."""
    z: uint256 = (word >> sh) & LANE_MASK
    if z & 1 == 1:
        return unsafe_sub(-convert(z >> 1, int256), 1)
    return convert(z >> 1, int256)


@internal
def _close(session: uint256, round: uint256):
    """Steps 2-6 of the reference for the round, then next round or finalization.
    Word by word: the N devices' words of 4 slots, then steps 2-4 for those slots."""
    p: AdmmParams = self.params
    words: uint256 = (p.slots + LANES - 1) // LANES
    width: uint256 = words * LANES
    participants: DynArray[address, MAX_DEVICES] = self.devices[session]
    n: int256 = convert(len(participants), int256)

    # where each device's current and previous x_i are (the same for a straggler: dx = 0)
    new_base: DynArray[uint256, MAX_DEVICES] = []
    old_base: DynArray[uint256, MAX_DEVICES] = []
    stragglers: uint256 = 0
    for d: address in participants:
        st: uint256 = self.dev_state[session][d]
        nb: uint256 = ((st >> CUR_SHIFT) & 1) * MAX_WORDS
        new_base.append(nb)
        if (st >> ROUND_SHIFT) & ROUND_MASK == round + 1:
            old_base.append(MAX_WORDS - nb)
        else:
            old_base.append(nb)
            stragglers += 1

    rho: int256 = self.rho_wad
    den: int256 = rho + self._div(n * p.delta_wad * p.gamma_wad, WAD)
    u: int256[MAX_SLOTS] = empty(int256[MAX_SLOTS])
    xw: DynArray[uint256, MAX_WORDS] = []
    zw: DynArray[uint256, MAX_WORDS] = []
    sq_x: int256 = 0  # sum_i |x_i|^2
    sq_dx: int256 = 0  # sum_i |dx_i|^2
    r2: int256 = 0  # |xbar - zbar|^2
    dd: int256 = 0  # |d|^2, d = dxbar - dzbar
    sdx_d: int256 = 0  # <sum_i dx_i, d>
    sx_zx: int256 = 0  # <sum_i x_i, zbar - xbar>
    uu: int256 = 0  # |u|^2 (before balancing)
    for w: uint256 in range(words, bound=MAX_WORDS):
        # step 2 sums over devices; unchecked (int64 lanes, at most 256 devices) and the 4
        # lanes unrolled, as this is the N*T inner loop
        sx0: int256 = 0
        sx1: int256 = 0
        sx2: int256 = 0
        sx3: int256 = 0
        sdx0: int256 = 0
        sdx1: int256 = 0
        sdx2: int256 = 0
        sdx3: int256 = 0
        for k: uint256 in range(len(participants), bound=MAX_DEVICES):
            key: uint256 = self._key(session, participants[k])
            nb: uint256 = new_base[k]
            ob: uint256 = old_base[k]
            nw: uint256 = self.xbuf[key][unsafe_add(nb, w)]
            ow: uint256 = nw
            if ob != nb:
                ow = self.xbuf[key][unsafe_add(ob, w)]
            z: uint256 = 0
            xn: int256 = 0
            dx: int256 = 0
            z = (nw) & LANE_MASK
            xn = convert(z >> 1, int256)
            if z & 1 == 1:
                xn = unsafe_sub(-xn, 1)
            sx0 = unsafe_add(sx0, xn)
            sq_x = unsafe_add(sq_x, unsafe_mul(xn, xn))
            if ow != nw:
                z = (ow) & LANE_MASK
                dx = convert(z >> 1, int256)
                if z & 1 == 1:
                    dx = unsafe_sub(-dx, 1)
                dx = unsafe_sub(xn, dx)
                sdx0 = unsafe_add(sdx0, dx)
                sq_dx = unsafe_add(sq_dx, unsafe_mul(dx, dx))
            z = (nw >> 64) & LANE_MASK
            xn = convert(z >> 1, int256)
            if z & 1 == 1:
                xn = unsafe_sub(-xn, 1)
            sx1 = unsafe_add(sx1, xn)
            sq_x = unsafe_add(sq_x, unsafe_mul(xn, xn))
            if ow != nw:
                z = (ow >> 64) & LANE_MASK
                dx = convert(z >> 1, int256)
                if z & 1 == 1:
                    dx = unsafe_sub(-dx, 1)
                dx = unsafe_sub(xn, dx)
                sdx1 = unsafe_add(sdx1, dx)
                sq_dx = unsafe_add(sq_dx, unsafe_mul(dx, dx))
            z = (nw >> 128) & LANE_MASK
            xn = convert(z >> 1, int256)
            if z & 1 == 1:
                xn = unsafe_sub(-xn, 1)
            sx2 = unsafe_add(sx2, xn)
            sq_x = unsafe_add(sq_x, unsafe_mul(xn, xn))
            if ow != nw:
                z = (ow >> 128) & LANE_MASK
                dx = convert(z >> 1, int256)
                if z & 1 == 1:
                    dx = unsafe_sub(-dx, 1)
                dx = unsafe_sub(xn, dx)
                sdx2 = unsafe_add(sdx2, dx)
                sq_dx = unsafe_add(sq_dx, unsafe_mul(dx, dx))
            z = (nw >> 192) & LANE_MASK
            xn = convert(z >> 1, int256)
            if z & 1 == 1:
                xn = unsafe_sub(-xn, 1)
            sx3 = unsafe_add(sx3, xn)
            sq_x = unsafe_add(sq_x, unsafe_mul(xn, xn))
            if ow != nw:
                z = (ow >> 192) & LANE_MASK
                dx = convert(z >> 1, int256)
                if z & 1 == 1:
                    dx = unsafe_sub(-dx, 1)
                dx = unsafe_sub(xn, dx)
                sdx3 = unsafe_add(sdx3, dx)
                sq_dx = unsafe_add(sq_dx, unsafe_mul(dx, dx))
        sx: int256[LANES] = [sx0, sx1, sx2, sx3]
        sdx: int256[LANES] = [sdx0, sdx1, sdx2, sdx3]

        # steps 3-4 and the dot products of step 5, for the 4 slots of word w
        xbw: uint256 = self.xbar_w[w] ^ STATE_FLIP
        zbw: uint256 = self.zbar_w[w] ^ STATE_FLIP
        uw: uint256 = self.u_w[w] ^ STATE_FLIP
        pw: uint256 = self.price_w[w]
        cw: uint256 = self.capacity_w[w]
        ew: uint256 = self.export_w[w]
        xout: uint256 = 0
        zout: uint256 = 0
        for j: uint256 in range(LANES):
            sh: uint256 = unsafe_mul(j, 64)
            xb: int256 = self._div(sx[j], n)
            uo: int256 = self._dec(uw, sh)
            zb: int256 = self._div(rho * (uo + xb) - p.delta_wad * self._dec(pw, sh), den)
            zb = max(zb, -self._div(self._dec(ew, sh), n))
            zb = min(zb, self._div(self._dec(cw, sh), n))
            un: int256 = uo + xb - zb
            u[unsafe_add(unsafe_mul(w, LANES), j)] = un
            xout |= self._enc(xb) << sh
            zout |= self._enc(zb) << sh
            gap: int256 = zb - xb
            r2 += gap * gap
            dv: int256 = (xb - self._dec(xbw, sh)) - (zb - self._dec(zbw, sh))
            dd += dv * dv
            sdx_d += sdx[j] * dv
            sx_zx += sx[j] * gap
            uu += un * un
        self.xbar_w[w] = xout ^ STATE_FLIP
        self.zbar_w[w] = zout ^ STATE_FLIP
        xw.append(xout)
        zw.append(zout)

    # step 5: residuals and tolerances
    res: Residuals = empty(Residuals)
    res.r = self._sqrt_wad(n * r2)
    res.s = self._div(rho * self._sqrt_wad(sq_dx - 2 * sdx_d + n * dd), WAD)
    sqrt_p: int256 = convert(
        isqrt(convert(n, uint256) * p.slots * WAD_U * WAD_U), int256
    )
    abs_part: int256 = self._div(sqrt_p * p.eps_abs_wad, WAD)
    norm_x: int256 = self._sqrt_wad(sq_x)
    norm_z: int256 = self._sqrt_wad(sq_x - 2 * sx_zx + n * r2)
    res.eps_pri = abs_part + self._div(p.eps_rel_wad * max(norm_x, norm_z), WAD)
    res.eps_dual = abs_part + self._div(
        self._div(p.eps_rel_wad * rho, WAD) * self._sqrt_wad(n * uu), WAD
    )
    converged: bool = res.r <= res.eps_pri and res.s <= res.eps_dual

    # step 6: residual balancing
    rho_next: int256 = rho
    if not converged:
        if res.r * WAD > p.mu_wad * res.s:
            rho_next = self._div(rho * p.tau_wad, WAD)
            for t: uint256 in range(width, bound=MAX_SLOTS):
                u[t] = self._div(u[t] * WAD, p.tau_wad)
        elif res.s * WAD > p.mu_wad * res.r:
            rho_next = self._div(rho * WAD, p.tau_wad)
            for t: uint256 in range(width, bound=MAX_SLOTS):
                u[t] = self._div(u[t] * p.tau_wad, WAD)

    # store u (after balancing)
    uw_out: DynArray[uint256, MAX_WORDS] = []
    for w: uint256 in range(words, bound=MAX_WORDS):
        c: uint256 = 0
        for j: uint256 in range(LANES):
            c |= self._enc(u[unsafe_add(unsafe_mul(w, LANES), j)]) << unsafe_mul(j, 64)
        self.u_w[w] = c ^ STATE_FLIP
        uw_out.append(c)
    self.rho_wad = rho_next

    log RoundClosed(
        session=session,
        round=round,
        r=res.r,
        s=res.s,
        eps_pri=res.eps_pri,
        eps_dual=res.eps_dual,
        rho=rho,
        rho_next=rho_next,
        converged=converged,
        stragglers=stragglers,
        xbar=xw,
        zbar=zw,
        u=uw_out,
    )

    if converged or round + 1 >= p.max_rounds:
        self.finals[session] = Final(
            finalized=True,
            converged=converged,
            round=round,
            block=block.number,
            timestamp=block.timestamp,
        )
        self.status = self.status | (1 << ST_FINAL)
        log Finalized(session=session, round=round, converged=converged)
    else:
        # next round, no submissions yet
        status: uint256 = self.status
        self.status = (status >> ST_N << ST_N) | (round + 1)
        self.round_deadline = block.number + p.deadline_blocks
