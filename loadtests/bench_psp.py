"""The payment provider alone: Stripe-compatible stand-ins, driven by the official ``stripe`` SDK.

``python -m loadtests.bench_psp`` starts every candidate PSP itself on a free
127.0.0.1 port, checks that it behaves as our card adapter
(``StripeCardGateway``) needs, then drives it the way the adapter does, at 1
and 16 concurrent callers, for a fixed number of charges, and prints
charges/s, p50/p95 latency, the PSP process's own CPU per charge, and the ratio
vs localstripe as ``make run`` starts it today, measured in the same run. It
stops everything it started (by pid) when it ends.

A *charge* is what checkout pays for: ``PaymentIntent.create`` with
``payment_method=pm_card_visa``, metadata and an idempotency key, then
``confirm`` (the adapter commits the intent's id between the two; ``--one-call``
sends ``confirm=True`` in the create instead). A *refund* is
``Refund.create(payment_intent=..., amount=...)`` with an idempotency key.
Both go through the SDK's async client on aiohttp, as in the adapter, with no
network retries (errors are counted, not hidden).

Candidates:

- ``localstripe-write``: ``python -m cluster.localstripe_server`` as today
  (pickles its whole store to disk after every write), starting empty -- the
  baseline (its store grows during the run, as in a load run);
- ``localstripe-write-aged``: the same, its store preloaded with ``--aged``
  charges (default 1000, ~1.5 MB pickled), as ``var/localstripe`` is after a
  few load runs: every write then pickles the whole 1.5 MB;
- ``localstripe-memory``: the same with ``--persist memory`` (store in memory
  only, no access log): what ``AGORA_PSP_PERSIST=0`` selects;
- ``localstripe-interval``: ``--persist interval`` (store written at most once
  a second and at a clean stop);
- ``stripe-stateful-mock`` (npm, Node): installed under
  ``var/psp-bench/npm`` on first use (``--no-npm`` skips it). It has no
  PaymentIntents API, so it fails the adapter's checks; its figures use the
  legacy Charges API (``tok_visa``) and are for reference only.

Machine note: the load generator runs on the same (2-core, shared) machine as
the PSP; read the ratios, not the absolute numbers. Bounded: each phase stops
at ``--phase-seconds`` and the whole run at ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe

REPO = Path(__file__).resolve().parents[1]
NPM_DIR = REPO / "var" / "psp-bench" / "npm"
MOCK_PACKAGE = "stripe-stateful-mock@0.0.16"
API_KEY = "sk_test_agora_bench"  # every candidate accepts any sk_test_ key
AMOUNT = 1999
BASELINE = "localstripe-write"
AGED = "localstripe-write-aged"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- candidates ------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    command: Callable[[int, Path], list[str]]
    api: str = "intents"  # "intents" (our adapter's flow) or "charges" (legacy API)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _localstripe(mode: str, state: str) -> Callable[[int, Path], list[str]]:
    def command(port: int, tmp: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cluster.localstripe_server",
            "--port",
            str(port),
            "--state",
            str(tmp / f"{state}.pickle"),
            "--persist",
            mode,
        ]

    return command


# Builds a store that has seen N charges (every 10th refunded), as var/ has after
# a few load runs, with localstripe's own classes, in a child process.
_PRELOAD = """
import asyncio, pickle, sys
from localstripe import resources
resources.Store.dump_to_disk = lambda store: None
resources.Store.__setitem__ = dict.__setitem__
count, path = int(sys.argv[1]), sys.argv[2]
async def fill():
    for i in range(count):
        pi = resources.PaymentIntent._api_create(
            confirm=True, amount=1999, currency="usd", payment_method="pm_card_visa",
            metadata={"agora_key": f"pre-{i}", "description": "preload"})
        if i % 10 == 0:
            resources.Refund._api_create(payment_intent=pi.id, amount=1999)
asyncio.run(fill())
with open(path, "wb") as f:
    pickle.dump(dict(resources.store), f, protocol=pickle.HIGHEST_PROTOCOL)
