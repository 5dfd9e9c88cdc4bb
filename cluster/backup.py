"""``agora backup create`` / ``agora backup restore``: a consistent, verifiable copy of the state.

A backup is a directory ``agora-backup-<UTC time>/`` holding:

* ``database.dump``: ``pg_dump --format=custom`` of the whole database (one
  repeatable-read snapshot, so every table agrees with every other);
* ``chain-state.json``: the embedded anvil's state file (only when the chain is
  the embedded one; a real chain is its own durable store);
* ``media.tar`` / ``warehouse.tar``: the local media directory and a local
  warehouse directory, when they exist;
* ``manifest.json``: the format, the schema migration version, the PostgreSQL
  versions, and each file's size and sha256.

Restore checks every file against the manifest and refuses a backup whose
schema is newer than this code's migrations before it touches anything; the
database is then replaced in one transaction (psql ``--single-transaction``:
any error rolls back to the state before the restore). It needs the
application stopped (``agora down``); see docs/OPERATIONS.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from cluster import db, infra
from cluster.settings import Settings

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE = "database.dump"
CHAIN = "chain-state.json"
MEDIA = "media.tar"
WAREHOUSE = "warehouse.tar"
# What a restore drops before loading the dump: every object of ours lives in
# ``public`` (the migrations create no other schema).
_RESET_SQL = "DROP SCHEMA IF EXISTS public CASCADE;\nCREATE SCHEMA public;\n"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class BackupError(RuntimeError):
    """A backup cannot be made or restored; the message says why and what to do."""


@dataclass(frozen=True)
class PgTools:
    """pg_dump, pg_restore and psql from one installation, and its major version."""

    bin_dir: Path
    major: int

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


# --- PostgreSQL client tools --------------------------------------------------


def tool_major(binary: Path) -> int | None:
    """The major version a ``pg_dump --version`` style binary reports; None if it does not run."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def candidate_bin_dirs() -> list[Path]:
    """Where client tools may be: pgserver's (the embedded server's own), Debian's, PATH's."""
    import pgserver._commands as pg_commands

    dirs = [Path(pg_commands.POSTGRES_BIN_PATH)]
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    on_path = shutil.which("pg_dump")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    return dirs


def find_pg_tools(server_major: int, dirs: Iterable[Path] | None = None) -> PgTools:
    """Client tools of the server's major version.

    pg_dump refuses a newer server, and a dump made by a newer pg_dump may use
    archive features an older pg_restore cannot read, so we take the same major
    as the server, which is always safe.
    """
    seen: list[str] = []
    for bin_dir in candidate_bin_dirs() if dirs is None else dirs:
        if not all((bin_dir / name).exists() for name in ("pg_dump", "pg_restore", "psql")):
            continue
        major = tool_major(bin_dir / "pg_dump")
        seen.append(f"{bin_dir} ({major})")
        if major == server_major:
            return PgTools(bin_dir, major)
    raise BackupError(
        f"no pg_dump/pg_restore/psql of PostgreSQL {server_major} found"
        f" (looked at: {', '.join(seen) or 'nothing'}); install the client tools of the"
        " server's major version (Debian: postgresql-client-<major>)"
    )


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment carrying it (not on the command line,
    where ``ps`` would show it)."""
    parts = urlsplit(url)
    env: dict[str, str] = {}
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}@{host}")
    return urlunsplit(parts), env


def _run(args: list[str], env: dict[str, str], what: str, **kwargs: Any) -> None:
    try:
        subprocess.run(args, env={**os.environ, **env}, check=True, capture_output=True, **kwargs)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise BackupError(f"{what} failed: {' '.join(detail[-3:]) or exc}") from exc


# --- checksums and manifest ------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def latest_migration() -> int:
    return max(version for version, _name, _path in db.migration_files())


def verify(backup: Path) -> dict[str, Any]:
    """The manifest of a complete, unaltered backup this code can restore; BackupError otherwise."""
    manifest_path = backup / MANIFEST
    if not manifest_path.is_file():
        raise BackupError(f"{backup}: no {MANIFEST}; not an Agora backup, or an incomplete one")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        schema = int(manifest["schema_version"])
        fmt = int(manifest["format"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{backup}: {MANIFEST} is corrupt ({type(exc).__name__})") from exc
    if fmt != FORMAT:
        raise BackupError(f"{backup}: backup format {fmt}; this Agora reads format {FORMAT}")
    if DATABASE not in files:
        raise BackupError(f"{backup}: the manifest lists no {DATABASE}")
    for name, expected in files.items():
        path = backup / name
        if Path(name).name != name or not path.is_file():
            raise BackupError(f"{backup}: {name} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise BackupError(
                f"{backup}: {name} is {size} bytes, the manifest says {expected['bytes']}"
                " (truncated or replaced)"
            )
        if sha256_file(path) != expected["sha256"]:
            raise BackupError(f"{backup}: {name} does not match its sha256 (corrupt)")
    newest = latest_migration()
    if schema > newest:
        raise BackupError(
            f"{backup}: made by a newer Agora (schema version {schema}, this code knows up to"
            f" {newest}); restore it with that version or newer"
        )
    return dict(manifest)


def _entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


# --- directories -----------------------------------------------------------------


def tar_dir(source: Path, target: Path) -> None:
    """``source``'s contents as an uncompressed tar (media is already compressed)."""
    with tarfile.open(target, "w") as tar:
        for path in sorted(source.rglob("*")):
            # A file replaced meanwhile (a compaction's rename) is gone: its successor is
            # either listed too or newer than the backup.
            with contextlib.suppress(FileNotFoundError):
                tar.add(path, arcname=str(path.relative_to(source)), recursive=False)


