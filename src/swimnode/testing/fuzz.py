"""Randomized whole-cluster scenarios: a step language, a deterministic replayer, and a
hypothesis state machine that generates scenarios and checks them against the
properties listed below. The simulated network and clusters it replays on are those of
docs/api.md §9 (Simulation). Needs hypothesis, from the `[test]` extra.

A `Scenario` is a cluster size, a seed and a list of steps (crash, restart, partition,
heal, packet loss, application-state writes, key rotation, quiet period). `replay`
runs one from the start in a fresh `trio.run` under
`trio.testing.MockClock(autojump_threshold=0)` on the in-memory network, so the same
scenario always does the same thing and a failure is reproduced by its `repr`:

    replay(Scenario(n=5, seed=7, steps=(Crash("n3", 5.0), Quiet())))

After every `Quiet` step (heal, no loss, then up to `quiet_bound(n)` simulated
seconds) the replayer checks, at every running node:

* completeness: every crashed node is DEAD there or forgotten;
* accuracy: every running node, a restarted one included, is ALIVE there;
* convergence: every running node's application state is there, exactly as the
  scenario last wrote it (a restarted node starts with an empty state).

`ClusterMachine` is a `hypothesis.stateful.RuleBasedStateMachine` whose rules only
append steps (Hypothesis machines are synchronous and a Trio cluster is not); its
teardown appends a final quiet period and replays the whole scenario once. Replaying
once per example keeps the cost linear in the number of steps, and Hypothesis still
shrinks failing scenarios step by step.

Constraints, all by design of the protocol rather than bugs, enforced by the rules'
preconditions and documented in `ClusterMachine`:

* every node lists `n0` and `n1` as seeds, and a crash never takes down the last
  running seed: a restarted node, or a side of a partition that outlasted
  `dead_reclaim_time` (after which the sides have forgotten each other), can only
  rejoin through a live seed;
* at least two nodes keep running, so there is always a cluster to check;
* keys are rotated by the operator on every *running* node at once (install, then
  use one node at a time, then remove the old key); a crashed node is restarted
  with the cluster's current keys, as an operator would provision it. A node started
  with keys the others no longer accept could never rejoin, by design.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import trio
import trio.testing

try:
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
except ModuleNotFoundError as exc:
    # Only hypothesis itself missing means "install the extra"; a broken install of it
    # (one of its own dependencies missing) keeps its own error.
    if exc.name != "hypothesis":
        raise
    raise ImportError(
        "swimnode.testing.fuzz needs hypothesis: pip install 'swimnode[test]'"
    ) from None

from ..net.keyring import KEY_SIZE, Keyring
from ..protocol.config import Config
from ..protocol.member import MemberState
from ..protocol.suspicion import suspicion_bounds
from .cluster import SimCluster, open_sim_cluster
from .network import Network

__all__ = [
    "SEEDS",
    "ClusterMachine",
    "Crash",
    "DeleteState",
    "FuzzStats",
    "Heal",
    "Outcome",
    "Partition",
    "Quiet",
    "Restart",
    "RotateKeys",
    "Scenario",
    "SetLoss",
    "SetState",
    "Step",
    "Violation",
    "describe",
    "quiet_bound",
    "replay",
    "run_scenario",
]

SEEDS = ("n0", "n1")
"""The nodes every node joins (and re-joins) through."""

STATE_KEYS = ("k0", "k1", "k2")
"""Application-state keys the scenarios write (few, so writes overwrite and delete)."""

WAITS = (0.0, 1.0, 5.0, 20.0, 45.0)
"""Simulated seconds a step may be followed by. Several long waits in a row outlast
`dead_reclaim_time` (60 s), so partitioned sides forget each other."""

LOSSES = (0.0, 0.01, 0.05, 0.1)
"""Datagram loss rates a scenario may set."""

SETTLE = 5.0
"""After a quiet period converged, the properties must still hold this much later."""

USE_STAGGER = 0.5
"""Simulated seconds between two nodes switching to a new primary key."""


# ----- steps --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Crash:
    """Kill a running node (no leave), then wait `then` simulated seconds."""

    name: str
    then: float = 0.0


@dataclass(frozen=True, slots=True)
class Restart:
    """Start a crashed node again under the same name, with the current keys."""

    name: str
    then: float = 0.0


@dataclass(frozen=True, slots=True)
class Partition:
    """Cut `side` (node names, running or not) off from every other node. Partitions
    add up until `Heal`."""

    side: tuple[str, ...]
    then: float = 0.0


@dataclass(frozen=True, slots=True)
class Heal:
    """Remove every partition."""

    then: float = 0.0


@dataclass(frozen=True, slots=True)
class SetLoss:
    """Drop this fraction of datagrams from now on."""

    loss: float
    then: float = 0.0


@dataclass(frozen=True, slots=True)
class SetState:
    """`Node.set_state(key, value)` on a running node."""

    name: str
    key: str
    value: int
    then: float = 0.0


@dataclass(frozen=True, slots=True)
class DeleteState:
    """`Node.delete_state(key)` on a running node (a no-op if the key is unset)."""

    name: str
    key: str
    then: float = 0.0


@dataclass(frozen=True, slots=True)
class RotateKeys:
    """One phase of a key rotation on every running node: `install` a new key, `use`
    it (node by node, `USE_STAGGER` apart), or `remove` the previous primary."""

    phase: Literal["install", "use", "remove"]
    then: float = 0.0


@dataclass(frozen=True, slots=True)
class Quiet:
    """Heal, set loss to 0, wait until the properties hold (at most `quiet_bound`
    simulated seconds), check they still hold `SETTLE` seconds later."""


Step = Crash | Restart | Partition | Heal | SetLoss | SetState | DeleteState | RotateKeys | Quiet


@dataclass(frozen=True, slots=True)
class Scenario:
    """A cluster of `n` nodes (`n0`...) and what happens to it; `seed` fixes every
    random choice of the network and the nodes."""

    n: int
    seed: int
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True, slots=True)
class Violation:
    """A quiet period after which a property did not hold."""

    step: int
    """Index in `Scenario.steps` of the failed `Quiet` (-1: the cluster never formed)."""
    time: float
    """Simulated seconds since the start of the run."""
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a replay did: simulated time, quiet periods checked, the first violation."""

    sim_time: float
    checks: int
    violation: Violation | None
    settled: tuple[float, ...] = ()
    """Simulated seconds each passed quiet period took to restore the properties."""