"""


def preload(path: Path, count: int) -> None:
    subprocess.run(
        [sys.executable, "-c", _PRELOAD, str(count), str(path)],
        cwd=REPO,
        check=True,
        timeout=120,
    )


def _mock_command(port: int, tmp: Path) -> list[str]:
    # Its own CLI listens on every interface: serve its Express app on loopback only.
    script = (
        "const m = require('stripe-stateful-mock');"
        "require('http').createServer(m.createExpressApp())"
        f".listen({port}, '127.0.0.1');"
    )
    return ["node", "-e", script]


def _ensure_mock(install: bool) -> str | None:
    """The npm candidate's install, or why it is skipped."""
    if shutil.which("node") is None:
        return "node is not installed"
    if (NPM_DIR / "node_modules" / "stripe-stateful-mock" / "package.json").exists():
        return None
    if not install:
        return "not installed (run without --no-npm to install it under var/psp-bench/npm)"
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    package_json = NPM_DIR / "package.json"
    if not package_json.exists():
        package_json.write_text('{"private": true}\n')
    print(f"installing {MOCK_PACKAGE} under {NPM_DIR} ...", flush=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", MOCK_PACKAGE],
        cwd=NPM_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        return f"npm install failed: {done.stderr.strip()[-300:]}"
    return None


def candidates(include: set[str] | None, install_npm: bool, aged: int) -> list[Candidate]:
    found = [
        Candidate(BASELINE, _localstripe("write", "write"), note="as `make run` starts it today"),
        Candidate(
            AGED,
            _localstripe("write", "aged"),
            note=f"as today, store preloaded with {aged} charges",
        ),
        Candidate(
            "localstripe-memory",
            _localstripe("memory", "memory"),
            note="AGORA_PSP_PERSIST=0 (load runs)",
        ),
        Candidate(
            "localstripe-interval",
            _localstripe("interval", "interval"),
            note="AGORA_PSP_PERSIST=interval (1 s)",
        ),
        Candidate(
            "stripe-stateful-mock",
            _mock_command,
            api="charges",
            env={"NODE_PATH": str(NPM_DIR / "node_modules"), "LOG_LEVEL": "silent"},
            note="npm; no PaymentIntents: legacy Charges API, reference only",
        ),
    ]
    if not aged:
        found = [c for c in found if c.name != AGED]
    if include:
        found = [c for c in found if c.name in include or c.name == BASELINE]
    chosen = []
    for cand in found:
        if cand.name == "stripe-stateful-mock":
            why = _ensure_mock(install_npm)
            if why:
                print(f"skipping {cand.name}: {why}", flush=True)
                continue
        chosen.append(cand)
    return chosen


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"not listening on 127.0.0.1:{port} after {timeout} s")


