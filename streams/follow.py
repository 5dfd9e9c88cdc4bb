"""Following topics from "now" on, per process: how a replica keeps its caches current.

A ``Follower`` opens one non-durable Pulsar reader per topic, starting at the
latest message (no subscription is left behind when the process goes), and
hands every decoded ``Envelope`` to ``on_event`` on the caller's event loop.
It reads in a daemon thread per topic, since the Pulsar client blocks.

Nothing is replayed: a reader sees what is published after it connected. When
a reader fails and reconnects, or a message cannot be decoded, events may
have been missed, so ``on_gap`` is called (on the loop): the caller reloads
what it holds. Whoever needs events older than that reads PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

import msgspec
import pulsar

from streams.events import Envelope, decode
from streams.outbox import pulsar_logger

log = logging.getLogger(__name__)

READ_TIMEOUT_MS = 500
MAX_BACKOFF_S = 5.0


class Follower:
    """Non-durable readers of ``topics``; ``on_event``/``on_gap`` run on ``loop``."""

    def __init__(
        self,
        pulsar_url: str,
        topics: Sequence[str],
        on_event: Callable[[Envelope], None],
        on_gap: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.pulsar_url = pulsar_url
        self.topics = tuple(topics)
        self.on_event = on_event
        self.on_gap = on_gap
        self.loop = loop
        self.received = 0
        self.gaps = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._client: pulsar.Client | None = None
        self._connected: dict[str, threading.Event] = {t: threading.Event() for t in self.topics}

    def start(self) -> None:
        """Start one reader thread per topic (returns at once)."""
        if self._threads:
            return
        self._client = pulsar.Client(self.pulsar_url, logger=pulsar_logger())
        for topic in self.topics:
            thread = threading.Thread(
                target=self._follow, args=(topic,), name=f"follow:{topic}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wait_connected(self, timeout_s: float) -> bool:
        """Whether every reader is positioned (so later events will be seen)."""
        return all(e.wait(timeout_s) for e in self._connected.values())

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=READ_TIMEOUT_MS / 1000 + 1)
        if self._client is not None:
            self._client.close()

    def _emit(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the process is going
            self._stop.set()

    def _follow(self, topic: str) -> None:
        backoff = 0.1
        first = True
        while not self._stop.is_set():
            try:
                assert self._client is not None
                reader = self._client.create_reader(topic, pulsar.MessageId.latest)
            except Exception as exc:
                log.warning("follow %s: %s", topic, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self._connected[topic].set()
            if not first:
                self.gaps += 1
                self._emit(self.on_gap)
            first = False
            backoff = 0.1
            try:
                self._read(reader)
            except Exception as exc:
                log.warning("follow %s: %s; reconnecting", topic, exc)
            finally:
                try:
                    reader.close()
                except Exception:  # noqa: S110 - closing a broken reader may fail too
                    pass

    def _read(self, reader: pulsar.Reader) -> None:
        while not self._stop.is_set():
            try:
                message = reader.read_next(timeout_millis=READ_TIMEOUT_MS)
            except pulsar.Timeout:
                continue
            try:
                envelope = decode(message.data())
            except msgspec.DecodeError:
                self.gaps += 1
                self._emit(self.on_gap)
                continue
            self.received += 1
            self._emit(self.on_event, envelope)
