#pragma version 0.4.3
#pragma evm-version paris
"""
@title ScheduleRegistry: the finalized day-ahead schedules, readable by anyone
@notice The Coordinator it is bound to records each session's end: converged, not
        converged (max rounds), or ended unconverged by the operator (`end_session`),
        with its round, block and time. Then anyone copies a device's final x_i here
        (checked against the hash the Coordinator keeps of the device's last submission)
        and each participant publishes the on/off plans it derived from it. Devices, the
        MQTT bridge and the Billing contract read it.
@dev Vectors are packed as in Coordinator.vy: 4 zigzag int64 lanes per word, 1e-9 kW.
     Nothing here is ever overwritten: a session's record and a device's schedule and plan
     are written once.
"""

MAX_WORDS: constant(uint256) = 96  # 384 slots, 4 a word
MAX_PLAN_WORDS: constant(uint256) = 32  # on/off plans: 256 slots a word
HASH_MASK: constant(uint256) = 2**160 - 1


# what the Coordinator keeps of a device's last submission
struct Kept:
    session: uint256
    rounds: uint256
    hash: uint256


interface Coordinator:
    def x_hash(device: address) -> Kept: view


struct Final:
    finalized: bool
    converged: bool
    round: uint256  # the last round
    block: uint256
    timestamp: uint256
    devices: uint256  # N
    slots: uint256  # T


event Bound:
    coordinator: indexed(address)


event SessionFinal:
    session: indexed(uint256)
    round: uint256
    converged: bool
    ended: bool
    timestamp: uint256


event ScheduleStored:
    session: indexed(uint256)
    device: indexed(address)


event PlanPublished:
    session: indexed(uint256)
    device: indexed(address)
    words: DynArray[uint256, MAX_PLAN_WORDS]


deployer: immutable(address)
coordinator: public(address)
# session -> its Final packed into one word (one storage write when a round closes the
# session): finalized | converged << 1 | ended << 2 | round << 8 | block << 72 |
# timestamp << 136 | devices << 200 | slots << 232
final_word: HashMap[uint256, uint256]
M64: constant(uint256) = 2**64 - 1
M32: constant(uint256) = 2**32 - 1
M24: constant(uint256) = 2**24 - 1
schedules: HashMap[uint256, HashMap[address, DynArray[uint256, MAX_WORDS]]]
plans: HashMap[uint256, HashMap[address, DynArray[uint256, MAX_PLAN_WORDS]]]


@deploy
def __init__():
    """
    @notice The deployer may bind the registry to its Coordinator, once.
    """
    deployer = msg.sender


@external
def bind(coordinator: address):
    """
    @notice Make `coordinator` the only writer. Once, by the deployer.
    @param coordinator The Coordinator contract's address.
    """
    assert msg.sender == deployer, "only deployer"
    assert self.coordinator == empty(address), "already bound"
    assert coordinator != empty(address), "zero coordinator"
    self.coordinator = coordinator
    log Bound(coordinator=coordinator)


@external
def record_final(session: uint256, f: Final, ended: bool):
    """
    @notice Record a session's end (round, block, time, N, T). Only the Coordinator.
    @param session The session id.
    @param f Its record; `finalized` must be True.
    @param ended True when the operator ended it unconverged (`converged` is then False).
    """
    assert msg.sender == self.coordinator, "only coordinator"
    assert f.finalized, "not final"
    assert self.final_word[session] == 0, "already final"
    assert f.round <= M64 and f.block <= M64 and f.timestamp <= M64, "beyond 64 bits"
    assert f.devices <= M32 and f.slots <= M24, "beyond field width"
    self.final_word[session] = (
        1 | (convert(f.converged, uint256) << 1) | (convert(ended, uint256) << 2)
        | (f.round << 8) | (f.block << 72) | (f.timestamp << 136) | (f.devices << 200)
        | (f.slots << 232)
    )
    log SessionFinal(session=session, round=f.round, converged=f.converged, ended=ended,
                     timestamp=f.timestamp)


@external
def publish_schedule(session: uint256, device: address, x: DynArray[uint256, MAX_WORDS]):
    """
    @notice After a session's end, anyone may copy a device's final x_i here: it must be
            the device's last submission (its hash, kept by the Coordinator, is checked),
            as in its Submitted event. Possible until the device joins a later session.
    @param session A finalized (or ended) session.
    @param device A participant that submitted in it.
    @param x Its last submission, packed (ceil(T/4) words).
    """
    self._only_final(session)
    k: Kept = self._kept(session, device)
    assert k.hash != 0, "device never submitted"
    assert convert(keccak256(abi_encode(x)), uint256) & HASH_MASK == k.hash, (
        "not the device's last submission"
    )
    assert len(self.schedules[session][device]) == 0, "schedule already stored"
    self.schedules[session][device] = x
    log ScheduleStored(session=session, device=device)


@external
def publish_plan(session: uint256, words: DynArray[uint256, MAX_PLAN_WORDS]):
    """
    @notice After a session's end, a participant publishes the on/off plans of its switched
            loads, derived from its final x_i by the rule of mqtt_bridge/plan.py (a private
            split no contract can check: the registry records who said what, once).
    @param session A finalized (or ended) session the sender took part in.
    @param words The plans, ceil(T/256) words per actuator in scenario order.
    """
    self._only_final(session)
    self._kept(session, msg.sender)
    assert len(words) > 0, "empty plan"
    assert len(self.plans[session][msg.sender]) == 0, "plan already published"
    self.plans[session][msg.sender] = words
    log PlanPublished(session=session, device=msg.sender, words=words)


@view
@external
def finals(session: uint256) -> Final:
    """
    @notice A session's finalization record (`finalized` False before).
    @param session The session id.
    @return (finalized, converged, round, block, timestamp, devices, slots).
    """
    w: uint256 = self.final_word[session]
    return Final(
        finalized=w & 1 == 1,
        converged=(w >> 1) & 1 == 1,
        round=(w >> 8) & M64,
        block=(w >> 72) & M64,
        timestamp=(w >> 136) & M64,
        devices=(w >> 200) & M32,
        slots=(w >> 232) & M24,
    )


@view
@external
def schedule(session: uint256, device: address) -> DynArray[uint256, MAX_WORDS]:
    """
    @notice A device's final x_i, packed (empty until stored).
    @param session The session id.
    @param device The device.
    @return ceil(T/4) packed words, 1e-9 kW.
    """
    return self.schedules[session][device]


@view
@external
def plan(session: uint256, device: address) -> DynArray[uint256, MAX_PLAN_WORDS]:
    """
    @notice The on/off plans `device` published for `session` (empty before).
    @param session The session id.
    @param device The device.
    @return The plan words.
    """
    return self.plans[session][device]


@view
@external
def ended(session: uint256) -> bool:
    """
    @notice Whether the operator ended `session` unconverged (`end_session`).
    @param session The session id.
    @return True for an ended session.
    """
    return self.final_word[session] & 5 == 5


@internal
@view
def _only_final(session: uint256):
    assert self.final_word[session] & 1 == 1, "session not finalized"


@internal
@view
def _kept(session: uint256, device: address) -> Kept:
    """What the Coordinator keeps of `device`'s last submission; it must be of `session`
    (a device that joined a later session can no longer publish for this one)."""
    k: Kept = staticcall Coordinator(self.coordinator).x_hash(device)
    assert k.session == session, "device not in session"
    return k
