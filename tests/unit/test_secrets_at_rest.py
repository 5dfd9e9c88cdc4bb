"""Secrets sealed at rest (cluster/crypto/secretbox.py): AES-GCM under the master key."""

from __future__ import annotations

import base64
import pickle
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cluster.crypto import secretbox
from cluster.crypto.secretbox import MasterKeys
from cluster.settings import Settings
from streams.consumers import webhooks

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


def test_seal_then_open_round_trips_and_hides_the_plaintext() -> None:
    keys = MasterKeys(KEY_A)
    sealed = keys.seal("JBSWY3DPEHPK3PXP", "users.mfa:u1")
    assert sealed.startswith(f"{secretbox.PREFIX}{keys.current_id}:")
    assert "JBSWY3DPEHPK3PXP" not in sealed
    assert keys.open(sealed, "users.mfa:u1") == "JBSWY3DPEHPK3PXP"
    # A fresh nonce each time: the same secret never seals to the same text.
    assert keys.seal("JBSWY3DPEHPK3PXP", "users.mfa:u1") != sealed


def test_a_tampered_value_is_refused() -> None:
    keys = MasterKeys(KEY_A)
    sealed = keys.seal("-----BEGIN PRIVATE KEY-----", "signing_keys.private_pem:k1")
    head, blob = sealed.rsplit(":", 1)
    flipped = blob[:-3] + ("A" if blob[-3] != "A" else "B") + blob[-2:]
    with pytest.raises(secretbox.TamperedSecret, match="failed authentication"):
        keys.open(f"{head}:{flipped}", "signing_keys.private_pem:k1")
    with pytest.raises(secretbox.TamperedSecret):
        keys.open(f"{head}:{blob[:10]}", "signing_keys.private_pem:k1")
    with pytest.raises(secretbox.TamperedSecret, match="malformed"):
        keys.open(secretbox.PREFIX + "no-separator", "x")


def test_a_value_moved_to_another_row_is_refused() -> None:
    keys = MasterKeys(KEY_A)
    alice = keys.seal("alice-totp", "users.mfa:alice")
    with pytest.raises(secretbox.TamperedSecret, match="another row"):
        keys.open(alice, "users.mfa:mallory")


def test_the_wrong_master_key_is_a_clear_error() -> None:
    sealed = MasterKeys(KEY_A).seal("whsec", "webhooks.secret:wh_1")
    with pytest.raises(secretbox.UnknownMasterKey, match="AGORA_MASTER_KEY"):
        MasterKeys(KEY_B).open(sealed, "webhooks.secret:wh_1")
    # After a rotation the previous key still opens what it sealed.
    rotated = MasterKeys(KEY_B, (KEY_A,))
    assert rotated.open(sealed, "webhooks.secret:wh_1") == "whsec"
    assert rotated.needs_reseal(sealed) and not rotated.needs_reseal(
        rotated.seal("whsec", "webhooks.secret:wh_1")
    )


def test_plaintext_from_before_sealing_is_read_as_it_is() -> None:
    keys = MasterKeys(KEY_A)
    assert keys.open("legacy-secret", "webhooks.secret:wh_1") == "legacy-secret"
    assert keys.needs_reseal("legacy-secret")


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_keys_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        master_key=SecretStr(_b64(KEY_B)),
        master_key_previous=SecretStr(f"{_b64(KEY_A)}, "),
    )
    keys = secretbox.load_master_keys(settings)
    assert keys == MasterKeys(KEY_B, (KEY_A,))
    assert not secretbox.ensure_master_key_file(settings), "no file when the setting is set"
    with pytest.raises(secretbox.SecretsError, match="AGORA_MASTER_KEY_PREVIOUS"):
        secretbox.rotate_master_key_file(settings)
    for bad, message in (("not base64!", "not base64"), (_b64(b"short"), "32 bytes")):
        with pytest.raises(secretbox.SecretsError, match=message):
            secretbox.load_master_keys(Settings(var_dir=tmp_path, master_key=SecretStr(bad)))