def quiet_bound(n: int, config: Config | None = None) -> float:
    """Simulated seconds a quiet period may take to restore every property for an
    `n`-node cluster: the longest seed-join backoff (30 s) a node alone may be in,
    a full probe round, the longest suspicion timeout, ten anti-entropy rounds for
    the application state and partition merging, and a 10 s margin."""
    cfg = config if config is not None else Config.lan("n0")
    _, hi = suspicion_bounds(
        cfg.suspicion_mult, cfg.suspicion_max_timeout_mult, n, cfg.probe_interval
    )
    return 30.0 + n * cfg.probe_interval + hi + 10 * cfg.state_gossip_interval + 10.0


# ----- replay -------------------------------------------------------------------------


def _key(seed: int, index: int) -> bytes:
    # Keys derived from the seed, so a replay is the same to the byte.
    return random.Random(f"swimnode-fuzz/{seed}/{index}").randbytes(KEY_SIZE)


@dataclass
class _Run:
    cluster: SimCluster
    scenario: Scenario
    keys: list[bytes]
    """Installed cluster keys, primary first."""
    rings: dict[str, Keyring] = field(default_factory=dict)
    expected: dict[str, dict[str, int]] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    rotations: int = 0

    async def start(self, name: str) -> None:
        ring = Keyring(self.keys[0], self.keys[1:])
        seeds = tuple(SimCluster.address_of(s) for s in SEEDS)
        await self.cluster.start(name, keyring=ring, seeds=seeds)
        self.rings[name] = ring
        self.expected[name] = {}
        self.crashed.discard(name)

    async def do(self, step: Step) -> None:
        cluster = self.cluster
        if isinstance(step, Crash):
            cluster.crash(step.name)
            del self.rings[step.name]
            del self.expected[step.name]
            self.crashed.add(step.name)
        elif isinstance(step, Restart):
            await self.start(step.name)
        elif isinstance(step, Partition):
            side = {SimCluster.address_of(s) for s in step.side}
            others = {SimCluster.address_of(f"n{i}") for i in range(self.scenario.n)} - side
            cluster.network.partition(side, others)
        elif isinstance(step, Heal):
            cluster.network.heal()
        elif isinstance(step, SetLoss):
            cluster.network.loss = step.loss
        elif isinstance(step, SetState):
            cluster.nodes[step.name].set_state(step.key, step.value)
            self.expected[step.name][step.key] = step.value
        elif isinstance(step, DeleteState):
            cluster.nodes[step.name].delete_state(step.key)
            self.expected[step.name].pop(step.key, None)
        elif isinstance(step, RotateKeys):
            await self.rotate(step.phase)
        else:
            raise TypeError(f"quiet periods are run by run_scenario, not {step!r}")
        if step.then:
            await trio.sleep(step.then)

    async def rotate(self, phase: str) -> None:
        if phase == "install":
            self.rotations += 1
            new = _key(self.scenario.seed, self.rotations)
            for ring in self.rings.values():
                ring.install(new)
            self.keys.append(new)
        elif phase == "use":
            new = self.keys[-1]
            for name in sorted(self.rings):
                self.rings[name].use(new)
                await trio.sleep(USE_STAGGER)
            self.keys.remove(new)
            self.keys.insert(0, new)
        else:
            old = self.keys.pop(1)
            for ring in self.rings.values():
                ring.remove(old)

    def problems(self) -> list[str]:
        """Every property that does not hold right now (empty: all hold)."""
        cluster = self.cluster
        running = sorted(cluster.nodes)
        found: list[str] = []
        for observer in running:
            node = cluster.nodes[observer]
            view = {m.name: m for m in node.members()}
            own = dict(node.local_member.app_state)
            if own != self.expected[observer]:
                found.append(
                    f"convergence: {observer} holds its own state as {own}, "
                    f"expected {self.expected[observer]}"
                )
            for name in sorted(self.crashed):
                member = view.get(name)
                if member is not None and member.state is not MemberState.DEAD:
                    found.append(
                        f"completeness: {observer} holds crashed {name} as "
                        f"{member.state.label} (incarnation {member.incarnation})"
                    )
            for name in running:
                if name == observer:
                    continue
                member = view.get(name)
                if member is None:
                    found.append(f"accuracy: {observer} does not know running {name}")
                    continue
                if member.state is not MemberState.ALIVE:
                    found.append(
                        f"accuracy: {observer} holds running {name} as "
                        f"{member.state.label} (incarnation {member.incarnation})"
                    )
                held = dict(member.app_state)
                if held != self.expected[name]:
                    found.append(
                        f"convergence: {observer} holds {name}'s state as {held}, "
                        f"expected {self.expected[name]}"
                    )
        return found

    async def quiet(self, index: int, start: float) -> float | Violation:
        network = self.cluster.network
        network.heal()
        network.loss = 0.0
        bound = quiet_bound(self.scenario.n)
        took = await self.cluster.wait_for(lambda: not self.problems(), timeout=bound, step=0.5)
        if took is not None:
            await trio.sleep(SETTLE)
        found = self.problems()
        if not found and took is not None:
            return took
        if took is None:
            header = f"not restored within a {bound:g} s quiet period"
        else:
            header = f"restored after {took:g} s but broken again {SETTLE:g} s later"
        if not found:
            found = ["(every property held again just after the bound)"]
        return Violation(index, trio.current_time() - start, (header, *found[:12]))


