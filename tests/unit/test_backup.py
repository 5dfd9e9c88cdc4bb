"""Backup manifest checks, archive handling and tool discovery (no PostgreSQL needed)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cluster import backup
from cluster.settings import Settings


def _make_backup(root: Path, schema: int = 1, **extra_files: bytes) -> Path:
    target = root / "agora-backup-20260101T000000Z"
    target.mkdir()
    files = {backup.DATABASE: b"PGDMP fake archive bytes", **extra_files}
    entries = {}
    for name, data in files.items():
        (target / name).write_bytes(data)
        entries[name] = backup._entry(target / name)
    manifest = {"format": backup.FORMAT, "schema_version": schema, "files": entries}
    (target / backup.MANIFEST).write_text(json.dumps(manifest))
    return target


def test_verify_accepts_an_intact_backup(tmp_path: Path) -> None:
    made = _make_backup(tmp_path, **{backup.CHAIN: b"{}"})
    manifest = backup.verify(made)
    assert set(manifest["files"]) == {backup.DATABASE, backup.CHAIN}


def test_verify_refuses_a_flipped_byte(tmp_path: Path) -> None:
    made = _make_backup(tmp_path)
    dump = made / backup.DATABASE
    data = bytearray(dump.read_bytes())
    data[3] ^= 0x01
    dump.write_bytes(bytes(data))
    with pytest.raises(backup.BackupError, match="sha256"):
        backup.verify(made)


def test_verify_refuses_a_truncated_file(tmp_path: Path) -> None:
    made = _make_backup(tmp_path)
    dump = made / backup.DATABASE
    dump.write_bytes(dump.read_bytes()[:-4])
    with pytest.raises(backup.BackupError, match="truncated"):
        backup.verify(made)


def test_verify_refuses_a_missing_part_or_manifest(tmp_path: Path) -> None:
    made = _make_backup(tmp_path, **{backup.MEDIA: b"tar"})
    (made / backup.MEDIA).unlink()
    with pytest.raises(backup.BackupError, match="missing"):
        backup.verify(made)
    (made / backup.MANIFEST).unlink()
    with pytest.raises(backup.BackupError, match="not an Agora backup"):
        backup.verify(made)


def test_verify_refuses_a_corrupt_manifest(tmp_path: Path) -> None:
    made = _make_backup(tmp_path)
    text = (made / backup.MANIFEST).read_text()
    (made / backup.MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(backup.BackupError, match="corrupt"):
        backup.verify(made)


def test_verify_refuses_a_path_outside_the_backup(tmp_path: Path) -> None:
    made = _make_backup(tmp_path)
    manifest = json.loads((made / backup.MANIFEST).read_text())
    manifest["files"]["../elsewhere"] = {"bytes": 0, "sha256": ""}
    (made / backup.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(backup.BackupError, match="missing"):
        backup.verify(made)


def test_verify_refuses_a_newer_schema_and_format(tmp_path: Path) -> None:
    newer = _make_backup(tmp_path, schema=backup.latest_migration() + 1)
    with pytest.raises(backup.BackupError, match="newer Agora"):
        backup.verify(newer)
    manifest = json.loads((newer / backup.MANIFEST).read_text())
    manifest["format"] = backup.FORMAT + 1
    (newer / backup.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(backup.BackupError, match="format"):
        backup.verify(newer)


def test_tar_round_trip_replaces_the_directory(tmp_path: Path) -> None:
    source = tmp_path / "media"
    (source / "ab").mkdir(parents=True)
    (source / "ab" / "img.webp").write_bytes(b"\x00webp")
    (source / "top.txt").write_text("hello")
    archive = tmp_path / "media.tar"
    backup.tar_dir(source, archive)
    target = tmp_path / "restored"
    target.mkdir()
    (target / "stale.txt").write_text("from after the backup")
    backup.untar_dir(archive, target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "ab",
        "ab/img.webp",
        "top.txt",
    ]
    assert (target / "ab" / "img.webp").read_bytes() == b"\x00webp"
    assert not list(tmp_path.glob(".restored*")), "no staging or old directory left behind"


def test_untar_refuses_a_path_escaping_the_target(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    target = tmp_path / "media"
    target.mkdir()
    (target / "keep.txt").write_text("kept")
    with pytest.raises(tarfile.TarError):
        backup.untar_dir(archive, target)
    assert not (tmp_path / "escaped.txt").exists()
    assert (target / "keep.txt").read_text() == "kept"


def test_libpq_target_moves_the_password_to_the_environment() -> None:
    url, env = backup.libpq_target("postgresql://agora:s%40cret@db.example:5432/agora")
    assert url == "postgresql://agora@db.example:5432/agora"
    assert env == {"PGPASSWORD": "s@cret"}
    socket_url = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert backup.libpq_target(socket_url) == (socket_url, {})


def _fake_tools(root: Path, version: str) -> Path:
    bin_dir = root / version
    bin_dir.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        script.chmod(0o755)
    return bin_dir


def test_find_pg_tools_takes_the_servers_major(tmp_path: Path) -> None:
    old = _fake_tools(tmp_path, "15.4")
    new = _fake_tools(tmp_path, "16.2")
    assert backup.find_pg_tools(16, [old, new]) == backup.PgTools(new, 16)
    with pytest.raises(backup.BackupError, match="PostgreSQL 17"):
        backup.find_pg_tools(17, [old, new, tmp_path / "absent"])


def test_the_real_candidates_include_the_embedded_servers_tools() -> None:
    found = backup.candidate_bin_dirs()
    assert any((d / "pg_dump").exists() and "pgserver" in str(d) for d in found)


def test_chain_state_is_copied_once_it_parses(tmp_path: Path) -> None:
    source = tmp_path / "state.json"
    source.write_text('{"block": 7}')
    target = tmp_path / "copy.json"
    backup.copy_chain_state(source, target, newer_than=0.0)
    assert json.loads(target.read_text()) == {"block": 7}
    source.write_text('{"block": ')  # caught mid-write, and it never finishes
    past = time.time() - 60
    os.utime(source, (past, past))
    with pytest.raises(backup.BackupError, match="did not parse"):
        backup.copy_chain_state(source, target, newer_than=time.time(), wait_s=0.3)


def test_backup_names_sort_by_time() -> None:
    early = backup.backup_name(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = backup.backup_name(datetime(2026, 11, 2, 3, 4, 5, tzinfo=UTC))
    assert early == "agora-backup-20260102T030405Z" and early < late


def test_what_is_local_state_follows_the_settings(tmp_path: Path) -> None:
    local = Settings(var_dir=tmp_path)
    assert backup.media_dir(local) == tmp_path / "media"
    assert backup.warehouse_dir(local) == tmp_path / "warehouse"
    elsewhere = Settings(
        var_dir=tmp_path, media_url="file:///srv/media", warehouse_url="file:///srv/wh"
    )
    assert backup.media_dir(elsewhere) == Path("/srv/media")
    assert backup.warehouse_dir(elsewhere) == Path("/srv/wh")
    # Object stores keep their own copies: nothing local to archive.
    remote = Settings(var_dir=tmp_path, media_url="s3://bucket/p", warehouse_url="s3://b/w")
    assert backup.media_dir(remote) is None and backup.warehouse_dir(remote) is None
