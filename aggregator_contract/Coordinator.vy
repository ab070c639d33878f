#pragma version 0.4.3
#pragma evm-version paris
"""
@title Coordinator: the aggregator of sharing ADMM (DESIGN.md, "The contract")
@notice Devices submit their x_i for a round; each submission folds itself into running
        sums, so that the submission completing the round (or `advance` after the round
        deadline, stragglers' previous x_i still counting) runs steps 2-6 of
        aggregator_contract/reference.py in O(T), whatever N. A session's end (finalized,
        or ended by the operator) is recorded in the ScheduleRegistry, where devices then
        publish their final x_i and plans (checked against `x_hash`).
@dev Fixed point, one scale per quantity (aggregator_contract/fixed_point.py is the Python
     side of the same table):
       power   x_i, xbar, zbar, u, device bounds, C, E      1e-9 kW   ("nkW", int64 range)
       price   pi                                           1e-9 $/kWh
       delta   slot length                                  1e-18 h   (WAD)
       gamma, rho, eps_abs, eps_rel, mu, tau, alpha         1e-18     (WAD)
       r, s, eps_pri, eps_dual (events)                     1e-18 kW  (WAD)
       step 6's factor f (events)                           1e-18     (WAD)
       viol_tol, import/export excess (events)              1e-9 kW
     Vectors of T values travel packed 4 per uint256 word: lane j (bits 64j..64j+63) of
     word w is slot 4w+j, zigzag-encoded (v >= 0 -> 2v, v < 0 -> -2v-1) so that small
     negative values are small words (cheap calldata); lanes past T must be 0.
     Rounding: every division (xbar = S/N, xhat, zbar = num/den, C/N, E/N, the price start
     delta*pi/rho0, rho*f, u/f, the WAD products in the tolerances and in f) rounds half
     away from zero; square roots (isqrt) round down. Sums of squares are exact integers
     (1e-18 kW^2). aggregator_contract/fixed_round.py is the same arithmetic in Python.

     What each submission folds in (so the close needs no loop over devices):
       S     = sum_i x_i           (vector, kept and offset by x_new - x_prev)
       SQX   = sum_i |x_i|^2       (scalar, kept and offset)
       SQDX  = sum_i |dx_i|^2      (scalar, this round; a straggler's dx_i is 0)
     and the close keeps SNAP = S at the previous close, so sum_i dx_i = S - SNAP. Then
       sum_i |dx_i - w|^2 = SQDX - 2 <S - SNAP, w> + N |w|^2,
                            w = dxbar - dzbar - (1 - alpha)(xbar+ - zbar)
       sum_i |z_i|^2      = SQX + 2 <S, zbar - xbar> + N |zbar - xbar|^2,  z_i = x_i - xbar + zbar
     exactly, over the integers; and S_t itself is the schedule's total, so the limits'
     excess max_t (S_t - C_t, -E_t - S_t) of the stopping rule is exact too.
     The contract stores no device's x_i: it keeps a 160-bit keccak of the last submission,
     and the device sends its previous x_i with its new one (calldata is ~30x cheaper than
     a storage word). The x_i themselves are in the Submitted events.

     Storage (every slot below is rewritten, never cleared, so rounds pay 5,000 gas a word
     and not 22,100): S and SNAP biased by 2^63 per lane; zbar and u zigzag, XOR STATE_FLIP
     (so the zero vector is a non-zero word); the accumulator word carries a marker bit.
     A session's vectors live in fixed arrays reused by the next session.
     Reserved for a later privacy mode (masked submissions whose masks cancel in S): the
     `mask_commit` map, unused today.

     Limits, checked by open_session: T <= 384, N <= 4096, and with B the largest |bound|
     of the participants, N*B < 2^62 (S fits its lane) and N*T*B^2 < 2^118 (SQX, SQDX fit
     their 127 bits). No close can revert, however a session diverges: step 6 clamps rho
     to [RHO_MIN, RHO_MAX] = [1e-9, 1e9] (the factor f is limited so that rho f stays
     inside), and u saturates at +-(2^63 - 1) nkW, its lane's range, both after step 4
     and after the rescaling by 1/f (fixed_round.py and reference.py apply the same rule).
     A session that will not converge ends at max_rounds, or earlier by `end_session`.

     Round deadlines are in seconds of block time: `advance` is allowed once
     block.timestamp >= the round's start + deadline_s (a signer with period 0 can seal
     blocks at will, but not ahead of its clock).
     Operator hand-over is two-step (propose_operator, then accept_operator by the new
     operator). A device's bounds are frozen while it takes part in an open session.
"""