async def run_scenario(scenario: Scenario) -> Outcome:
    """Run `scenario` in the current Trio run (which should use a `MockClock` with
    `autojump_threshold=0`) and check the properties after every `Quiet` step."""
    if scenario.n < 2:
        raise ValueError("a scenario needs at least two nodes")
    start = trio.current_time()
    checks = 0
    settled: list[float] = []
    net = Network(seed=scenario.seed)
    async with open_sim_cluster(0, seed=scenario.seed, network=net, record=False) as cluster:
        run = _Run(cluster, scenario, keys=[_key(scenario.seed, 0)])
        for i in range(scenario.n):
            await run.start(f"n{i}")
            await trio.sleep(0.01)
        if await cluster.wait_for(lambda: not run.problems(), timeout=30.0) is None:
            violation = Violation(
                -1,
                trio.current_time() - start,
                ("the cluster did not form within 30 s", *run.problems()[:12]),
            )
            return Outcome(trio.current_time() - start, checks, violation, ())
        for index, step in enumerate(scenario.steps):
            if isinstance(step, Quiet):
                checks += 1
                result = await run.quiet(index, start)
                if isinstance(result, Violation):
                    return Outcome(trio.current_time() - start, checks, result, tuple(settled))
                settled.append(result)
            else:
                await run.do(step)
        return Outcome(trio.current_time() - start, checks, None, tuple(settled))


