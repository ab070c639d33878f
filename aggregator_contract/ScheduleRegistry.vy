#pragma version 0.4.3
#pragma evm-version paris
"""
@title ScheduleRegistry: the finalized day-ahead schedules, readable by anyone
@notice Written only by the Coordinator it is bound to: when a session finalizes, its
        round, block and time; then each device's final x_i (checked by the Coordinator
        against the hash of the device's last submission) and the on/off plans a device
        derived from it. Devices, the MQTT bridge and later a billing contract read it.
@dev Vectors are packed as in Coordinator.vy: 4 zigzag int64 lanes per word, 1e-9 kW.
     Nothing here is ever overwritten: a session's record and a device's schedule and plan
     are written once.
"""

MAX_WORDS: constant(uint256) = 96  # 384 slots, 4 a word
MAX_PLAN_WORDS: constant(uint256) = 32


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
# session): finalized | converged << 1 | round << 8 | block << 72 | timestamp << 136 |
# devices << 200 | slots << 232
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
def record_final(session: uint256, f: Final):
    """
    @notice Record a session's finalization (round, block, time, N, T).
    @param session The session id.
    @param f Its record; `finalized` must be True.
    """
    self._only_coordinator()
    assert f.finalized, "not final"
    assert self.final_word[session] == 0, "already final"
    assert f.round <= M64 and f.block <= M64 and f.timestamp <= M64, "beyond 64 bits"
    assert f.devices <= M32 and f.slots <= M24, "beyond field width"
    self.final_word[session] = (
        1 | (convert(f.converged, uint256) << 1) | (f.round << 8) | (f.block << 72)
        | (f.timestamp << 136) | (f.devices << 200) | (f.slots << 232)
    )
    log SessionFinal(session=session, round=f.round, converged=f.converged,
                     timestamp=f.timestamp)


@external
def store_schedule(session: uint256, device: address, x: DynArray[uint256, MAX_WORDS]):
    """
    @notice Store a device's final x_i (the Coordinator checked it against its last
            submission).
    @param session A finalized session.
    @param device The device.
    @param x Packed x_i, ceil(T/4) words.
    """
    self._only_coordinator()
    assert self.final_word[session] & 1 == 1, "session not finalized"
    assert len(self.schedules[session][device]) == 0, "schedule already stored"
    assert len(x) > 0, "empty schedule"
    self.schedules[session][device] = x
    log ScheduleStored(session=session, device=device)


@external
def store_plan(session: uint256, device: address, words: DynArray[uint256, MAX_PLAN_WORDS]):
    """
    @notice Store the on/off plans a device derived from its final x_i (rule of
            mqtt_bridge/plan.py; a private split the contracts cannot check).
    @param session A finalized session.
    @param device The device that published them.
    @param words ceil(T/256) words per actuator, in scenario order.
    """
    self._only_coordinator()
    assert self.final_word[session] & 1 == 1, "session not finalized"
    assert len(words) > 0, "empty plan"
    assert len(self.plans[session][device]) == 0, "plan already published"
    self.plans[session][device] = words
    log PlanPublished(session=session, device=device, words=words)


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


@internal
@view
def _only_coordinator():
    assert msg.sender == self.coordinator, "only coordinator"