MAX_SLOTS: constant(uint256) = 384
LANES: constant(uint256) = 4
MAX_WORDS: constant(uint256) = 96  # MAX_SLOTS // LANES
MAX_DEVICES: constant(uint256) = 4096
LANE_MASK: constant(uint256) = 2**64 - 1
MAX_LANE: constant(int256) = 2**63 - 1
BIAS: constant(int256) = 2**63  # S and SNAP lanes hold value + BIAS
ZERO_BIASED: constant(uint256) = (1 << 63) | (1 << 127) | (1 << 191) | (1 << 255)
# the constants' code: 5 offsets, then each array's length word and MAX_WORDS words
CONSTS_BYTES: constant(uint256) = 160 + 5 * 32 * (1 + MAX_WORDS)
PRICE_AT: constant(uint256) = 160 + 32
CAP_N_AT: constant(uint256) = PRICE_AT + 32 * MAX_WORDS + 32
EXP_N_AT: constant(uint256) = CAP_N_AT + 32 * MAX_WORDS + 32
CAP_AT: constant(uint256) = EXP_N_AT + 32 * MAX_WORDS + 32
EXP_AT: constant(uint256) = CAP_AT + 32 * MAX_WORDS + 32
HALF_WAD: constant(int256) = 5 * 10**17
RATIO_MAX: constant(int256) = 10**36  # step 6's ratios, clamped (WAD: 1e18)
WAD: constant(int256) = 10**18
WAD_U: constant(uint256) = 10**18
RHO_MIN: constant(int256) = 10**9  # 1e-9
RHO_MAX: constant(int256) = 10**27  # 1e9

# a device's word `dev[device]`: session << 208 | (last submitted round + 1) << 160 | hash
DEV_SESSION: constant(uint256) = 208
DEV_ROUND: constant(uint256) = 160
M48: constant(uint256) = 2**48 - 1
HASH_MASK: constant(uint256) = 2**160 - 1
# zbar and u words are stored XOR this (see header)
STATE_FLIP: constant(uint256) = max_value(uint256)
# the accumulator word: MARK | SQDX << 128 | SQX
ACC_MARK: constant(uint256) = 1 << 255
M127: constant(uint256) = 2**127 - 1
M128: constant(uint256) = 2**128 - 1
# `status`, the hot state read by every submission:
# round | submitted << 64 | N << 96 | T << 128 | finalized << 160 | ended << 161 |
# session << 192
ST_SUBMITTED: constant(uint256) = 64
ST_N: constant(uint256) = 96
ST_SLOTS: constant(uint256) = 128
ST_FINAL: constant(uint256) = 160
ST_SESSION: constant(uint256) = 192
ST_ENDED: constant(uint256) = 161  # ended by the operator (end_session); ST_FINAL set too
ROUND_MASK: constant(uint256) = 2**64 - 1
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
    deadline_s: uint256  # round deadline, seconds of block time after the round starts
    alpha_wad: int256  # over-relaxation, in [1, 2)
    viol_tol_nkw: int256  # the stopping rule's largest excess over C or below -E


struct Current:
    active: bool
    session: uint256
    round: uint256
    rho_wad: int256
    deadline: uint256  # block timestamp from which the round may be advanced
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
    devices: uint256
    slots: uint256


struct Kept:
    session: uint256  # the session of the device's last submission (or of its joining)
    rounds: uint256  # its last submitted round + 1 (0: none yet)
    hash: uint256  # 160-bit keccak of that submission's packed x (0: none)


struct Residuals:
    r: int256
    s: int256
    eps_pri: int256
    eps_dual: int256
    import_excess: int256  # max_t (S_t - C_t)+, nkW
    export_excess: int256  # max_t (-E_t - S_t)+, nkW
    factor: int256  # step 6's balancing factor f (WAD)
    converged: bool


# the sums of one round close that step 5 needs (all exact integers, see header)
struct CloseSums:
    r2: int256  # |xbar - zbar|^2
    dd: int256  # |d|^2, d = dxbar - dzbar
    sdx_d: int256  # <S - SNAP, d>
    s_zx: int256  # <S, zbar - xbar>
    uu: int256  # |u|^2 before balancing
    imp: int256  # max_t (S_t - C_t), at least 0
    exp: int256  # max_t (-E_t - S_t), at least 0


interface ScheduleRegistry:
    def record_final(session: uint256, f: Final, ended: bool): nonpayable


event OperatorChanged:
    previous: indexed(address)
    operator: indexed(address)


event OperatorProposed:
    operator: indexed(address)
    pending: indexed(address)


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
    import_excess: int256
    export_excess: int256
    factor: int256
    xbar: DynArray[uint256, MAX_WORDS]
    zbar: DynArray[uint256, MAX_WORDS]
    u: DynArray[uint256, MAX_WORDS]


event Finalized:
    session: indexed(uint256)
    round: uint256
    converged: bool
    ended: bool  # ended unconverged by the operator (end_session)


operator: public(address)
pending_operator: public(address)  # proposed by the operator, until it accepts
registry: public(immutable(address))
BLUEPRINT: immutable(address)  # ERC-5202 blueprint: initcode that returns its arguments
device_word: HashMap[address, uint256]
dev: HashMap[address, uint256]  # see DEV_* above

status: uint256  # see ST_* above
# the latest session's AdmmParams in 4 words (a close reads 4 slots, not 12): delta | gamma
# << 128; eps_abs | eps_rel << 64 | mu << 128; tau | max_rounds << 128 | deadline_s
# << 160 | slots << 192; alpha | viol_tol << 128. rho0 is only needed at open (readers
# take every parameter from the SessionOpened event).
params_w: uint256[4]
rho0_wad: int256
round_deadline: public(uint256)  # block timestamp from which the round may be advanced
rho_wad: public(int256)
acc: uint256  # see ACC_* above

