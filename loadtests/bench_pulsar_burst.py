"""pulsar-lite alone: a burst of distinct keys on a Key_Shared subscription, by receive queue size.

Starts a private pulsar-lite (temporary directory, free port; not the system's
broker, so no system lock is needed), publishes ``--events`` messages, each
with its own key, at once (as the outbox relay does when it publishes a
backlog), and times how long a consumer opened like ``streams/consumer.py``'s
(Key_Shared, several topics) takes to receive all of them, once per receive
queue size. With pulsar-lite 0.2.0 and the client's default of 1000 the
consumer gets a few messages and then nothing for seconds; with 100 it gets
them at once (docs/PERFORMANCE.md, "Events"; docs/DECISIONS.md, "Mail latency
and the consumer stall").

    .venv/bin/python -m loadtests.bench_pulsar_burst [--events 1000] [--queues 1000,100]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pulsar
from pulsar_lite.binary_finder import find_pulsar_lite_binary

from streams.outbox import pulsar_logger

TOPICS = ("persistent://agora/events/auth", "persistent://agora/events/users")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = directory / "pulsar-lite.toml"
    config.write_text("[metrics]\nenabled = false\n")
    log = (directory / "pulsar.log").open("ab")
    proc = subprocess.Popen(
        [
            find_pulsar_lite_binary(),
            "--addr",
            f"127.0.0.1:{port}",
            "--db-path",
            str(directory / "db"),
            "--config",
            str(config),
            "--log-level",
            "warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"pulsar://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def burst(url: str, subscription: str, events: int, queue: int) -> tuple[float, float, int]:
    """(seconds to receive all, longest gap between two receives, messages received)."""
    client = pulsar.Client(url, logger=pulsar_logger())
    try:
        consumer = client.subscribe(
            list(TOPICS),
            subscription,
            consumer_type=pulsar.ConsumerType.KeyShared,
            receiver_queue_size=queue,
        )
        producer = client.create_producer(
            TOPICS[0],
            batching_enabled=True,
            batching_type=pulsar.BatchingType.KeyBased,
            batching_max_publish_delay_ms=5,
            block_if_queue_full=True,
        )
        started = last = time.monotonic()
        for i in range(events):
            producer.send_async(f"{subscription}-{i}".encode(), None, partition_key=f"key-{i}")
        producer.flush()
        seen: set[bytes] = set()
        received, gap = 0, 0.0
        while len(seen) < events and time.monotonic() - started < 60:
            try:
                message = consumer.receive(200)
            except pulsar.Timeout:
                continue
            now = time.monotonic()
            gap, last = max(gap, now - last), now
            received += 1
            seen.add(message.data())
            consumer.acknowledge(message)
        return time.monotonic() - started, gap, received
    finally:
        client.close()


def main(args: argparse.Namespace) -> None:
    print("| receive queue | events | all received after s | longest gap s | received |")
    print("|---:|---:|---:|---:|---:|")
    for queue in [int(q) for q in args.queues.split(",")]:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory() as directory:
                proc, url = start_broker(Path(directory))
                try:
                    took, gap, received = burst(url, f"burst-{queue}-{run}", args.events, queue)
                finally:
                    proc.terminate()
                    proc.wait()
            print(f"| {queue} | {args.events} | {took:.2f} | {gap:.2f} | {received} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--queues", default="1000,100", help="receive queue sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs per size, a fresh broker each")
    main(parser.parse_args())
