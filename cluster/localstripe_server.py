"""Entry point of the embedded Stripe-compatible PSP: localstripe, on loopback, state under var/.

``localstripe``'s own command listens on every interface (``::``) and pickles
its whole store to a fixed ``/tmp/localstripe.pickle`` that every checkout on
the machine shares and that it loads back with ``pickle`` at start. This entry
point serves the same localstripe application, but on 127.0.0.1 only, with its
store in the file given.

How the store is kept is chosen by ``--persist`` (default: the environment
variable ``AGORA_PSP_PERSIST``, else ``interval``):

``write`` (also ``1``)
    The store is loaded from the file at start and written atomically once per
    mutating request (localstripe's own middleware dumps the store after every
    POST, PUT and DELETE). Every write pickles the *whole* store, so each one
    costs more as the store grows: this caps checkout near 20/s on a 2-core box.
``memory`` (also ``0``; for load runs)
    The store lives in memory only: the file is neither read nor written, the
    PSP starts empty and forgets everything when it stops, and the per-request
    access log is off. Payments recorded in PostgreSQL by an earlier run then
    point at intents this PSP does not know (a refund of one fails). Use it for
    load runs: ``AGORA_PSP_PERSIST=0 make run`` (after ``make stop``: a running
    PSP is reused as it is). See docs/PSP.md for the figures.
``interval`` (the default, for dev and load runs)
    Loaded at start like ``write``; the store is written at most once per
    ``--flush-seconds`` (default 1 s) after a change, and once more on a clean
    stop (SIGTERM / SIGINT). A crash loses at most the last interval.

Besides pickling, localstripe scans its whole store on every list, and it lists
a charge's refunds several times each time it renders a charge (so every
confirm is O(store) even without a disk write); it also renders every event for
webhooks even when none is registered. In ``memory`` and ``interval`` modes the
store keeps an index by object type that the lists read (same objects, same
order), and events are not rendered while no webhook is registered.

Run by ``cluster.infra.start_localstripe``:
``python -m cluster.localstripe_server --port 8420 --state var/localstripe/store.pickle``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
from contextlib import suppress
from pathlib import Path
from typing import Any

PERSIST_ENV = "AGORA_PSP_PERSIST"
_MODES = {
    "1": "write",
    "write": "write",
    "true": "write",
    "0": "memory",
    "memory": "memory",
    "false": "memory",
    "off": "memory",
    "interval": "interval",
}

log = logging.getLogger("agora.localstripe")


def persist_mode(value: str | None) -> str:
    """The canonical mode (``write``, ``memory``, ``interval``) for a setting's value."""
    if value is None or not value.strip():
        return "interval"
    try:
        return _MODES[value.strip().lower()]
    except KeyError:
        raise ValueError(
            f"{PERSIST_ENV} must be one of {', '.join(sorted(_MODES))}, not {value!r}"
        ) from None


def _keep_nothing(store_class: Any) -> None:
    def load(store: dict[str, Any]) -> None:
        return None

    def dump(store: dict[str, Any]) -> None:
        return None

    store_class.try_load_from_disk = load
    store_class.dump_to_disk = dump
    store_class.__setitem__ = dict.__setitem__
    store_class.__delitem__ = dict.__delitem__


