"""The consumer base retries a refused subscribe in place; the audit consumer ships with
its anchor factory and builds the anchor in the actor."""

import asyncio
import pickle

import asyncpg
import pulsar

from ledger.audit_anchor import LedgerAuditAnchor
from streams.consumer import IdempotentConsumer
from streams.consumers.audit import AuditConsumer
from streams.events import Envelope


class Nothing(IdempotentConsumer):
    name = "test-nothing"
    topics = ["persistent://agora/events/test"]
    subscribe_backoff_s = 0.001

    async def apply(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        raise AssertionError("not called")


def test_a_refused_subscribe_is_retried_until_accepted() -> None:
    calls: list[int] = []
    accepted = object()

    def subscribe() -> object:
        calls.append(1)
        if len(calls) < 3:
            raise pulsar.ConsumerBusy("Consumer 0 already exists in key-shared dispatcher")
        return accepted

    got = asyncio.run(Nothing()._subscribe(subscribe, asyncio.Event()))  # type: ignore[arg-type]
    assert got is accepted and len(calls) == 3


def test_a_stopped_consumer_gives_up_subscribing() -> None:
    def subscribe() -> object:
        raise pulsar.ConsumerBusy("refused")

    async def run() -> object:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await Nothing()._subscribe(subscribe, stop)  # type: ignore[arg-type]

    assert asyncio.run(run()) is None


def test_the_audit_consumer_pickles_with_its_anchor_factory() -> None:
    consumer = AuditConsumer("agora", "events", anchor=LedgerAuditAnchor, anchor_every_s=1)
    consumer._anchor = object()  # type: ignore[assignment]  # a built anchor is not shipped
    copy = pickle.loads(pickle.dumps(consumer))
    assert copy._anchor_factory is LedgerAuditAnchor
    assert copy._anchor is None and copy._anchor_every_s == 1
    assert copy.topics == consumer.topics
