"""Membership: the member table and the rules that change it (SWIM §4.2), suspicion
timers (Lifeguard's dynamic timeout), refutation, and the news and events each change
produces."""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import counters
from . import codec
from .broadcasts import retransmit_limit
from .events import (
    MemberAlive,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRejoined,
    MemberSuspected,
    MemberUpdated,
)
from .member import Member, MemberState, supersedes
from .messages import (
    Alive,
    Dead,
    Left,
    MemberRecord,
    MembershipNews,
    Suspect,
    Sync,
    UserEventMessage,
)
from .suspicion import Suspicion, confirmations_needed, suspicion_bounds
from .table import MemberTable, NameSet

if TYPE_CHECKING:
    from .core import SwimCore

ALIVE, SUSPECT, DEAD, LEFT = MemberState
_STATE_OF: dict[type, MemberState] = {Alive: ALIVE, Suspect: SUSPECT, Dead: DEAD, Left: LEFT}


class Membership:
    """One node's member records and the rules that merge news into them."""

    def __init__(self, core: SwimCore, incarnation: int, now: float) -> None:
        self._core = core
        self.name = core.name
        self.incarnation = incarnation
        self.leaving = False
        self.table = MemberTable()
        self.table[self.name] = Member(self.name, core.address, incarnation, ALIVE, now)
        self.peers = NameSet()  # live members other than us
        self.departed: dict[str, float] = {}  # dead/left member -> when
        self._suspicions: dict[str, Suspicion] = {}
        self._deadlines: list[tuple[float, str]] = []  # suspicion deadlines, a heap
        # The encoding of the latest news applied about each member (see
        # SwimCore.handle_packet), and the set of them for a quick membership test.
        self._news_by_member: dict[str, bytes] = {}
        # (A dict rather than a set: per entry, a large set costs nearly twice as much.)
        self.known_news: dict[bytes, None] = {}
        self.queue_news(Alive(self.name, core.address, incarnation))

    # ----- views -------------------------------------------------------------------

    @property
    def n_live(self) -> int:
        """Live members (alive or suspect), counting us."""
        return len(self.peers) + 1

    @property
    def active_suspicions(self) -> int:
        return len(self._suspicions)

    def fingerprint(self) -> int:
        """A 64-bit fingerprint of our membership view: the name and incarnation of
        every alive or suspect member; never 0. Equal views give equal fingerprints."""
        return self.table.fingerprint or 1

    def sync_message(
        self, *, reply: bool, join: bool, events: tuple[UserEventMessage, ...] = ()
    ) -> bytes:
        """Our whole membership view, our own record first, and `events`."""
        records = [
            MemberRecord(m.name, m.address, m.incarnation, m.state)
            for m in [self.table[self.name], *(m for n, m in self.table.items() if n != self.name)]
        ]
        return codec.encode_message(Sync(reply, join, tuple(records), events))

    # ----- suspicion timers ------------------------------------------------------------

    def next_deadline(self) -> float:
        """When the earliest suspicion may expire."""
        return self._deadlines[0][0] if self._deadlines else math.inf

    def run_timers(self, now: float) -> None:
        """Expired suspicions become deaths."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, name = heapq.heappop(self._deadlines)
            susp = self._suspicions.get(name)
            if susp is None or susp.deadline > now:
                continue  # stale entry: refuted, or superseded by a shorter deadline
            self._core.stats[counters.DEATHS_DECLARED] += 1
            self.apply(Dead(name, susp.incarnation, self.name), now)

    def _start_suspicion(self, member: Member, news: MembershipNews, now: float) -> None:
        config = self._core.config
        accuser = news.accuser if isinstance(news, Suspect) else self.name
        lo, hi = suspicion_bounds(
            config.suspicion_mult,
            config.suspicion_max_timeout_mult,
            self.n_live,
            config.probe_interval,
        )
        k = (
            confirmations_needed(config.suspicion_mult, self.n_live)
            if config.lifeguard_dynamic_suspicion
            else 0
        )
        susp = Suspicion(
            started_at=now, incarnation=member.incarnation, accuser=accuser, lo=lo, hi=hi, k=k
        )
        self._suspicions[member.name] = susp
        heapq.heappush(self._deadlines, (susp.deadline, member.name))

    def _confirm(self, name: str, news: Suspect) -> None:
        susp = self._suspicions.get(name)
        if susp is not None and susp.confirm(news.accuser):
            self._core.stats[counters.SUSPICION_CONFIRMATIONS] += 1
            heapq.heappush(self._deadlines, (susp.deadline, name))
            # Pass the confirmation on so other members can count it too.
            self.queue_news(news)

    # ----- the rules ---------------------------------------------------------------

    def apply(self, news: MembershipNews, now: float, *, spent: int = 0) -> None:
        """Merge one piece of news. If it changes our view it is passed on, with
        `spent` of its transmissions counted as already made (see merge_sync)."""
        name = news.name
        state = _STATE_OF[type(news)]
        if name == self.name:
            self._news_about_self(news, state)
            return
        cur = self.table.get(name)
        if cur is None:
            if isinstance(news, Alive):
                self._add_member(news, now, spent)
            # Suspicion or death of an unknown member carries no address: ignore.
            return
        if not supersedes(state, news.incarnation, cur):
            if (
                isinstance(news, Suspect)
                and cur.state is SUSPECT
                and news.incarnation == cur.incarnation
            ):
                self._confirm(name, news)
            return
        address = news.address if isinstance(news, Alive) else cur.address
        new = Member(name, address, news.incarnation, state, now, cur.app_state)
        self.table[name] = new
        self.queue_news(news, spent)
        self._track_liveness(cur, new, now)
        if state is SUSPECT:
            self._start_suspicion(new, news, now)
        else:
            self._suspicions.pop(name, None)
        event = _event_for(cur, new)
        if not (isinstance(event, MemberUpdated) and cur.address == new.address):
            # A bare incarnation bump (a refutation we never saw the cause of) is
            # protocol noise, not news for the user.
            self._core.emit(event)

    def _track_liveness(self, cur: Member, new: Member, now: float) -> None:
        name = new.name
        if new.is_live:
            self.peers.add(name)
            self.departed.pop(name, None)
            if not cur.is_live:
                self._core.prober.add_target(name)
        else:
            self.peers.discard(name)
            self.departed[name] = now

    def _add_member(self, news: Alive, now: float, spent: int) -> None:
        member = Member(news.name, news.address, news.incarnation, ALIVE, now)
        self.table[news.name] = member
        self.peers.add(news.name)
        self._core.prober.add_target(news.name)
        self.queue_news(news, spent)
        self._core.emit(MemberJoined(member))

    def _news_about_self(self, news: MembershipNews, state: MemberState) -> None:
        if self.leaving:
            if state is not LEFT:
                self.queue_news(Left(self.name, self.incarnation))
            return
        if isinstance(news, Alive):
            if news.incarnation <= self.incarnation:
                return
        elif news.incarnation < self.incarnation:
            return
        # Refute: only we raise our incarnation. A suspicion, a death, an old leave,
        # or an alive record from our previous life (a restart) all lose to it.
        stats = self._core.stats
        if state is SUSPECT:
            stats[counters.SUSPICIONS_REFUTED] += 1
            self._core.prober.awareness.apply(1)
        elif state is DEAD:
            stats[counters.DEATHS_REFUTED] += 1
        else:
            stats[counters.REFUTATIONS] += 1
        self.incarnation = news.incarnation + 1
        me = self.table[self.name]
        self.table[self.name] = replace(me, incarnation=self.incarnation)
        self.queue_news(Alive(self.name, me.address, self.incarnation))

    def leave(self, now: float) -> bytes:
        """Mark us left and queue the news; returns its encoding."""
        self.leaving = True
        me = self.table[self.name]
        self.table[self.name] = replace(me, state=LEFT, state_changed_at=now)
        return self.queue_news(Left(self.name, self.incarnation))

    def merge_sync(
        self, records: tuple[MemberRecord, ...], now: float, *, old_news: bool = False
    ) -> None:
        """Merge a peer's full membership view."""
        sender = records[0].name if records else ""
        spent = 0
        if old_news:
            # What a seed tells a newcomer, the rest of the cluster already knows: the
            # newcomer passes it on only twice (catching a straggler or two) instead
            # of the full count, or every join would cost O(N) broadcasts everywhere.
            limit = retransmit_limit(self._core.config.retransmit_mult, self.n_live + len(records))
            spent = max(0, limit - 2)
        for rec in records:
            news: MembershipNews
            if rec.state is ALIVE:
                news = Alive(rec.name, rec.address, rec.incarnation)
            elif rec.state is LEFT:
                news = Left(rec.name, rec.incarnation)
            else:
                # As memberlist does: a remote death is only a suspicion here, so a
                # stale full state cannot kill a member outright.
                news = Suspect(rec.name, rec.incarnation, sender)
            self.apply(news, now, spent=spent)

    def preload(self, members: list[Member]) -> None:
        """Hold `members` as a finished join leaves them (see `SwimCore.preload`)."""
        if len(self.table) > 1 or self.departed:
            raise ValueError("only a node that knows no other member can be preloaded")
        for m in members:
            if m.name == self.name or m.state is not ALIVE:
                raise ValueError(f"cannot preload {m.name!r}: only other, alive members")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError("a member is given twice")
        self.table.add_all(members)
        self.peers.add_all(names)
        # Unlike after a join, the news that announced each member is not remembered
        # (`known_news`): that only lets copies still going round be skipped without
        # decoding, and in a converged cluster none is. A late copy is decoded and
        # changes nothing, as news no newer than what we hold never does. At ten
        # thousand members this is half of what the view costs per node.
        self._core.prober.preload(names)
        # Our own first announcement went out long ago in a converged cluster.
        self._core.broadcasts.discard(self.name)

    def set_app_state(self, name: str, app_state: Mapping[str, Any], keys: list[str]) -> None:
        """A member's application state changed (`keys`): update its record."""
        member = self.table.get(name)
        if member is None:
            return
        member = replace(member, app_state=app_state)
        self.table[name] = member
        self._core.emit(MemberUpdated(member, frozenset(keys)))

    def reap(self, now: float) -> list[str]:
        """Forget dead and left members after `dead_reclaim_time`; returns their names."""
        horizon = now - self._core.config.dead_reclaim_time
        gone = [n for n, t in self.departed.items() if t <= horizon]
        for name in gone:
            del self.departed[name]
            del self.table[name]
            self._core.broadcasts.discard(name)
            self._remember_news(name, None)
        return gone

    # ----- news --------------------------------------------------------------------

    def queue_news(self, news: MembershipNews, spent: int = 0) -> bytes:
        """Queue `news` for broadcast; returns its encoding."""
        data = codec.encode_news(news)
        self._core.broadcasts.queue(news.name, data, spent)
        self._remember_news(news.name, data)
        return data

    def _remember_news(self, name: str, data: bytes | None) -> None:
        old = self._news_by_member.pop(name, None)
        if old is not None:
            self.known_news.pop(old, None)
        if data is not None:
            self._news_by_member[name] = data
            self.known_news[data] = None


def _event_for(old: Member, new: Member) -> MemberEvent:
    if new.state is ALIVE:
        if old.state is SUSPECT:
            return MemberAlive(new)
        if old.state in (DEAD, LEFT):
            return MemberRejoined(new)
        return MemberUpdated(new)
    if new.state is SUSPECT:
        return MemberSuspected(new)
    if new.state is DEAD:
        return MemberFailed(new)
    return MemberLeft(new)
