"""The fan-out work queue as a pure state machine: which items a slot runs next, retries, results in order.

No I/O, no threads, no clock: the runner (fanout.py) passes the time in, reads the user's iterable when
`take` answers `Read`, and reports what became of each batch. Each item is one `_Item` whose `state`
says where it is; the counters are tallied in the one place a state changes (`_set`), so they always
equal what the items imply. An item's result is taken once: a report about a batch the item has left
(a late duplicate) changes nothing.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union

from gpucell.errors import BrokerUnavailableError, RemoteError

# Batches aim at this much work on the worker: long enough that the per-cell cost (~1-2 ms on the
# worker, more on the client, hidden by pipelining) is noise, short enough that slow items still
# spread over every worker and results stream back often.
TARGET_BATCH_S = 0.2
FIRST_BATCH = 2
GROWTH = 4                       # a batch is at most this many times the slot's previous one
MAX_BATCH = 4096
MAX_BATCH_BYTES = 8 << 20        # pickled items per batch
WINDOW_BYTES = 256 << 20         # items read but not yet yielded, inputs and results together (estimated)
WINDOW_MIN = 64
WINDOW_MAX = 65536
RETRY_BASE_S = 0.1
RETRY_MAX_S = 10.0
# Faults that are not the item's doing cost it nothing from `retries`: a worker that died under a batch
# re-runs the batch's items on a fresh worker (an item lost twice runs alone, so a poison item that kills
# its worker is found; lost more than LOST_RETRIES times, it fails with the reason); a broker that cannot
# be reached (down, restarting) pauses the map with backoff and resubmits, for up to RECONNECT_WINDOW_S.
LOST_RETRIES = 3
SOLO_AFTER_LOST = 2
RECONNECT_WINDOW_S = 60.0
RECONNECT_BASE_S = 0.2
RECONNECT_MAX_S = 2.0


class ItemState(str, Enum):
    QUEUED = "queued"        # read from the source, or back for another try: waits for a slot
    RUNNING = "running"      # in a batch on a slot's worker
    DONE = "done"            # its result arrived
    ERRORED = "errored"      # failed for good; its error stands in its place (return_exceptions)
    FAILED = "failed"        # failed for good; the map stops with its error
    DROPPED = "dropped"      # its batch came back after the map stopped: nobody waits for it


_UNFINISHED = (ItemState.QUEUED, ItemState.RUNNING)
_OUTCOMES = (ItemState.DONE, ItemState.ERRORED)


class _Item:
    __slots__ = ("attempts", "batch", "index", "item", "lost", "state", "value")

    def __init__(self, index: int, item: Any) -> None:
        self.index = index
        self.item = item               # the input, until the item is finished
        self.state = ItemState.QUEUED
        self.batch = 0                 # the batch it runs in (RUNNING only)
        self.attempts = 0              # tries its own failures have cost it (bounded by `retries`)
        self.lost = 0                  # times its worker died under it since it last failed (LOST_RETRIES)
        self.value: Any = None         # its result, or its error (ERRORED)


# ---------------------------------------------------------------- what `take` answers


@dataclass(frozen=True)
class Batch:
    """Items for one cell on a slot's worker; report what became of it with its `id`."""

    id: int
    slot: int
    indices: list[int]
    items: list[Any]


@dataclass(frozen=True)
class Read:
    """Read up to `count` more items from the source, `admit` them, then take again (same `now`)."""

    count: int


@dataclass(frozen=True)
class Wait:
    """Nothing to run yet: take again after `seconds`, or sooner when something changes."""

    seconds: float


Take = Union[Batch, Read, Wait, None]   # None: this slot is done (the map finished or stopped)


@dataclass(frozen=True)
class Outcome:
    index: int
    ok: bool
    value: Any                     # the result, or the RemoteError that stands in its place


@dataclass
class _SlotStats:
    ready: bool = False            # it has a worker with the task bound
    per_item_s: float | None = None
    last_size: int = 0


def retry_delay(tries: int) -> float:
    """Backoff before try number `tries` + 1 (tries >= 1)."""
    return min(RETRY_MAX_S, RETRY_BASE_S * (2.0 ** max(0, tries - 1)))