# packed vectors of the latest session
# The session's constants (pi, C/N, E/N: zigzag words, C and E divided by N once) live in
# the code of a data contract created by open_session from the BLUEPRINT stub: a close
# reads them with one EXTCODECOPY (~3k gas) instead of 3*ceil(T/4) cold SLOADs (151k at
# T=96). Layout: abi_encode(pi, C/N, E/N), each padded to MAX_WORDS words (a constant
# CONSTS_BYTES long, because `slice(x.code, ...)` takes a constant length).
consts: address
sum_w: uint256[MAX_WORDS]  # S, biased lanes
snap_w: uint256[MAX_WORDS]  # S at the last close, biased lanes
zbar_w: uint256[MAX_WORDS]
u_w: uint256[MAX_WORDS]

# reserved: a later privacy mode's per-device mask commitments
mask_commit: HashMap[address, bytes32]


@deploy
def __init__(registry_: address, blueprint_: address):
    """
    @notice The deployer becomes the operator. `registry_` is the ScheduleRegistry this
            Coordinator writes finalized schedules to (bound to it by its deployer).
    @param registry_ The registry's address.
    @param blueprint_ An ERC-5202 blueprint whose initcode returns its arguments as code
           (aggregator_contract/client.py DATA_BLUEPRINT).
    """
    assert registry_ != empty(address), "zero registry"
    assert blueprint_.codesize > 0, "no blueprint"
    registry = registry_
    BLUEPRINT = blueprint_
    self.operator = msg.sender
    log OperatorChanged(previous=empty(address), operator=msg.sender)


# ---------------------------------------------------------------- operator


@external
def propose_operator(new_operator: address):
    """
    @notice Step 1 of the operator hand-over: name the next operator, who takes the role
            only by calling `accept_operator`. A new proposal replaces the pending one;
            the zero address withdraws it.
    @param new_operator The proposed operator.
    """
    self._only_operator()
    self.pending_operator = new_operator
    log OperatorProposed(operator=msg.sender, pending=new_operator)


@external
def accept_operator():
    """
    @notice Step 2 of the operator hand-over: the pending operator takes the role.
    """
    assert msg.sender == self.pending_operator, "not the pending operator"
    log OperatorChanged(previous=self.operator, operator=msg.sender)
    self.operator = msg.sender
    self.pending_operator = empty(address)