def start(cand: Candidate, tmp: Path) -> None:
    cand.port = _free_port()
    cand.log_path = tmp / f"{cand.name}.log"
    env = {**os.environ, **cand.env}
    env.pop("AGORA_PSP_PERSIST", None)  # every localstripe candidate says its mode itself
    with cand.log_path.open("wb") as log:
        cand.proc = subprocess.Popen(
            cand.command(cand.port, tmp),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_tcp(cand.port, cand.proc, 20)
    except Exception:
        stop(cand)
        raise


def stop(cand: Candidate) -> None:
    proc = cand.proc
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()  # this pid only: the process we started
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# --- the calls, as the adapter makes them ------------------------------------------


def client_for(cand: Candidate, http: stripe.AIOHTTPClient) -> stripe.StripeClient:
    return stripe.StripeClient(
        API_KEY, base_addresses={"api": cand.base}, http_client=http, max_network_retries=0
    )


async def charge(
    client: stripe.StripeClient, api: str, key: str, token: str, one_call: bool
) -> tuple[str, str]:
    """(status, id) of one charge; a card decline raises ``stripe.CardError``."""
    if api == "charges":
        ch = await client.v1.charges.create_async(
            {"amount": AMOUNT, "currency": "usd", "source": token, "metadata": {"agora_key": key}},
            options={"idempotency_key": f"agora-charge-{key}"},
        )
        return ch.status, ch.id
    intents = client.v1.payment_intents
    params: dict[str, Any] = {
        "amount": AMOUNT,
        "currency": "usd",
        "payment_method": token,
        "metadata": {"agora_key": key, "description": "bench_psp"},
    }
    if one_call:
        params["confirm"] = True
    intent = await intents.create_async(params, options={"idempotency_key": f"agora-charge-{key}"})  # type: ignore[arg-type]
    if intent.status == "requires_confirmation":
        intent = await intents.confirm_async(intent.id)
    return intent.status, intent.id


async def refund(
    client: stripe.StripeClient, api: str, payment_id: str, key: str, amount: int
) -> str:
    target = {"charge": payment_id} if api == "charges" else {"payment_intent": payment_id}
    found = await client.v1.refunds.create_async(
        {**target, "amount": amount, "metadata": {"agora_key": key}},  # type: ignore[typeddict-item]
        options={"idempotency_key": f"agora-refund-{key}"},
    )
    return found.status or ""


# --- correctness ---------------------------------------------------------------------


async def _outcome(call: Awaitable[tuple[str, str]]) -> str:
    try:
        status, _ = await call
    except stripe.CardError as exc:
        return f"declined ({exc.code})"
    except stripe.StripeError as exc:
        return f"{type(exc).__name__} http {exc.http_status}"
    return status


async def check(cand: Candidate, http: stripe.AIOHTTPClient, one_call: bool) -> dict[str, Any]:
    """The adapter's needs, on our flow (PaymentIntents), and on the candidate's own API."""
    client = client_for(cand, http)
    run = uuid.uuid4().hex[:8]
    checks: dict[str, Any] = {}

    async def flow(api: str, ok_token: str, bad_token: str) -> dict[str, str | bool]:
        got: dict[str, str | bool] = {}
        try:
            status, pid = await charge(client, api, f"chk-{run}-{api}-ok", ok_token, one_call)
        except stripe.StripeError as exc:
            got["succeeds"] = f"{type(exc).__name__} http {exc.http_status}"
            got["ok"] = False
            return got
        got["succeeds"] = status
        got["declines"] = await _outcome(
            charge(client, api, f"chk-{run}-{api}-bad", bad_token, one_call)
        )
        try:
            part = await refund(client, api, pid, f"chk-{run}-{api}-r1", 500)
            rest = await refund(client, api, pid, f"chk-{run}-{api}-r2", AMOUNT - 500)
            got["refunds"] = f"{part}, {rest}"
        except stripe.StripeError as exc:
            got["refunds"] = f"{type(exc).__name__} http {exc.http_status}"
        if api == "intents":
            # The adapter's resume path finds an earlier refund by its metadata.
            try:
                page = await client.v1.refunds.list_async({"payment_intent": pid, "limit": 100})
                keys = sorted(
                    [
                        (r.metadata.to_dict() if r.metadata else {}).get("agora_key", "")
                        async for r in page.auto_paging_iter()
                    ]
                )
                want = sorted(f"chk-{run}-{api}-r{n}" for n in (1, 2))
                got["refund_list"] = "both found" if keys == want else f"found {keys}"
            except stripe.StripeError as exc:
                got["refund_list"] = f"{type(exc).__name__} http {exc.http_status}"
        try:
            await refund(client, api, pid, f"chk-{run}-{api}-r3", 1)
            got["over_refund"] = "accepted (wrong)"
        except stripe.StripeError as exc:
            got["over_refund"] = f"refused ({type(exc).__name__})"
        # over_refund is information only: the adapter refuses it before calling the PSP.
        got["ok"] = (
            got["succeeds"] == "succeeded"
            and str(got["declines"]).startswith("declined")
            and got["refunds"] in ("succeeded, succeeded", "pending, pending")
            and got.get("refund_list", "both found") == "both found"
        )
        if api == "intents":
            unknown = await _outcome(charge(client, api, f"chk-{run}-unknown", "pm_nope", one_call))
            got["unknown_pm"] = unknown
            got["ok"] = bool(got["ok"]) and "InvalidRequestError" in unknown
        # Information only: the adapter keeps its own idempotency.
        key = f"chk-{run}-{api}-idem"
        try:
            first = await charge(client, api, key, ok_token, one_call)
            second = await charge(client, api, key, ok_token, one_call)
            got["idempotency_keys"] = "honoured" if first[1] == second[1] else "ignored"
        except stripe.StripeError as exc:
            got["idempotency_keys"] = f"{type(exc).__name__}"
        return got

    checks["intents"] = await flow("intents", "pm_card_visa", "pm_card_chargeCustomerFail")
    if cand.api == "charges":
        checks["charges"] = await flow("charges", "tok_visa", "tok_chargeDeclined")
    checks["adapter_compatible"] = bool(checks["intents"].get("ok"))
    return checks


# --- load ------------------------------------------------------------------------------


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, round(q * (len(sorted_ms) - 1)))]


@dataclass
class Phase:
    done: int = 0
    errors: int = 0
    seconds: float = 0.0
    psp_cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""
    stopped_early: bool = False

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "ops": self.done,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "per_s": round(self.done / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(_pct(lat, 0.50), 1),
            "p95_ms": round(_pct(lat, 0.95), 1),
            "psp_cpu_ms_per_op": round(1000 * self.psp_cpu_s / self.done, 2) if self.done else None,
            "first_error": self.first_error,
            "stopped_early": self.stopped_early,
        }