class FanoutQueue:
    """Items of one map from the source to the consumer, across `slots` workers; every method is an event."""

    def __init__(self, slots: int, *, total: int | None = None, retries: int = 0, ordered: bool = True,
                 return_exceptions: bool = False, label_items: bool = True, depth: int = 2,
                 reconnect_window_s: float = RECONNECT_WINDOW_S) -> None:
        self.total = total                         # the source's length hint (None: unknown)
        self.retries = retries
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.label_items = label_items
        self.depth = depth                         # cells in flight per slot
        self.reconnect_window_s = reconnect_window_s
        self._slots = [_SlotStats() for _ in range(max(1, slots))]
        self._items: dict[int, _Item] = {}         # read and not yet yielded
        self._retry: list[tuple[float, int]] = []  # heap of (ready at, index): QUEUED items back for a try
        self._fresh: deque[int] = deque()          # QUEUED items just read, not yet in a batch
        self._finished_order: deque[int] = deque() # unordered: finished items with an outcome, as they came
        self._counts = dict.fromkeys(ItemState, 0) # items per state; DONE/ERRORED keep counting once yielded
        self._retrying = 0                         # unfinished items that failed or were lost at least once
        self.next_index = 0                        # items read from the source
        self.exhausted = False
        self.yielded = 0
        self._next_yield = 0
        self._bytes_per_item = 0.0
        self._batches = 0
        self.lost_batches = 0
        self.reconnects = 0
        self._down_since: float | None = None      # when the broker became unreachable
        self._down_streak = 0
        self._paused_until = 0.0
        self.fatal: BaseException | None = None
        self.stopping = False

    # ------------------------------------------------------------ counters (derived from the items' states)

    @property
    def pending(self) -> int:
        return self._counts[ItemState.QUEUED]

    @property
    def in_flight(self) -> int:
        return self._counts[ItemState.RUNNING]

    @property
    def done(self) -> int:
        return self._counts[ItemState.DONE]

    @property
    def failed(self) -> int:
        return self._counts[ItemState.ERRORED] + self._counts[ItemState.FAILED]

    @property
    def retrying(self) -> int:
        return self._retrying

    @property
    def finished(self) -> bool:
        """Every item read was yielded, and the source has no more."""
        return self.exhausted and self.yielded == self.next_index

    def _set(self, item: _Item, state: ItemState | None = None, *, attempts: int | None = None,
             lost: int | None = None) -> None:
        """The one place an item changes: the counters follow."""
        self._tally(item, -1)
        if state is not None:
            item.state = state
        if attempts is not None:
            item.attempts = attempts
        if lost is not None:
            item.lost = lost
        self._tally(item, 1)

    def _tally(self, item: _Item, sign: int) -> None:
        self._counts[item.state] += sign
        if item.state in _UNFINISHED and (item.attempts or item.lost):
            self._retrying += sign

    # ------------------------------------------------------------ slots ask for work

    def slot_ready(self, slot: int) -> None:
        """The slot has a worker with the task bound: it shares the tail from now on."""
        self._slots[slot].ready = True

    def take(self, slot: int, now: float) -> Take:
        """The next batch for `slot`: ready retries first (a suspect alone), then fresh items."""
        if self.stopping:
            return None
        if now < self._paused_until:     # the broker is unreachable: wait for the backoff to pass
            return Wait(self._paused_until - now)
        size = self._batch_size(slot)
        retries, size = self._ready_retries(size, now)
        short = size - len(retries) - len(self._fresh)
        room = self._window() - (self.next_index - self.yielded)
        if short > 0 and room > 0 and not self.exhausted:
            return Read(min(short, room))
        for _ in retries:
            heapq.heappop(self._retry)
        fresh = max(0, min(len(self._fresh), size - len(retries)))
        indices = retries + [self._fresh.popleft() for _ in range(fresh)]
        if indices:
            self._batches += 1
            batch = Batch(self._batches, slot, indices, [self._items[i].item for i in indices])
            for index in indices:
                item = self._items[index]
                item.batch = batch.id
                self._set(item, ItemState.RUNNING)
            stats = self._slots[slot]
            stats.last_size = max(stats.last_size, len(indices)) if stats.per_item_s is None else len(indices)
            return batch
        if self.exhausted and not self._retry and not self._fresh and not self.in_flight:
            return None
        wait = self._retry[0][0] - now if self._retry else 1.0
        return Wait(max(0.001, min(wait, 1.0)))

    def admit(self, items: list[Any], exhausted: bool) -> None:
        """What the source gave after a `Read` (exhausted: it has no more)."""
        for value in items:
            item = _Item(self.next_index, value)
            self._items[item.index] = item
            self._tally(item, 1)
            self._fresh.append(item.index)
            self.next_index += 1
        if exhausted:
            self.exhausted = True

    def source_failed(self, exc: BaseException) -> None:
        """The user's iterable raised: the map stops with its error."""
        self.exhausted = True
        self.fail(exc)

    def _batch_size(self, slot: int) -> int:
        stats = self._slots[slot]
        if stats.per_item_s is None:
            size = FIRST_BATCH
        else:
            by_time = TARGET_BATCH_S / max(stats.per_item_s, 1e-7)
            size = int(min(by_time, stats.last_size * GROWTH, MAX_BATCH))
        if self._bytes_per_item > 0:
            size = min(size, int(MAX_BATCH_BYTES / self._bytes_per_item))
        if self.total is not None:
            # The tail: never take more than a share of what is left, so the last items spread out.
            ready = sum(1 for s in self._slots if s.ready) or 1
            handed = self.next_index - len(self._fresh)       # source items that went into a batch
            left = max(0, self.total - handed) + len(self._retry)
            size = min(size, math.ceil(left / (2 * ready)))
        return max(1, size)

    def _window(self) -> int:
        by_bytes = WINDOW_BYTES / self._bytes_per_item if self._bytes_per_item > 0 else WINDOW_MAX
        return int(max(WINDOW_MIN, 2 * self.depth * len(self._slots), min(WINDOW_MAX, by_bytes)))

    def _ready_retries(self, size: int, now: float) -> tuple[list[int], int]:
        """The retries due by `now` that the next batch takes (heap order), and the batch's size."""
        picked: list[int] = []
        for ready_at, index in heapq.nsmallest(size, self._retry) if self._retry else ():
            if ready_at > now:
                break
            if self._items[index].lost >= SOLO_AFTER_LOST:
                # A suspect (its worker died under it more than once): alone, so it hurts no other item.
                if not picked:
                    picked.append(index)
                return picked, len(picked)
            picked.append(index)
        return picked, size

    # ------------------------------------------------------------ what became of a batch

    def _live(self, batch: Batch) -> list[tuple[int, _Item]]:
        """(position, item) of the batch's items still running in it; the rest was reported already."""
        live = []
        for pos, index in enumerate(batch.indices):
            item = self._items.get(index)
            if item is not None and item.state is ItemState.RUNNING and item.batch == batch.id:
                live.append((pos, item))
        return live

    def deliver(self, batch: Batch, values: list[Any], failures: dict[int, RemoteError], compute_s: float,
                nbytes: int, now: float) -> None:
        """The batch's cell came back: values[pos] for the items it ran (failures: pos -> the item's
        error); items past len(values) never started (the batch ended at a failure) and go back first."""
        live = self._live(batch)
        if not live:
            return
        stats = self._slots[batch.slot]
        per_item = compute_s / max(1, len(values))
        stats.per_item_s = per_item if stats.per_item_s is None else 0.5 * stats.per_item_s + 0.5 * per_item
        sample = nbytes / max(1, len(batch.items))
        self._bytes_per_item = sample if self._bytes_per_item == 0 else 0.8 * self._bytes_per_item + 0.2 * sample
        for pos, item in live:
            if pos >= len(values):
                self._requeue(item, 0.0)
            elif pos in failures:
                self._item_failed(item, failures[pos], now)
            else:
                self._finish(item, ItemState.DONE, values[pos])

    def batch_failed(self, batch: Batch, exc: BaseException, now: float) -> None:
        """The batch's cell failed as a whole (a timeout, a bad request, cancelled): each item failed."""
        live = self._live(batch)
        if self.stopping:
            self._drop(live)
            return
        name = type(exc).__name__
        for _, item in live:
            self._item_failed(item, RemoteError(name, str(exc)), now)

    def batch_lost(self, batch: Batch, exc: BaseException, now: float) -> None:
        """The batch's worker died: its items go back at no cost to their `retries` (see LOST_RETRIES)."""
        live = self._live(batch)
        if self.stopping:
            self._drop(live)
            return
        if not live:
            return
        self.lost_batches += 1
        for _, item in live:
            count = item.lost + 1
            if count > LOST_RETRIES:
                self._set(item, lost=0)
                self._item_failed(item, RemoteError(
                    "WorkerLostError", f"{exc} (the item's worker was lost {count} times)"), now)
                continue
            self._set(item, lost=count)
            self._requeue(item, now + retry_delay(count))

    def batch_unreachable(self, batch: Batch, exc: BaseException, now: float) -> None:
        """The broker could not be reached for the batch: every slot pauses; its items wait, ready first."""
        live = self._live(batch)
        if self.stopping:
            self._drop(live)
            return
        if not live:
            return
        if self.broker_unreachable(exc, now) is None:
            self._drop(live)
            return
        for _, item in live:
            self._requeue(item, now)

    # ------------------------------------------------------------ the broker's reachability

    def broker_unreachable(self, exc: BaseException, now: float) -> float | None:
        """The pause before the next try; None (and the map stops) when the broker stayed unreachable
        past the reconnect window. An unreachable broker pauses every slot, not just the one that saw it."""
        if self._down_since is None:
            self._down_since = now
        elif now - self._down_since > self.reconnect_window_s:
            self.fail(BrokerUnavailableError(
                f"the map stopped: the broker stayed unreachable for {self.reconnect_window_s:g}s ({exc})"))
            return None
        self._down_streak += 1
        delay = min(RECONNECT_MAX_S, RECONNECT_BASE_S * (2 ** min(self._down_streak - 1, 8)))
        self._paused_until = max(self._paused_until, now + delay)
        self.reconnects += 1
        return self._paused_until - now

    def broker_reachable(self) -> None:
        """A cell came back: the broker is there (again); the next outage starts its own window."""
        self._down_since = None
        self._down_streak = 0

    # ------------------------------------------------------------ items

    def _requeue(self, item: _Item, ready_at: float) -> None:
        item.batch = 0
        self._set(item, ItemState.QUEUED)
        heapq.heappush(self._retry, (ready_at, item.index))

    def _item_failed(self, item: _Item, error: RemoteError, now: float) -> None:
        if item.attempts < self.retries and not self.stopping:
            self._set(item, attempts=item.attempts + 1)
            self._requeue(item, now + retry_delay(item.attempts))
            return
        error.index = item.index  # type: ignore[attr-defined]
        if self.label_items:
            error.args = (f"item {item.index} failed: {error}",)
        if self.return_exceptions:
            self._finish(item, ItemState.ERRORED, error)
            return
        self._finish(item, ItemState.FAILED, None)
        self.fail(error)

    def _finish(self, item: _Item, state: ItemState, value: Any) -> None:
        item.batch = 0
        item.item = None
        item.value = value
        self._set(item, state)
        if state in _OUTCOMES and not self.ordered:
            self._finished_order.append(item.index)

    def _drop(self, live: list[tuple[int, _Item]]) -> None:
        for _, item in live:
            item.batch = 0
            item.item = None
            self._set(item, ItemState.DROPPED)

    # ------------------------------------------------------------ the consumer

    def next_result(self) -> Outcome | None:
        """The next outcome to yield (the next index when ordered, else the next to finish), or None yet."""
        if self.ordered:
            item = self._items.get(self._next_yield)
            if item is None or item.state not in _OUTCOMES:
                return None
            self._next_yield += 1
        elif self._finished_order:
            item = self._items[self._finished_order.popleft()]
        else:
            return None
        del self._items[item.index]
        self.yielded += 1
        return Outcome(item.index, item.state is ItemState.DONE, item.value)

    def fail(self, error: BaseException) -> None:
        """The map stops with `error`; what completed but was not yet yielded stays reachable on it."""
        if self.fatal is None:
            so_far = {i: item.value for i, item in self._items.items() if item.state is ItemState.DONE}
            error.results_so_far = dict(sorted(so_far.items()))  # type: ignore[attr-defined]
            self.fatal = error
        self.stopping = True

    def stop(self) -> None:
        """The map ends (finished, abandoned or cancelled): no slot takes anything more."""
        self.stopping = True


__all__ = ["Batch", "FanoutQueue", "ItemState", "Outcome", "Read", "Take", "Wait", "retry_delay"]