@external
def register_devices(entries: DynArray[DeviceBounds, MAX_DEVICES]):
    """
    @notice Whitelist devices with their power bounds (1e-9 kW), or update their bounds.
            A device's bounds are frozen while it takes part in the open session (refused
            with "device in open session"); others may be added or re-bounded any time.
    @param entries (device, min_nkw, max_nkw) with min_nkw <= max_nkw within int64.
    """
    self._only_operator()
    status: uint256 = self.status
    sid: uint256 = 0  # the open session, 0 if none
    if (status >> ST_FINAL) & 1 == 0:
        sid = status >> ST_SESSION
    for e: DeviceBounds in entries:
        assert e.device != empty(address), "zero device"
        assert sid == 0 or self.dev[e.device] >> DEV_SESSION != sid, "device in open session"
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
    @param p Scalars, refused with "bad <name>" outside: T in [1, 384], delta in (0, 2^100)
           (WAD h), gamma in [0, 1e12], rho0 in [1e-9, 1e9], eps_abs and eps_rel in [0, 1],
           mu in [1, 1000], tau in [1, 100], max_rounds and deadline_s in [1, 2^32),
           alpha in [1, 2), viol_tol in [0, 2^63) nkW (WAD = 1e18 for the dimensionless).
    @param price Packed pi (1e-9 $/kWh), ceil(T/4) words.
    @param capacity Packed C (1e-9 kW, >= 0), ceil(T/4) words.
    @param export_limit Packed E (1e-9 kW, >= 0), ceil(T/4) words.
    @param participants The session's devices, whitelisted, distinct.
    @return The new session id.
    """
    self._only_operator()
    status: uint256 = self.status
    sid: uint256 = status >> ST_SESSION
    assert sid == 0 or (status >> ST_FINAL) & 1 == 1, "session in progress"
    assert p.slots > 0 and p.slots <= MAX_SLOTS, "bad slots"
    words: uint256 = (p.slots + LANES - 1) // LANES
    assert len(price) == words and len(capacity) == words and len(export_limit) == words, (
        "wrong length: price, capacity or export_limit"
    )
    assert p.delta_wad > 0 and p.delta_wad < 2**100, "bad delta"
    assert p.gamma_wad >= 0 and p.gamma_wad <= 10**30, "bad gamma"
    assert p.rho0_wad >= RHO_MIN and p.rho0_wad <= RHO_MAX, "bad rho0"
    assert p.eps_abs_wad >= 0 and p.eps_rel_wad >= 0 and p.eps_abs_wad <= WAD and (
        p.eps_rel_wad <= WAD
    ), "bad tolerance"
    assert p.mu_wad >= WAD and p.mu_wad <= 10**21 and p.tau_wad >= WAD and (
        p.tau_wad <= 10**20
    ), "bad mu or tau"
    assert p.max_rounds > 0 and p.max_rounds < 2**32 and p.deadline_s > 0 and (
        p.deadline_s < 2**32
    ), "bad max_rounds or deadline"
    assert p.alpha_wad >= WAD and p.alpha_wad < 2 * WAD, "bad alpha"
    assert p.viol_tol_nkw >= 0 and p.viol_tol_nkw <= MAX_LANE, "bad viol_tol"
    assert len(participants) > 0, "no devices"

    sid += 1
    n: int256 = convert(len(participants), int256)
    pw: DynArray[uint256, MAX_WORDS] = []
    cw: DynArray[uint256, MAX_WORDS] = []
    ew: DynArray[uint256, MAX_WORDS] = []
    caw: DynArray[uint256, MAX_WORDS] = []
    exw: DynArray[uint256, MAX_WORDS] = []
    for w: uint256 in range(MAX_WORDS):
        if w >= words:
            pw.append(0)
            cw.append(0)
            ew.append(0)
            caw.append(0)
            exw.append(0)
            continue
        u0: uint256 = 0
        cn: uint256 = 0
        en: uint256 = 0
        for j: uint256 in range(LANES):
            c: int256 = self._lane(capacity[w], j)
            e: int256 = self._lane(export_limit[w], j)
            if w * LANES + j >= p.slots:
                assert self._lane(price[w], j) == 0 and c == 0 and e == 0, "nonzero padding"
            assert c >= 0 and e >= 0, "bad capacity or export limit"
            cn |= self._enc(self._div(c, n)) << (j * 64)
            en |= self._enc(self._div(e, n)) << (j * 64)
            # the price start: u = delta pi / rho0, so round 0 is each device's price-only step
            u0 |= self._enc(self._div(p.delta_wad * self._lane(price[w], j), p.rho0_wad)) << (
                j * 64
            )
        pw.append(price[w])
        cw.append(cn)
        ew.append(en)
        caw.append(capacity[w])
        exw.append(export_limit[w])
        self.u_w[w] = u0 ^ STATE_FLIP
        self.sum_w[w] = ZERO_BIASED
        self.snap_w[w] = ZERO_BIASED
        self.zbar_w[w] = STATE_FLIP  # the zero vector

    big: int256 = 0  # the largest |bound| of the participants
    for d: address in participants:
        dw: uint256 = self.device_word[d]
        assert dw & REGISTERED != 0, "device not whitelisted"
        assert self.dev[d] >> DEV_SESSION != sid, "duplicate device"
        big = max(big, max(-self._lane(dw, 0), self._lane(dw, 1)))
        self.dev[d] = sid << DEV_SESSION
    assert n * big < 2**62, "N * max|bound| beyond sum's lane"
    assert n * convert(p.slots, int256) * big * big < 2**118, "N * T * bound^2 beyond 2^118"

    self.consts = create_from_blueprint(
        BLUEPRINT, abi_encode(pw, cw, ew, caw, exw), raw_args=True
    )
    self.params_w = [
        convert(p.delta_wad, uint256) | (convert(p.gamma_wad, uint256) << 128),
        convert(p.eps_abs_wad, uint256) | (convert(p.eps_rel_wad, uint256) << 64)
        | (convert(p.mu_wad, uint256) << 128),
        convert(p.tau_wad, uint256) | (p.max_rounds << 128) | (p.deadline_s << 160)
        | (p.slots << 192),
        convert(p.alpha_wad, uint256) | (convert(p.viol_tol_nkw, uint256) << 128),
    ]
    self.rho0_wad = p.rho0_wad
    self.status = (sid << ST_SESSION) | (p.slots << ST_SLOTS) | (len(participants) << ST_N)
    self.rho_wad = p.rho0_wad
    self.acc = ACC_MARK
    self.round_deadline = block.timestamp + p.deadline_s
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
def submit(
    session: uint256,
    round: uint256,
    x: DynArray[uint256, MAX_WORDS],
    x_prev: DynArray[uint256, MAX_WORDS],
):
    """
    @notice Submit the sender's x_i for `round` of `session`, packed (see header), with the
            x_i the contract last took from it. The submission that completes the round
            runs the aggregate update.
    @param session The current session id.
    @param round The current round.
    @param x ceil(T/4) packed words of x_i in 1e-9 kW, each within the device's bounds.
    @param x_prev The sender's previous submission in this session, exactly as sent (its
           hash is checked); empty before its first.
    """
    dw: uint256 = self.device_word[msg.sender]
    assert dw & REGISTERED != 0, "not whitelisted"
    status: uint256 = self._open(session)
    assert round == status & ROUND_MASK, "wrong round"
    st: uint256 = self.dev[msg.sender]
    assert st >> DEV_SESSION == session, "device not in session"
    assert (st >> DEV_ROUND) & M48 != round + 1, "already submitted"
    slots: uint256 = (status >> ST_SLOTS) & M32
    words: uint256 = (slots + LANES - 1) // LANES
    assert len(x) == words, "wrong length"
    prev_hash: uint256 = st & HASH_MASK
    if prev_hash == 0:
        assert len(x_prev) == 0, "x_prev not empty"
    else:
        assert len(x_prev) == words and self._hash(x_prev) == prev_hash, "x_prev mismatch"

    lo: int256 = self._lane(dw, 0)
    hi: int256 = self._lane(dw, 1)
    sqx_delta: int256 = 0  # |x_new|^2 - |x_prev|^2
    sqdx: int256 = 0  # |x_new - x_prev|^2
    for w: uint256 in range(words, bound=MAX_WORDS):
        nw: uint256 = x[w]
        ow: uint256 = 0
        if prev_hash != 0:
            ow = x_prev[w]
        acc_w: uint256 = self.sum_w[w]
        # the hot loop of every submission: zigzag decoding inlined, unchecked where
        # int64 lanes bound the result
        for j: uint256 in range(LANES):
            sh: uint256 = unsafe_mul(j, 64)
            z: uint256 = (nw >> sh) & LANE_MASK
            xn: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                xn = unsafe_sub(unsafe_sub(0, xn), 1)
            if unsafe_add(unsafe_mul(w, LANES), j) < slots:
                assert xn >= lo and xn <= hi, "x out of bounds"
            else:
                assert xn == 0, "nonzero padding"
            z = (ow >> sh) & LANE_MASK
            xo: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                xo = unsafe_sub(unsafe_sub(0, xo), 1)
            dx: int256 = unsafe_sub(xn, xo)
            sqx_delta = unsafe_add(sqx_delta, unsafe_sub(unsafe_mul(xn, xn), unsafe_mul(xo, xo)))
            sqdx = unsafe_add(sqdx, unsafe_mul(dx, dx))
            # S += dx in lane j; the lane stays in range (N * B < 2^62), so the modular
            # word arithmetic is exact
            if dx >= 0:
                acc_w = unsafe_add(acc_w, convert(dx, uint256) << sh)
            else:
                acc_w = unsafe_sub(acc_w, convert(unsafe_sub(0, dx), uint256) << sh)
        self.sum_w[w] = acc_w

    a: uint256 = self.acc
    sq_x: int256 = convert(a & M128, int256) + sqx_delta
    sq_dx: int256 = convert((a >> 128) & M127, int256) + sqdx
    self.acc = ACC_MARK | (convert(sq_dx, uint256) << 128) | convert(sq_x, uint256)
    self.dev[msg.sender] = (session << DEV_SESSION) | ((round + 1) << DEV_ROUND) | self._hash(x)
    count: uint256 = ((status >> ST_SUBMITTED) & M32) + 1
    self.status = status + (1 << ST_SUBMITTED)
    log Submitted(session=session, round=round, device=msg.sender, x=x)
    if count == (status >> ST_N) & M32:
        self._close(session, round, 0)


@external
def advance(session: uint256):
    """
    @notice Once the round's deadline has passed (block.timestamp >= its start + deadline_s),
            a participant of the session or the operator may close the round: each missing
            device's previous x_i stands in for its submission (straggler policy). Others
            may not: a funded stranger could otherwise cut rounds short.
    @param session The current session id.
    """
    status: uint256 = self._open(session)
    assert msg.sender == self.operator or self.dev[msg.sender] >> DEV_SESSION == session, \
        "not a participant"
    assert block.timestamp >= self.round_deadline, "round deadline not reached"
    n: uint256 = (status >> ST_N) & M32
    self._close(session, status & ROUND_MASK, n - ((status >> ST_SUBMITTED) & M32))


@external
def end_session(session: uint256):
    """
    @notice End the open session unconverged (it diverges, or must stop): no submission or
            advance is taken after this. The registry records the session as ended, not
            converged, at the current round; each device's last submission stands as its
            x_i (publishable to the registry like a finalized one). Emits Finalized with
            ended = True.
    @param session The open session's id.
    """
    self._only_operator()
    status: uint256 = self._open(session)
    self._finalize(session, status & ROUND_MASK, False, True, status)


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
    n: int256 = convert((status >> ST_N) & M32, int256)
    out.active = True
    out.session = sid
    out.round = status & ROUND_MASK
    out.rho_wad = self.rho_wad
    out.deadline = self.round_deadline
    out.submitted = (status >> ST_SUBMITTED) & M32
    for w: uint256 in range((slots + LANES - 1) // LANES, bound=MAX_WORDS):
        sw: uint256 = self.snap_w[w]
        zw: uint256 = self.zbar_w[w] ^ STATE_FLIP
        uw: uint256 = self.u_w[w] ^ STATE_FLIP
        for j: uint256 in range(LANES):
            if w * LANES + j < slots:
                out.xbar.append(self._step2_average(self._biased(sw, j * 64), n))
                out.zbar.append(self._lane(zw, j))
                out.u.append(self._lane(uw, j))
    return out


@view
@external
def x_hash(device: address) -> Kept:
    """
    @notice What the contract keeps of a device's last submission.
    @param device The device address.
    @return (session, last submitted round + 1 (0: none), 160-bit keccak of its packed x).
    """
    st: uint256 = self.dev[device]
    return Kept(session=st >> DEV_SESSION, rounds=(st >> DEV_ROUND) & M48, hash=st & HASH_MASK)


@view
@external
def has_submitted(session: uint256, round: uint256, device: address) -> bool:
    """
    @notice Whether `device` has submitted for `round` of `session` (the latest session).
    @param session The session id.
    @param round The round.
    @param device The device address.
    @return True once its submission for that round is in.
    """
    st: uint256 = self.dev[device]
    return st >> DEV_SESSION == session and (st >> DEV_ROUND) & M48 == round + 1


@view
@external
def is_finalized(session: uint256) -> bool:
    """
    @notice Whether `session` exists and is over: finalized (converged or max_rounds) or
            ended by the operator (`end_session`; the registry's `ended` tells which).
    @param session The session id.
    @return True once over.
    """
    return self._is_finalized(session)


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


# ---------------------------------------------------------------- the steps of reference.py


@internal
@pure
def _step2_average(s: int256, n: int256) -> int256:
    """Step 2: xbar_t = S_t / N, rounded half away from zero (|S_t| < 2^62: unchecked)."""
    h: int256 = unsafe_div(n, 2)
    if s >= 0:
        return unsafe_div(unsafe_add(s, h), n)
    return unsafe_sub(0, unsafe_div(unsafe_add(unsafe_sub(0, s), h), n))


@internal
@pure
def _step5_residuals(
    c: CloseSums, sq_x: int256, sq_dx: int256, n: int256, slots: uint256, rho: int256,
    p: AdmmParams
) -> Residuals:
    """Step 5: r, s, the scales, eps_pri, eps_dual, the limits' excess, the stopping test
    and the balancing factor of step 6, from the round's sums (see header)."""
    res: Residuals = empty(Residuals)
    res.r = self._sqrt_wad(n * c.r2)
    res.s = self._div(rho * self._sqrt_wad(sq_dx - 2 * c.sdx_d + n * c.dd), WAD)
    sqrt_p: int256 = convert(isqrt(convert(n, uint256) * slots * WAD_U * WAD_U), int256)
    abs_part: int256 = self._div(sqrt_p * p.eps_abs_wad, WAD)
    x_scale: int256 = max(self._sqrt_wad(sq_x), self._sqrt_wad(sq_x + 2 * c.s_zx + n * c.r2))
    y_scale: int256 = self._div(rho * self._sqrt_wad(n * c.uu), WAD)
    res.eps_pri = abs_part + self._div(p.eps_rel_wad * x_scale, WAD)
    res.eps_dual = abs_part + self._div(p.eps_rel_wad * y_scale, WAD)
    res.import_excess = c.imp
    res.export_excess = c.exp
    res.converged = (
        res.r <= res.eps_pri and res.s <= res.eps_dual
        and max(c.imp, c.exp) <= p.viol_tol_nkw
    )
    # f = sqrt((r / x_scale) (y_scale / s)), each ratio clamped to [1e-18, 1e18] so that
    # nothing overflows (f is clipped to [1/tau, tau] anyway)
    ra: int256 = RATIO_MAX
    if x_scale > 0:
        ra = min(self._div(res.r * WAD, x_scale), RATIO_MAX)
    rb: int256 = RATIO_MAX
    if res.s > 0:
        rb = min(self._div(y_scale * WAD, res.s), RATIO_MAX)
    res.factor = self._sqrt_wad(self._div(max(ra, 1) * max(rb, 1), WAD))
    return res


@internal
@pure
def _step6_rho(res: Residuals, rho: int256, p: AdmmParams) -> (int256, int256):
    """Step 6: normalised residual balancing. When f leaves [1/mu, mu], rho <- f rho with f
    clipped to [1/tau, tau] and then to [RHO_MIN/rho, RHO_MAX/rho], so that rho stays in
    [RHO_MIN, RHO_MAX] (clamped again after rounding). Returns (rho_next, f): u is then
    divided by f (WAD: unchanged)."""
    f: int256 = res.factor
    if f <= p.mu_wad and f * p.mu_wad >= WAD * WAD:
        return rho, WAD
    f = max(max(f, self._div(WAD * WAD, p.tau_wad)), self._div(RHO_MIN * WAD, rho))
    f = min(min(f, p.tau_wad), self._div(RHO_MAX * WAD, rho))
    return min(max(self._div(rho * f, WAD), RHO_MIN), RHO_MAX), f


@internal
def _close(session: uint256, round: uint256, stragglers: uint256):
    """Steps 2-6 for the round, word by word over T (never over the devices), then the
    next round or finalization."""
    p: AdmmParams = self._params()
    words: uint256 = (p.slots + LANES - 1) // LANES
    n: int256 = convert((self.status >> ST_N) & M32, int256)
    rho: int256 = self.rho_wad
    den: int256 = rho + self._div(n * p.delta_wad * p.gamma_wad, WAD)
    beta: int256 = WAD - p.alpha_wad  # 1 - alpha (<= 0)
    hn: int256 = n // 2  # halves, for divisions rounded half away from zero
    hden: int256 = den // 2
    u: int256[MAX_SLOTS] = empty(int256[MAX_SLOTS])
    xw: DynArray[uint256, MAX_WORDS] = []
    zw: DynArray[uint256, MAX_WORDS] = []
    c: CloseSums = empty(CloseSums)
    uw_out: DynArray[uint256, MAX_WORDS] = []
    cb: Bytes[CONSTS_BYTES] = slice(self.consts.code, 0, CONSTS_BYTES)
    for w: uint256 in range(words, bound=MAX_WORDS):
        sw: uint256 = self.sum_w[w]
        snw: uint256 = self.snap_w[w]
        zbw: uint256 = self.zbar_w[w] ^ STATE_FLIP
        uw: uint256 = self.u_w[w] ^ STATE_FLIP
        pw: uint256 = convert(extract32(cb, PRICE_AT + 32 * w), uint256)
        cw: uint256 = convert(extract32(cb, CAP_N_AT + 32 * w), uint256)
        ew: uint256 = convert(extract32(cb, EXP_N_AT + 32 * w), uint256)
        caw: uint256 = convert(extract32(cb, CAP_AT + 32 * w), uint256)
        exw: uint256 = convert(extract32(cb, EXP_AT + 32 * w), uint256)
        xout: uint256 = 0
        zout: uint256 = 0
        uout: uint256 = 0
        for j: uint256 in range(LANES):
            t: uint256 = unsafe_add(unsafe_mul(w, LANES), j)
            if t >= p.slots:
                break
            sh: uint256 = unsafe_mul(j, 64)
            # Steps 2-4 inlined, with the lane decoding and the rounded divisions: this loop
            # runs T times a round, and internal calls here cost ~300k gas a round at T=96
            # (measured). fixed_round.py's step2_average, step3_zbar and step4_u are the
            # same lines in Python; the divisions round half away from zero like `_div`.
            s_t: int256 = unsafe_sub(convert((sw >> sh) & LANE_MASK, int256), BIAS)
            s_old: int256 = unsafe_sub(convert((snw >> sh) & LANE_MASK, int256), BIAS)
            # step 2: xbar_t = S_t / N (and last round's, from SNAP), half away from zero
            xb: int256 = 0
            if s_t >= 0:
                xb = unsafe_div(unsafe_add(s_t, hn), n)
            else:
                xb = -unsafe_div(unsafe_add(-s_t, hn), n)
            xbo: int256 = 0
            if s_old >= 0:
                xbo = unsafe_div(unsafe_add(s_old, hn), n)
            else:
                xbo = -unsafe_div(unsafe_add(-s_old, hn), n)
            # zigzag lanes: u, last round's zbar, pi, C/N, E/N
            z: uint256 = (uw >> sh) & LANE_MASK
            uo: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                uo = -uo - 1
            z = (zbw >> sh) & LANE_MASK
            zo: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                zo = -zo - 1
            z = (pw >> sh) & LANE_MASK
            pr: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                pr = -pr - 1
            z = (cw >> sh) & LANE_MASK
            cn: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                cn = -cn - 1
            z = (ew >> sh) & LANE_MASK
            en: int256 = convert(z >> 1, int256)
            if z & 1 == 1:
                en = -en - 1
            # step 3: xhat = alpha xbar+ + (1 - alpha) zbar; a = u + xhat;
            #         zbar+ = clip((rho a - delta pi) / den, -E/N, C/N)
            q: int256 = p.alpha_wad * xb + beta * zo
            xh: int256 = 0
            if q >= 0:
                xh = unsafe_div(unsafe_add(q, HALF_WAD), WAD)
            else:
                xh = -unsafe_div(unsafe_add(-q, HALF_WAD), WAD)
            q = rho * (uo + xh) - p.delta_wad * pr
            zb: int256 = 0
            if q >= 0:
                zb = unsafe_div(unsafe_add(q, hden), den)
            else:
                zb = -unsafe_div(unsafe_add(-q, hden), den)
            zb = min(max(zb, -en), cn)
            # step 4: u+ = u + xhat - zbar+, saturated to the lane (stored now; rewritten
            # below if rho moves)
            un: int256 = min(max(uo + xh - zb, -MAX_LANE), MAX_LANE)
            u[t] = un
            if un >= 0:
                uout |= convert(un, uint256) << unsafe_add(sh, 1)
            else:
                uout |= unsafe_sub(convert(-un, uint256) << 1, 1) << sh
            if xb >= 0:
                xout |= convert(xb, uint256) << unsafe_add(sh, 1)
            else:
                xout |= unsafe_sub(convert(-xb, uint256) << 1, 1) << sh
            if zb >= 0:
                zout |= convert(zb, uint256) << unsafe_add(sh, 1)
            else:
                zout |= unsafe_sub(convert(-zb, uint256) << 1, 1) << sh
            # step 5's sums: gap = zbar+ - xbar+; w = dxbar - dzbar - (1 - alpha)(xbar+ - zbar)
            gap: int256 = zb - xb
            q = beta * (xb - zo)
            wv: int256 = (xb - xbo) - (zb - zo)
            if q >= 0:
                wv -= unsafe_div(unsafe_add(q, HALF_WAD), WAD)
            else:
                wv += unsafe_div(unsafe_add(-q, HALF_WAD), WAD)
            # unchecked: lanes are int64, products < 2^135, at most 384 terms
            c.r2 = unsafe_add(c.r2, unsafe_mul(gap, gap))
            c.dd = unsafe_add(c.dd, unsafe_mul(wv, wv))
            c.sdx_d = unsafe_add(c.sdx_d, unsafe_mul(s_t - s_old, wv))
            c.s_zx = unsafe_add(c.s_zx, unsafe_mul(s_t, gap))
            c.uu = unsafe_add(c.uu, unsafe_mul(un, un))
            # the schedule's own excess over the limits: S_t = sum_i x_i exactly
            z = (caw >> sh) & LANE_MASK  # C_t, E_t >= 0: zigzag is 2v
            c.imp = max(c.imp, s_t - convert(z >> 1, int256))
            z = (exw >> sh) & LANE_MASK
            c.exp = max(c.exp, -convert(z >> 1, int256) - s_t)
        self.snap_w[w] = sw
        self.zbar_w[w] = zout ^ STATE_FLIP
        self.u_w[w] = uout ^ STATE_FLIP
        xw.append(xout)
        zw.append(zout)
        uw_out.append(uout)

    a: uint256 = self.acc
    res: Residuals = self._step5_residuals(
        c, convert(a & M128, int256), convert((a >> 128) & M127, int256), n, p.slots, rho, p
    )
    self.acc = ACC_MARK | (a & M128)  # SQDX restarts for the next round

    rho_next: int256 = rho
    f: int256 = WAD
    if not res.converged:
        rho_next, f = self._step6_rho(res, rho, p)

    # rho moved: u rescaled by 1/f and rewritten (a dirty slot: 100 gas a word)
    if f != WAD:
        for w: uint256 in range(words, bound=MAX_WORDS):
            out: uint256 = 0
            for j: uint256 in range(LANES):
                t: uint256 = unsafe_add(unsafe_mul(w, LANES), j)
                if t >= p.slots:
                    break
                v: int256 = min(max(self._div(u[t] * WAD, f), -MAX_LANE), MAX_LANE)
                out |= self._enc(v) << unsafe_mul(j, 64)
            self.u_w[w] = out ^ STATE_FLIP
            uw_out[w] = out
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
        converged=res.converged,
        stragglers=stragglers,
        import_excess=res.import_excess,
        export_excess=res.export_excess,
        factor=res.factor,
        xbar=xw,
        zbar=zw,
        u=uw_out,
    )

    status: uint256 = self.status
    if res.converged or round + 1 >= p.max_rounds:
        self._finalize(session, round, res.converged, False, status)
    else:
        # next round, no submissions yet
        self.status = (status >> ST_N << ST_N) | (round + 1)
        self.round_deadline = block.timestamp + p.deadline_s


