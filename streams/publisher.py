"""Fire-and-forget publishing for events that may be lost (product views).

``offer`` puts an event in a bounded in-memory queue and returns at once: no
I/O, no wait, never an exception. One daemon thread drains the queue into
Pulsar producers (``send_async``, batched by the client). When the queue is
full, or Pulsar refuses or times out a send, the event is dropped and
``on_drop(reason)`` is called, so the caller can count drops; the request
that offered it never notices. These events skip the outbox on purpose: a
PostgreSQL write per product page read would put the database on the hottest
read path for data whose loss only blurs a statistic.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import pulsar

from streams.events import Envelope, encode
from streams.outbox import pulsar_logger

log = logging.getLogger(__name__)

_STOP = object()


def _ignore(_: str) -> None:
    return None


class BackgroundPublisher:
    """A bounded queue of events and the thread that sends them."""

    def __init__(
        self,
        pulsar_url: str,
        capacity: int = 10_000,
        on_drop: Callable[[str], None] = _ignore,
        on_sent: Callable[[], None] | None = None,
        send_timeout_ms: int = 5_000,
        client_factory: Callable[..., pulsar.Client] = pulsar.Client,
    ) -> None:
        self.pulsar_url = pulsar_url
        self.capacity = capacity
        self.on_drop = on_drop
        self.on_sent = on_sent
        self.send_timeout_ms = send_timeout_ms
        self._client_factory = client_factory
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def offer(self, topic: str, envelope: Envelope) -> bool:
        """Queue ``envelope`` for ``topic``; False (and ``on_drop("full")``) when full."""
        self._start()
        try:
            self._queue.put_nowait((topic, envelope))
        except queue.Full:
            self.on_drop("full")
            return False
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (up to ``timeout_s``), then stop the thread."""
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        thread.join(timeout_s)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="publisher", daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        client = self._client_factory(self.pulsar_url, logger=pulsar_logger())
        producers: dict[str, pulsar.Producer] = {}
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                assert isinstance(item, tuple)
                topic: str = item[0]
                envelope: Envelope = item[1]
                try:
                    producer = producers.get(topic)
                    if producer is None:
                        producer = client.create_producer(
                            topic,
                            block_if_queue_full=False,
                            batching_enabled=True,
                            batching_max_publish_delay_ms=10,
                            send_timeout_millis=self.send_timeout_ms,
                        )
                        producers[topic] = producer
                    producer.send_async(
                        encode(envelope), self._sent, partition_key=envelope.key or None
                    )
                except Exception as exc:  # the thread must outlive any one failure
                    log.warning("publisher: dropped an event: %s", type(exc).__name__)
                    self.on_drop("send_failed")
            for producer in producers.values():
                producer.flush()
        finally:
            for producer in producers.values():
                producer.close()
            client.close()

    def _sent(self, result: pulsar.Result, _message_id: object) -> None:
        if result == pulsar.Result.Ok:
            if self.on_sent is not None:
                self.on_sent()
        else:
            self.on_drop("send_failed")