def _use_state_file(store_class: Any, path: Path) -> None:
    def load(store: dict[str, Any]) -> None:
        with suppress(FileNotFoundError), path.open("rb") as f:
            # Our own file under var/, written only by this process.
            saved = pickle.load(f)  # noqa: S301
            dict.clear(store)
            dict.update(store, saved)

    def dump(store: dict[str, Any]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            pickle.dump(dict(store), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)

    store_class.try_load_from_disk = load
    store_class.dump_to_disk = dump
    # localstripe also dumps on every item set; one dump per request is enough.
    store_class.__setitem__ = dict.__setitem__
    store_class.__delitem__ = dict.__delitem__


def _index_by_type(resources: Any, webhooks: Any) -> None:
    """Lists read a per-type index instead of scanning the store; no unread webhook renders."""
    store_class, base = resources.Store, resources.StripeObject
    index: dict[str, dict[str, Any]] = {}
    write, delete, clear = (
        store_class.__setitem__,
        store_class.__delitem__,
        store_class.clear,
    )

    def kind(key: str) -> str | None:
        name, sep, _ = key.partition(":")
        return name if sep else None

    def setitem(store: dict[str, Any], key: str, value: Any) -> None:
        write(store, key, value)
        if (name := kind(key)) is not None:
            index.setdefault(name, {})[key] = value

    def delitem(store: dict[str, Any], key: str) -> None:
        delete(store, key)
        if (name := kind(key)) is not None:
            index.get(name, {}).pop(key, None)

    def clear_all(store: dict[str, Any]) -> None:
        clear(store)
        index.clear()

    def reindex(store: dict[str, Any]) -> None:
        index.clear()
        for key, value in dict.items(store):
            if (name := kind(key)) is not None:
                index.setdefault(name, {})[key] = value

    def list_all(
        cls: Any, url: Any, limit: Any = None, starting_after: Any = None, **kwargs: Any
    ) -> Any:
        # Same as StripeObject._api_list_all, without the scan of the whole store.
        if kwargs:
            raise resources.UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        found = resources.List(url, limit=limit, starting_after=starting_after)
        found._list = list(index.get(cls.object, {}).values())
        return found

    load = store_class.try_load_from_disk

    def load_and_index(store: dict[str, Any]) -> None:
        load(store)
        reindex(store)

    store_class.__setitem__ = setitem
    store_class.__delitem__ = delitem
    store_class.clear = clear_all
    store_class.try_load_from_disk = load_and_index
    base._api_list_all = classmethod(list_all)

    schedule = resources.schedule_webhook

    def schedule_if_registered(event: Any) -> None:
        if webhooks._webhooks:
            schedule(event)

    resources.schedule_webhook = schedule_if_registered


def _flush_every(app: Any, store_class: Any, store: Any, seconds: float) -> None:
    """Turn the per-request dump into a dirty mark, written by a timer and at shutdown."""
    write = store_class.dump_to_disk
    dirty = False

    def mark(_store: dict[str, Any]) -> None:
        nonlocal dirty
        dirty = True

    def flush() -> None:
        nonlocal dirty
        if dirty:
            dirty = False
            write(store)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                flush()
            except Exception:
                log.exception("could not write the localstripe store")

    async def start(_app: Any) -> None:
        _app["agora_flusher"] = asyncio.get_running_loop().create_task(flusher())

    async def stop(_app: Any) -> None:
        task = _app.pop("agora_flusher", None)
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        flush()

    store_class.dump_to_disk = mark
    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.localstripe_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="file that keeps the store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--persist",
        choices=sorted(_MODES),
        default=None,
        help=f"how the store is kept (default: ${PERSIST_ENV}, else write); see the module doc",
    )
    parser.add_argument("--flush-seconds", type=float, default=1.0, help="for --persist interval")
    args = parser.parse_args(argv)
    mode = persist_mode(args.persist if args.persist is not None else os.environ.get(PERSIST_ENV))

    from aiohttp import web
    from localstripe import resources, webhooks
    from localstripe.server import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if mode == "memory":
        _keep_nothing(resources.Store)
    else:
        _use_state_file(resources.Store, args.state)
    if mode != "write":
        _index_by_type(resources, webhooks)
    if mode != "memory":
        resources.store.try_load_from_disk()
        if mode == "interval":
            _flush_every(app, resources.Store, resources.store, args.flush_seconds)
    log.info(
        "localstripe store: %s (%s)", mode, "in memory only" if mode == "memory" else args.state
    )
    # In memory mode (load runs) skip the per-request access log line.
    access_log = None if mode == "memory" else logging.getLogger("aiohttp.access")
    web.run_app(app, host=args.host, port=args.port, access_log=access_log)


if __name__ == "__main__":
    main()