@internal
def _finalize(session: uint256, round: uint256, converged: bool, ended: bool, status: uint256):
    """Mark the session final (and ended, by the operator), record it in the registry."""
    self.status = status | (1 << ST_FINAL) | (convert(ended, uint256) << ST_ENDED)
    extcall ScheduleRegistry(registry).record_final(
        session,
        Final(
            finalized=True,
            converged=converged,
            round=round,
            block=block.number,
            timestamp=block.timestamp,
            devices=(status >> ST_N) & M32,
            slots=(status >> ST_SLOTS) & M32,
        ),
        ended,
    )
    log Finalized(session=session, round=round, converged=converged, ended=ended)


# ---------------------------------------------------------------- helpers


@internal
@view
def _only_operator():
    assert msg.sender == self.operator, "only operator"


@internal
@view
def _params() -> AdmmParams:
    """The latest session's parameters from `params_w` (rho0 left 0)."""
    w0: uint256 = self.params_w[0]
    w1: uint256 = self.params_w[1]
    w2: uint256 = self.params_w[2]
    w3: uint256 = self.params_w[3]
    return AdmmParams(
        slots=(w2 >> 192) & M32,
        delta_wad=convert(w0 & M128, int256),
        gamma_wad=convert(w0 >> 128, int256),
        rho0_wad=0,
        eps_abs_wad=convert(w1 & LANE_MASK, int256),
        eps_rel_wad=convert((w1 >> 64) & LANE_MASK, int256),
        mu_wad=convert(w1 >> 128, int256),
        tau_wad=convert(w2 & M128, int256),
        max_rounds=(w2 >> 128) & M32,
        deadline_s=(w2 >> 160) & M32,
        alpha_wad=convert(w3 & M128, int256),
        viol_tol_nkw=convert(w3 >> 128, int256),
    )


