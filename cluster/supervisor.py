"""Supervisor of the embedded services ``agora up`` started: restart what dies, on its address.

``agora up`` starts one supervisor (``python -m cluster.supervisor``, pid recorded
in pids.json as ``supervisor``); ``agora down`` stops it first. Every
``interval_s`` it reads pids.json and, for each supervised service
(``cluster.infra.supervised``: the registry and its contract are documented
there) whose recorded pids are gone, calls the service's start function again.
That function starts a new process on the same address (same data directory,
unix socket or port), so the URLs in services.json that every replica, shard
and relay holds stay valid and their clients reconnect by themselves.

A start that fails is retried with exponential backoff (``backoff_s`` doubling up
to ``max_backoff_s``); the count resets once the service has stayed up for
``max_backoff_s``. Services stopped on purpose (``infra.hold``) are left alone.
What happened is in var/log/supervisor.log and var/run/supervisor.json
(restarts per service, last error, last recovery time), which ``agora status`` shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster import infra
from cluster.settings import Settings, get_settings

log = logging.getLogger("agora.supervisor")


@dataclass
class ServiceState:
    restarts: int = 0
    failures: int = 0
    next_attempt: float = 0.0
    up_since: float = 0.0
    last_error: str | None = None
    last_recovery_s: float | None = None
    down_since: float | None = None


class Supervisor:
    """One pass (``check``) restarts what is down and due; ``run`` loops until stopped."""

    def __init__(
        self,
        settings: Settings,
        *,
        interval_s: float = 0.5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.state: dict[str, ServiceState] = {}
        self._stopping = False

    def stop(self, *_: object) -> None:
        self._stopping = True

    def check(self, now: float | None = None) -> list[str]:
        """Restart every supervised service that is down and due; returns those restarted."""
        now = time.monotonic() if now is None else now
        pids = infra.read_pids(self.settings)
        held = infra.read_held(self.settings)
        restarted = []
        for name, start in infra.supervised(self.settings).items():
            if name not in pids or name in held:
                continue
            state = self.state.setdefault(name, ServiceState(up_since=now))
            if pids[name] and all(infra.alive(pid) for pid in pids[name]):
                if state.failures and now - state.up_since >= self.max_backoff_s:
                    state.failures = 0
                continue
            if state.down_since is None:
                state.down_since = now
                log.warning("%s is down (pids %s)", name, pids[name])
            if now < state.next_attempt:
                continue
            try:
                url = start(self.settings)
                now_pids = infra.read_pids(self.settings).get(name, [])
                if not (now_pids and all(infra.alive(pid) for pid in now_pids)):
                    raise RuntimeError(f"started, but its pids {now_pids} are not alive")
            except Exception as exc:
                state.failures += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (state.failures - 1))
                state.next_attempt = now + delay
                state.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.error("restart of %s failed (%s); next try in %.1fs", name, exc, delay)
                continue
            done = time.monotonic()
            state.restarts += 1
            state.failures = 0
            state.last_error = None
            state.last_recovery_s = round(done - state.down_since, 3)
            state.down_since = None
            state.up_since = done
            restarted.append(name)
            log.warning("%s restarted at %s in %.2fs", name, url, state.last_recovery_s)
            self._check_url(name, url)
        self._write_status()
        return restarted

    def _check_url(self, name: str, url: str) -> None:
        """A restarted service must keep its address: clients hold the old URL."""
        path = self.settings.run_dir / "services.json"
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if url not in recorded.values():
            log.error("%s came back at %s, not at an address in services.json", name, url)

    def _write_status(self) -> None:
        status = {name: asdict(state) for name, state in self.state.items()}
        path = status_file(self.settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(path)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("supervising %s", ", ".join(sorted(infra.supervised(self.settings))))
        while not self._stopping:
            try:
                self.check()
            except Exception:
                log.exception("supervisor pass failed")
            _reap_children()
            time.sleep(self.interval_s)
        log.info("supervisor stopped")


def _reap_children() -> None:
    """Collect exited children (services this process restarted) so none stays a zombie."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def status_file(settings: Settings) -> Path:
    return settings.run_dir / "supervisor.json"


def read_status(settings: Settings) -> dict[str, dict[str, object]]:
    try:
        return dict(json.loads(status_file(settings).read_text()))
    except (OSError, ValueError):
        return {}


def start_supervisor(settings: Settings) -> int:
    """Start the supervisor once (reused while alive); returns its pid."""
    known = infra.read_pids(settings).get(infra.SUPERVISOR, [])
    if known and all(infra.alive(pid) for pid in known):
        return known[0]
    with open(settings.log_dir / "supervisor.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.supervisor"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
    infra._record(settings, infra.SUPERVISOR, [proc.pid])
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Restart Agora's embedded services that die.")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between checks")
    parser.add_argument("--max-backoff", type=float, default=15.0, help="cap of the retry delay")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    infra.ensure_dirs(settings)
    Supervisor(settings, interval_s=args.interval, max_backoff_s=args.max_backoff).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
