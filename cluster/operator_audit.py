"""Operator actions taken from the command line, recorded in the audit log.

The API records who acted through ``serve.routers.audit.record_admin_action``;
``agora admin create`` (a role granted) and ``agora keys rotate`` /
``rotate-master`` (keys) act on the database directly, with no signed-in
operator. They queue the same ``admin.action`` event in the outbox, in the
transaction of the change, with the actor ``cli:<login name of the OS user>``;
the audit consumer appends it to the hash chain like any other operator action.
"""

from __future__ import annotations

import getpass
import os
import time
from typing import Any

from actors.writebehind import insert_outbox
from streams.events import ADMIN_ACTION, make_event


def cli_actor() -> str:
    """``cli:<OS login name>`` (``cli:uid-<n>`` where the name cannot be found)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


async def record_cli_action(
    conn: Any,
    action: str,
    target: str | None,
    details: dict[str, Any] | None = None,
    *,
    tenant: str = "agora",
    namespace: str = "events",
) -> None:
    """Queue ``admin.action`` for a command-line change, in ``conn``'s current transaction."""
    actor = cli_actor()
    payload = {"actor": actor, "action": action, "target": target, "details": details or {}}
    event = make_event(ADMIN_ACTION, actor, payload, int(time.time() * 1000))
    await insert_outbox(conn, [event], tenant, namespace)