@internal
@view
def _open(session: uint256) -> uint256:
    """`status`, once `session` is checked to be the open session."""
    status: uint256 = self.status
    assert session != 0 and session == status >> ST_SESSION, "wrong session"
    assert (status >> ST_ENDED) & 1 == 0, "session ended"
    assert (status >> ST_FINAL) & 1 == 0, "session finalized"
    return status


@internal
@view
def _is_finalized(session: uint256) -> bool:
    status: uint256 = self.status
    sid: uint256 = status >> ST_SESSION
    if session == 0 or session > sid:
        return False
    return session < sid or (status >> ST_FINAL) & 1 == 1


@internal
@pure
def _hash(x: DynArray[uint256, MAX_WORDS]) -> uint256:
    """160 bits of keccak256(abi_encode(x)): what the contract keeps of a submission."""
    return convert(keccak256(abi_encode(x)), uint256) & HASH_MASK


@internal
@pure
def _lane(word: uint256, j: uint256) -> int256:
    """Lane j of a packed word, zigzag-decoded."""
    return self._dec(word, j * 64)


@internal
@pure
def _dec(word: uint256, sh: uint256) -> int256:
    """The zigzag lane at bit `sh` of a packed word."""
    z: uint256 = (word >> sh) & LANE_MASK
    if z & 1 == 1:
        return unsafe_sub(-convert(z >> 1, int256), 1)
    return convert(z >> 1, int256)


@internal
@pure
def _biased(word: uint256, sh: uint256) -> int256:
    """The biased lane at bit `sh` of an S word."""
    return convert((word >> sh) & LANE_MASK, int256) - BIAS


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

