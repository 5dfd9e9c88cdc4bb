"""Entry point of the embedded Stripe-compatible PSP: localstripe, on loopback, state under var/.

``localstripe``'s own command listens on every interface (``::``) and pickles
its whole store to a fixed ``/tmp/localstripe.pickle`` that every checkout on
the machine shares and that it loads back with ``pickle`` at start. This entry
point serves the same localstripe application, but on 127.0.0.1 only, with its
store in the file given (written atomically once per mutating request, since
localstripe's own middleware dumps the store after every POST, PUT and DELETE).

Run by ``cluster.infra.start_localstripe``:
``python -m cluster.localstripe_server --port 8420 --state var/localstripe/store.pickle``.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from contextlib import suppress
from pathlib import Path
from typing import Any


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.localstripe_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="file that keeps the store")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    from aiohttp import web
    from localstripe import resources
    from localstripe.server import app

    _use_state_file(resources.Store, args.state)
    resources.store.try_load_from_disk()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