async def drive(
    cand: Candidate,
    concurrency: int,
    count: int,
    cap_s: float,
    op: Callable[[int], Awaitable[str | None]],
) -> Phase:
    phase = Phase()
    next_i = 0
    deadline = time.monotonic() + cap_s

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            if time.monotonic() > deadline:
                phase.stopped_early = True
                return
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                failure = await op(i)
            except Exception as exc:  # counted, the run goes on
                failure = f"{type(exc).__name__}: {exc}"[:200]
            if failure is None:
                phase.latencies.append(1000 * (time.perf_counter() - t0))
                phase.done += 1
            else:
                phase.errors += 1
                phase.first_error = phase.first_error or failure

    assert cand.proc is not None
    cpu0, t0 = cpu_seconds(cand.proc.pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - t0
    phase.psp_cpu_s = cpu_seconds(cand.proc.pid) - cpu0
    return phase


async def measure(
    cand: Candidate,
    http: stripe.AIOHTTPClient,
    concurrency: int,
    count: int,
    refunds: int,
    cap_s: float,
    one_call: bool,
) -> dict[str, Any]:
    client = client_for(cand, http)
    run = uuid.uuid4().hex[:8]
    token = "tok_visa" if cand.api == "charges" else "pm_card_visa"
    paid: list[str] = []

    async def one_charge(i: int) -> str | None:
        status, pid = await charge(client, cand.api, f"b-{run}-{i}", token, one_call)
        if status != "succeeded":
            return f"status {status}"
        paid.append(pid)
        return None

    async def one_refund(i: int) -> str | None:
        status = await refund(client, cand.api, paid[i], f"b-{run}-{i}", AMOUNT)
        return None if status in ("succeeded", "pending") else f"status {status}"

    # Warm-up: connections, first-call paths (not measured).
    warm = await drive(cand, concurrency, concurrency, cap_s, lambda i: one_charge(-1 - i))
    paid.clear()
    del warm
    charges = await drive(cand, concurrency, count, cap_s, one_charge)
    refunded = await drive(cand, concurrency, min(refunds, len(paid)), cap_s, one_refund)
    return {"charges": charges.summary(), "refunds": refunded.summary()}


# --- report ------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    flow = "create(confirm=True)" if args.one_call else "create + confirm"
    print()
    print(
        f"# PSP alone: official stripe SDK {stripe.VERSION} async (aiohttp), no retries; "
        f"charge = PaymentIntent {flow} (pm_card_visa) with an idempotency key; "
        f"{args.count} charges + {args.refunds} refunds per level; same 2-core box as the PSP"
    )
    print()
    print("| check | " + " | ".join(results["checks"]) + " |")
    print("|---|" + "---|" * len(results["checks"]))
    rows = [
        "succeeds",
        "declines",
        "refunds",
        "refund_list",
        "over_refund",
        "unknown_pm",
        "idempotency_keys",
    ]
    for row in rows:
        cells = [str(c["intents"].get(row, "-")) for c in results["checks"].values()]
        print(f"| intents: {row} | " + " | ".join(cells) + " |")
    cells = ["yes" if c["adapter_compatible"] else "**no**" for c in results["checks"].values()]
    print("| fits our adapter | " + " | ".join(cells) + " |")
    for name, c in results["checks"].items():
        if "charges" in c:
            print(f"\n{name}, legacy Charges API (tok_visa / tok_chargeDeclined): {c['charges']}")
    for rnd, by_c in enumerate(results["rounds"], 1):
        print()
        print(f"## round {rnd}")
        print()
        print(
            "| c | candidate | charges/s | p50 ms | p95 ms | errors | PSP CPU ms/charge"
            " | ratio vs today | ratio vs aged | refunds/s | refund p50 ms | refund p95 ms |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for conc, by_name in by_c.items():
            base = by_name.get(BASELINE, {}).get("charges", {}).get("per_s", 0.0)
            aged = by_name.get(AGED, {}).get("charges", {}).get("per_s", 0.0)
            for name, r in by_name.items():
                ch, rf = r["charges"], r["refunds"]
                label = name if r.get("api") == "intents" else f"{name} (Charges API)"
                early = " (capped)" if ch["stopped_early"] else ""
                print(
                    f"| {conc} | {label} | {ch['per_s']}{early} | {ch['p50_ms']} | {ch['p95_ms']}"
                    f" | {ch['errors']} | {ch['psp_cpu_ms_per_op']} | {_ratio(ch['per_s'], base)}"
                    f" | {_ratio(ch['per_s'], aged)}"
                    f" | {rf['per_s']} | {rf['p50_ms']} | {rf['p95_ms']} |"
                )
                if ch["first_error"] or rf["first_error"]:
                    print(f"|   | first error: {ch['first_error'] or rf['first_error']} |")
    for name, size in results.get("store_bytes", {}).items():
        print(f"\n{name}: store file at the end {size:,} bytes")
    print(f"\ntotal {results['seconds']:.0f} s")


# --- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace, cands: list[Candidate], tmp: Path) -> dict[str, Any]:
    t_start = time.monotonic()
    results: dict[str, Any] = {"checks": {}, "rounds": [], "args": vars(args)}
    http = stripe.AIOHTTPClient(timeout=30)
    try:
        for cand in cands:
            results["checks"][cand.name] = await check(cand, http, args.one_call)
        for rnd in range(args.rounds):
            by_c: dict[int, dict[str, Any]] = {}
            for conc in args.concurrency:
                by_c[conc] = {}
                # Alternate the order between rounds; the baseline always runs.
                order = cands if rnd % 2 == 0 else list(reversed(cands))
                for cand in order:
                    left = args.max_seconds - (time.monotonic() - t_start)
                    if left < 5 and cand.name != BASELINE:
                        print(f"time budget spent: skipping {cand.name} c={conc}", flush=True)
                        continue
                    cap = max(2.0, min(args.phase_seconds, left / 3))
                    r = await measure(
                        cand, http, conc, args.count, args.refunds, cap, args.one_call
                    )
                    r["api"] = cand.api
                    by_c[conc][cand.name] = r
                    ch = r["charges"]
                    print(
                        f"round {rnd + 1} c={conc:<2} {cand.name:<22} {ch['per_s']:>7} charges/s"
                        f"  p50 {ch['p50_ms']} ms  p95 {ch['p95_ms']} ms  errors {ch['errors']}",
                        flush=True,
                    )
            results["rounds"].append(by_c)
    finally:
        await http.close_async()
    results["seconds"] = time.monotonic() - t_start
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_psp", description=__doc__)
    parser.add_argument("--count", type=int, default=300, help="charges per level (default 300)")
    parser.add_argument("--refunds", type=int, default=100, help="refunds per level (default 100)")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16],
        help="comma-separated concurrent callers (default 1,16)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="cap of one phase")
    parser.add_argument("--max-seconds", type=float, default=170.0, help="cap of the whole run")
    parser.add_argument("--one-call", action="store_true", help="create with confirm=True")
    parser.add_argument("--only", default="", help="comma-separated candidate names")
    parser.add_argument("--no-npm", action="store_true", help="do not npm-install the mock")
    parser.add_argument(
        "--aged",
        type=int,
        default=1000,
        help=f"charges preloaded into {AGED}'s store (default 1000; 0: no such candidate)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)

    cands = candidates({n for n in args.only.split(",") if n} or None, not args.no_npm, args.aged)
    with tempfile.TemporaryDirectory(prefix="agora-bench-psp-") as name:
        tmp = Path(name)
        if any(c.name == AGED for c in cands):
            t0 = time.monotonic()
            preload(tmp / "aged.pickle", args.aged)
            size = (tmp / "aged.pickle").stat().st_size
            print(
                f"preloaded {args.aged} charges ({size:,} bytes) in {time.monotonic() - t0:.1f} s"
            )
        started: list[Candidate] = []
        try:
            for cand in cands:
                start(cand, tmp)
                started.append(cand)
                print(f"started {cand.name} on {cand.base} (pid {cand.proc.pid})", flush=True)  # type: ignore[union-attr]
            results = asyncio.run(run(args, cands, tmp))
            results["store_bytes"] = {
                p.stem: p.stat().st_size for p in tmp.glob("*.pickle") if p.stat().st_size
            }
        finally:
            for cand in started:
                stop(cand)
            for cand in started:
                if cand.proc is not None and cand.proc.returncode not in (0, -15, None):
                    log = cand.log_path.read_text()[-800:] if cand.log_path else ""
                    print(f"{cand.name} exited {cand.proc.returncode}:\n{log}", file=sys.stderr)
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