def replay(scenario: Scenario) -> Outcome:
    """Run `scenario` in a fresh `trio.run` on a `MockClock(autojump_threshold=0)`."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(run_scenario, scenario, clock=clock)


def describe(outcome: Outcome, scenario: Scenario) -> str:
    """A failure report: the violation, then the scenario as a reproducible `repr`."""
    lines: list[str] = []
    if outcome.violation is not None:
        v = outcome.violation
        where = "initial join" if v.step < 0 else f"steps[{v.step}]"
        lines.append(f"properties violated after {where} at t={v.time:.1f} s (simulated):")
        lines += [f"  {p}" for p in v.problems]
    lines.append("reproduce with: swimnode.testing.fuzz.replay(")
    lines.append(f"    Scenario(n={scenario.n}, seed={scenario.seed}, steps=(")
    lines += [f"        {s!r}," for s in scenario.steps]
    lines.append("    )))")
    return "\n".join(lines)


# ----- the state machine ---------------------------------------------------------------


@dataclass
class FuzzStats:
    """Totals over every example a `ClusterMachine` (sub)class replayed."""

    examples: int = 0
    steps: int = 0
    checks: int = 0
    sim_time: float = 0.0
    failures: int = 0
    settled: list[float] = field(default_factory=list)
    """Simulated seconds every passed quiet period took."""
    last_failure: str | None = None
    scenarios: list[Scenario] = field(default_factory=list)


def _names(data: st.DataObject, pool: Iterable[str], label: str) -> str:
    return data.draw(st.sampled_from(sorted(pool)), label=label)


class ClusterMachine(RuleBasedStateMachine):
    """Generates a `Scenario` step by step and replays it in `teardown`.

    The rules mirror what the replayer will hold (which nodes run, whether a
    partition is up, the key-rotation phase) only to keep every step legal; all
    checking happens in the replay. Preconditions encode the limits of the design
    listed in this module's docstring (a live seed, two running nodes, keys
    provisioned on restart).
    """

    stats: ClassVar[FuzzStats] = FuzzStats()
    """Where examples add up; a subclass that sets its own keeps its runs apart."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 5
        self.seed = 0
        self.steps: list[Step] = []
        self.running: set[str] = set()
        self.crashed: set[str] = set()
        self.partitioned = False
        self.rotation: Literal["install", "use", "remove"] = "install"
        """The next phase of key rotation to run."""

    @initialize(n=st.integers(5, 8), seed=st.integers(0, 2**20))
    def cluster(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.running = {f"n{i}" for i in range(n)}

    def _can_crash(self) -> bool:
        return len(self.running) > 2

    @precondition(lambda self: self._can_crash())
    @rule(data=st.data(), then=st.sampled_from(WAITS))
    def crash(self, data: st.DataObject, then: float) -> None:
        # Never the last running seed: nothing could (re)join through it.
        candidates = [
            n
            for n in self.running
            if n not in SEEDS or any(s in self.running and s != n for s in SEEDS)
        ]
        name = _names(data, candidates, "crash")
        self.running.discard(name)
        self.crashed.add(name)
        self.steps.append(Crash(name, then))

    @precondition(lambda self: bool(self.crashed))
    @rule(data=st.data(), then=st.sampled_from(WAITS))
    def restart(self, data: st.DataObject, then: float) -> None:
        name = _names(data, self.crashed, "restart")
        self.crashed.discard(name)
        self.running.add(name)
        self.steps.append(Restart(name, then))

    @rule(data=st.data(), then=st.sampled_from(WAITS))
    def partition(self, data: st.DataObject, then: float) -> None:
        names = [f"n{i}" for i in range(self.n)]
        side = data.draw(
            st.lists(st.sampled_from(names), min_size=1, max_size=self.n - 1, unique=True),
            label="side",
        )
        self.partitioned = True
        self.steps.append(Partition(tuple(sorted(side)), then))

    @precondition(lambda self: self.partitioned)
    @rule(then=st.sampled_from(WAITS))
    def heal(self, then: float) -> None:
        self.partitioned = False
        self.steps.append(Heal(then))

    @rule(loss=st.sampled_from(LOSSES), then=st.sampled_from(WAITS))
    def set_loss(self, loss: float, then: float) -> None:
        self.steps.append(SetLoss(loss, then))

    @rule(
        data=st.data(),
        key=st.sampled_from(STATE_KEYS),
        value=st.integers(0, 999),
        then=st.sampled_from(WAITS),
    )
    def set_state(self, data: st.DataObject, key: str, value: int, then: float) -> None:
        name = _names(data, self.running, "set_state on")
        self.steps.append(SetState(name, key, value, then))

    @rule(data=st.data(), key=st.sampled_from(STATE_KEYS), then=st.sampled_from(WAITS))
    def delete_state(self, data: st.DataObject, key: str, then: float) -> None:
        name = _names(data, self.running, "delete_state on")
        self.steps.append(DeleteState(name, key, then))

    @rule(then=st.sampled_from(WAITS))
    def rotate_keys(self, then: float) -> None:
        phase = self.rotation
        self.steps.append(RotateKeys(phase, then))
        following: dict[str, Literal["install", "use", "remove"]] = {
            "install": "use",
            "use": "remove",
            "remove": "install",
        }
        self.rotation = following[phase]

    @rule()
    def quiet(self) -> None:
        self.partitioned = False
        self.steps.append(Quiet())

    def teardown(self) -> None:
        # Hypothesis runs teardown in a `finally`, also when it aborted the example
        # (a rejected draw, e.g. a mutated prefix whose rule is not enabled here, or
        # running out of data): such an example is discarded, so a failure found in
        # its replay would be silently dropped. Do not spend a replay on it.
        if sys.exc_info()[0] is not None:
            return
        steps = [*self.steps]
        if not steps or not isinstance(steps[-1], Quiet):
            steps.append(Quiet())
        scenario = Scenario(self.n, self.seed, tuple(steps))
        outcome = replay(scenario)
        stats = self.stats
        stats.examples += 1
        stats.steps += len(self.steps)
        stats.checks += outcome.checks
        stats.settled.extend(outcome.settled)
        stats.sim_time += outcome.sim_time
        stats.scenarios.append(scenario)
        if outcome.violation is not None:
            stats.failures += 1
            stats.last_failure = describe(outcome, scenario)
            raise AssertionError(stats.last_failure)