def untar_dir(archive: Path, target: Path) -> None:
    """Replace ``target`` with the archive's contents; the old directory goes only once the new
    one is complete. The ``data`` filter refuses absolute paths, ``..`` and device files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def warehouse_dir(settings: Settings) -> Path | None:
    """The local warehouse directory; None for an object store (its own durable store)."""
    try:
        return settings.warehouse_root
    except ValueError:
        return None


def media_dir(settings: Settings) -> Path | None:
    """The local media directory; None when images live in an object store (s3://)."""
    if settings.media_url:
        url = settings.media_url
        return Path(url.removeprefix("file://")) if url.startswith("file://") else None
    return settings.media_root


def chain_state_file(settings: Settings) -> Path:
    return settings.var_dir / "anvil" / "state.json"


def copy_chain_state(source: Path, target: Path, newer_than: float, wait_s: float = 3.0) -> None:
    """Copy anvil's state file once it is newer than ``newer_than`` and parses.

    anvil rewrites the file every second (``--state-interval 1``) while it runs;
    waiting for a write after the database dump makes the chain copy at least as
    new as the database's idea of what is anchored, and parsing the copy catches
    a file caught mid-write (we then try again).
    """
    deadline = time.monotonic() + wait_s
    while True:
        fresh = source.stat().st_mtime > newer_than
        shutil.copyfile(source, target)
        try:
            json.loads(target.read_bytes())
            parsed = True
        except ValueError:
            parsed = False
        if parsed and (fresh or time.monotonic() >= deadline):
            return
        if time.monotonic() >= deadline:
            raise BackupError(f"{source} did not parse as JSON (anvil kept rewriting it)")
        time.sleep(0.2)


# --- create ------------------------------------------------------------------------


async def _database_facts(database_url: str) -> tuple[int, int, str]:
    conn = await db.connect(database_url)
    try:
        number = int(await conn.fetchval("SHOW server_version_num"))
        version = str(await conn.fetchval("SHOW server_version"))
        schema = 0
        # A database restored into may be empty (no migration ever ran).
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            schema = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    finally:
        await conn.close()
    return number // 10000, int(schema), version


def backup_name(now: datetime) -> str:
    return "agora-backup-" + now.strftime("%Y%m%dT%H%M%SZ")


async def create(
    settings: Settings,
    database_url: str,
    out_dir: Path,
    *,
    flushed: bool,
    tools: PgTools | None = None,
) -> Path:
    """Write a backup under ``out_dir``; returns its directory.

    ``flushed`` says whether the caller flushed the shards' write-behind first
    (recorded in the manifest: without it, up to one flush interval of cart and
    stock changes may be missing; orders and payments are written through).
    """
    server_major, schema, server_version = await _database_facts(database_url)
    tools = tools or find_pg_tools(server_major)
    now = datetime.now(UTC)
    target = out_dir / backup_name(now)
    partial = out_dir / f".{target.name}.partial"
    if target.exists():
        raise BackupError(f"{target} exists already")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        files = _write_parts(settings, database_url, tools, partial)
        manifest = {
            "format": FORMAT,
            "created_at": now.isoformat(),
            "schema_version": schema,
            "postgres": {"server": server_version, "pg_dump_major": tools.major},
            "write_behind_flushed": flushed,
            "chain": "embedded" if CHAIN in files else "external or none",
            "files": files,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        # Renamed into place last: a directory named agora-backup-* is complete.
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _write_parts(
    settings: Settings, database_url: str, tools: PgTools, into: Path
) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    url, env = libpq_target(database_url)
    dump = into / DATABASE
    _run(
        [tools.tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
         f"--file={dump}", f"--dbname={url}"],
        env,
        "pg_dump",
    )  # fmt: skip
    dumped_at = time.time()
    files[DATABASE] = _entry(dump)
    chain = chain_state_file(settings)
    if settings.chain_rpc_url is None and chain.exists():
        # Only a running anvil rewrites the file: a stopped one's copy is final already.
        wait_s = 3.0 if embedded_running(settings, "anvil") else 0.0
        copy_chain_state(chain, into / CHAIN, newer_than=dumped_at, wait_s=wait_s)
        files[CHAIN] = _entry(into / CHAIN)
    for name, source in ((MEDIA, media_dir(settings)), (WAREHOUSE, warehouse_dir(settings))):
        if source is not None and source.is_dir():
            tar_dir(source, into / name)
            files[name] = _entry(into / name)
    return files


# --- restore -----------------------------------------------------------------------


def restore_database(tools: PgTools, database_url: str, dump: Path) -> None:
    """Replace every object of ours with the dump's, atomically.

    ``pg_restore --list`` first reads the whole archive's table of contents (a
    structural check beyond the checksum); the SQL is then replayed by psql in a
    single transaction after dropping the ``public`` schema, so tables added by
    later migrations go too and a failure leaves the database as it was.
    """
    url, env = libpq_target(database_url)
    _run([tools.tool("pg_restore"), "--list", str(dump)], env, "pg_restore --list")
    with tempfile.TemporaryDirectory(prefix="agora-restore-") as tmp:
        reset = Path(tmp) / "reset.sql"
        reset.write_text(_RESET_SQL)
        script = Path(tmp) / "restore.sql"
        _run(
            [tools.tool("pg_restore"), "--no-owner", "--no-privileges", f"--file={script}",
             str(dump)],
            env,
            "pg_restore",
        )  # fmt: skip
        _run(
            [tools.tool("psql"), "--no-psqlrc", "--quiet", "--single-transaction",
             "--set=ON_ERROR_STOP=1", f"--file={reset}", f"--file={script}",
             f"--dbname={url}"],
            env,
            "psql (restore)",
        )  # fmt: skip


def restore_files(settings: Settings, backup: Path, manifest: dict[str, Any]) -> list[str]:
    """Put the chain state, media and warehouse back; returns what was restored."""
    done = []
    files = manifest["files"]
    if CHAIN in files and settings.chain_rpc_url is None:
        state = chain_state_file(settings)
        state.parent.mkdir(parents=True, exist_ok=True)
        staging = state.with_name(state.name + ".restore")
        shutil.copyfile(backup / CHAIN, staging)
        staging.replace(state)
        done.append("chain")
    for name, target in ((MEDIA, media_dir(settings)), (WAREHOUSE, warehouse_dir(settings))):
        if name in files and target is not None:
            untar_dir(backup / name, target)
            done.append(name.removesuffix(".tar"))
    return done


def embedded_running(settings: Settings, name: str) -> bool:
    pids = infra.read_pids(settings).get(name, [])
    return bool(pids) and all(infra.alive(p) for p in pids)


async def restore(settings: Settings, backup: Path, database_url: str | None) -> list[str]:
    """Restore ``backup``; ``database_url`` None means the embedded PostgreSQL (started here
    when it is not running, and stopped again afterwards)."""
    manifest = verify(backup)
    if infra.ray_running(settings):
        raise BackupError("Agora is running: stop it first (`agora down`), then restore")
    started_pg = False
    if database_url is None:
        started_pg = not embedded_running(settings, "postgres")
        database_url = infra.start_postgres(settings)
    try:
        server_major, _schema, _version = await _database_facts(database_url)
        tools = find_pg_tools(server_major)
        restore_database(tools, database_url, backup / DATABASE)
    finally:
        if started_pg:
            infra.stop_postgres(settings, infra.read_pids(settings).get("postgres", []))
    # anvil writes its state every second: it must not be running while we replace it.
    if CHAIN in manifest["files"] and settings.chain_rpc_url is None:
        infra.stop_anvil(settings)
    return ["database", *restore_files(settings, backup, manifest)]
