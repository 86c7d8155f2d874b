"""Subscriptions between the reader and the widgets, and the data-source interface the App takes.

A widget subscribes to a topic ("runs", ("detail", path), "compare", "status"); the reader
publishes a message factory per topic and every subscriber gets its own message (Messages are
delivered once), posted thread-safely. The last message of a topic is kept and replayed to a new
subscriber, so a screen opened later starts from what is known instead of asking the App.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from textual.message import Message
from textual.message_pump import MessagePump

RUNS = "runs"
STATUS = "status"
COMPARE = "compare"
PROBLEMS = "problems"  # runs that cannot be read: the App tells the user once


def detail_topic(path: str) -> tuple[str, str]:
    return ("detail", path)


class Hub:
    """Topic -> subscribers; thread-safe (the reader thread publishes, the UI subscribes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[Hashable, list[MessagePump]] = {}
        self._last: dict[Hashable, Callable[[], Message]] = {}

    def subscribe(self, target: MessagePump, topic: Hashable) -> None:
        with self._lock:
            subs = self._subs.setdefault(topic, [])
            if target not in subs:
                subs.append(target)
            last = self._last.get(topic)
        if last is not None:
            target.post_message(last())

    def unsubscribe(self, target: MessagePump, topic: Hashable | None = None) -> None:
        """Drop `target` from `topic` (from every topic when None)."""
        with self._lock:
            for t, subs in list(self._subs.items()):
                if (topic is None or t == topic) and target in subs:
                    subs.remove(target)
                    if not subs:
                        del self._subs[t]

    def subscribers(self, topic: Hashable) -> int:
        with self._lock:
            return len(self._subs.get(topic, ()))

    def publish(self, topic: Hashable, make: Callable[[], Message], keep: bool = True) -> None:
        with self._lock:
            if keep:
                self._last[topic] = make
            subs = list(self._subs.get(topic, ()))
        for target in subs:
            target.post_message(make())

    def latest(self, topic: Hashable) -> Message | None:
        """A fresh copy of the last message of `topic` (None if nothing was published)."""
        with self._lock:
            make = self._last.get(topic)
        return None if make is None else make()

    def forget(self, topic: Hashable) -> None:
        with self._lock:
            self._last.pop(topic, None)


class DataSource(Protocol):
    """What `WatchApp` needs from its reader; the real one is `poller.Poller`, tests pass fakes.

    `watch_*` subscribe a widget (and tell the reader what to read); `unwatch` undoes them all.
    """

    hub: Hub

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...

    def wake(self) -> None: ...

    def watch_runs(self, target: MessagePump) -> None: ...

    def watch_detail(self, target: MessagePump, path: str, cap: int) -> None: ...

    def watch_compare(self, target: MessagePump, paths: Sequence[str], columns: Sequence[str],
                      cap: int) -> None: ...

    def show_compare(self, paths: Sequence[str] | None, columns: Sequence[str] = (),
                     cap: int = 0) -> None:
        """What the compare feed reads (None: nothing); `watch_compare` also subscribes."""

    def unwatch(self, target: MessagePump) -> None: ...

    def set_visible(self, paths: Sequence[str] | None) -> None: ...