def test_key_file_is_private_and_rotation_keeps_the_old_key(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    with pytest.raises(secretbox.SecretsError, match="agora up"):
        secretbox.load_master_keys(settings)
    assert secretbox.ensure_master_key_file(settings)
    assert not secretbox.ensure_master_key_file(settings), "created once"
    path = settings.run_dir / secretbox.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = secretbox.load_master_keys(settings)
    sealed = first.seal("s3cret", "c:1")
    rotated = secretbox.rotate_master_key_file(settings)
    assert rotated.current != first.current and rotated.previous == (first.current,)
    assert rotated.open(sealed, "c:1") == "s3cret"
    previous = path.with_name(secretbox.PREVIOUS_FILE)
    assert stat.S_IMODE(previous.stat().st_mode) == 0o600


class FakeConn:
    """Just the two calls reseal_all makes, over an in-memory table of secrets."""

    def __init__(self, rows: dict[tuple[str, str, str], str]) -> None:
        self.rows = rows  # (table, column, id) -> stored value

    async def fetch(self, sql: str, pattern: str) -> list[dict[str, Any]]:
        table = sql.split(" FROM ")[1].split()[0]
        column = sql.split(" AS value")[0].split(", ")[-1]
        prefix = pattern.rstrip("%")
        return [
            {"id": rid, "value": value}
            for (t, c, rid), value in self.rows.items()
            if t == table and c == column and not value.startswith(prefix)
        ]

    async def execute(self, sql: str, rid: str, old: str, new: str) -> str:
        table = sql.split()[1]
        column = sql.split(" SET ")[1].split()[0]
        if self.rows.get((table, column, rid)) != old:
            return "UPDATE 0"
        self.rows[(table, column, rid)] = new
        return "UPDATE 1"


async def test_reseal_all_seals_plaintext_and_moves_old_keys_forward() -> None:
    old = MasterKeys(KEY_A)
    conn = FakeConn(
        {
            ("users", "mfa_secret", "u1"): "PLAINTOTP",
            ("webhooks", "secret", "wh_1"): old.seal("whsec-1234567890", "webhooks.secret:wh_1"),
        }
    )
    keys = MasterKeys(KEY_B, (KEY_A,))
    counts = await secretbox.reseal_all(conn, keys)
    assert counts["users.mfa_secret"] == 1 and counts["webhooks.secret"] == 1
    assert counts["signing_keys.private_pem"] == 0
    for (table, column, rid), value in conn.rows.items():
        assert not keys.needs_reseal(value)
        context = "users.mfa" if table == "users" else f"{table}.{column}"
        assert keys.open(value, f"{context}:{rid}") in {"PLAINTOTP", "whsec-1234567890"}
    assert await secretbox.reseal_all(conn, keys) == dict.fromkeys(counts, 0), "idempotent"


def test_the_opener_injected_into_consumers_pickles_without_keys() -> None:
    opener = secretbox.SecretOpener(secretbox.WEBHOOK_SECRET)
    assert pickle.loads(pickle.dumps(opener)) == opener
    assert b"master" not in pickle.dumps(opener)


async def test_a_webhook_whose_secret_cannot_be_opened_is_never_posted_unsigned() -> None:
    class Poster:
        posted: list[str] = []

        async def post(self, url: str, body: bytes, headers: Any) -> webhooks.PostResult:
            self.posted.append(headers["Agora-Signature"])
            return webhooks.PostResult(204, None)

    row = {
        "deleted_at": None,
        "body": "{}",
        "event_id": "e1",
        "event_type": "order.confirmed",
        "delivery_id": 1,
        "webhook_id": "wh_1",
        "url": "https://hooks.example.com/x",
        "secret": MasterKeys(KEY_A).seal("whsec-1234567890", "webhooks.secret:wh_1"),
    }
    poster = Poster()

    def wrong_key(stored: str, webhook_id: str) -> str:
        return MasterKeys(KEY_B).open(stored, f"webhooks.secret:{webhook_id}")

    failed = await webhooks._post(poster, row, wrong_key)
    assert failed.status is None and failed.error == "secret: UnknownMasterKey"
    assert poster.posted == []

    def right_key(stored: str, webhook_id: str) -> str:
        return MasterKeys(KEY_A).open(stored, f"webhooks.secret:{webhook_id}")

    assert (await webhooks._post(poster, row, right_key)).ok
    header = poster.posted[0]
    assert webhooks.verify_signature("whsec-1234567890", b"{}", header, now=int(time.time()))
