import base64
from urllib.parse import parse_qs, unquote, urlparse

import pyotp
import pytest

from serve.auth.totp import (
    RECOVERY_CODE_BITS,
    hash_recovery_code,
    new_recovery_codes,
    new_secret,
    normalise_recovery_code,
    provisioning_uri,
    qr_svg,
    verify_code,
)

NOW = 1_750_000_015
STEP = NOW // 30


@pytest.fixture
def secret():
    return new_secret()


def code_at(secret, step):
    return pyotp.TOTP(secret).generate_otp(step)


def test_secret_is_160_bits_of_base32(secret):
    assert len(secret) == 32
    assert len(base64.b32decode(secret)) == 20
    assert new_secret() != secret


def test_current_code_is_accepted_and_returns_its_step(secret):
    assert verify_code(secret, pyotp.TOTP(secret).at(NOW), NOW, None) == STEP


@pytest.mark.parametrize("drift", [-1, 1])
def test_one_step_of_drift_is_accepted(secret, drift):
    assert verify_code(secret, code_at(secret, STEP + drift), NOW, None) == STEP + drift


@pytest.mark.parametrize("drift", [-2, 2])
def test_two_steps_of_drift_are_refused(secret, drift):
    code = code_at(secret, STEP + drift)
    if code in {code_at(secret, STEP + d) for d in (-1, 0, 1)}:
        pytest.skip("one-in-a-million collision with a neighbouring step")
    assert verify_code(secret, code, NOW, None) is None


def test_replay_of_the_same_step_is_refused(secret):
    code = code_at(secret, STEP)
    if code == code_at(secret, STEP + 1):
        pytest.skip("one-in-a-million collision with the next step")
    used = verify_code(secret, code, NOW, None)
    assert used == STEP
    assert verify_code(secret, code, NOW + 5, used) is None


def test_older_step_is_refused_after_a_newer_one_was_used(secret):
    used = verify_code(secret, code_at(secret, STEP + 1), NOW, None)
    assert used == STEP + 1
    assert verify_code(secret, code_at(secret, STEP), NOW, used) is None
    assert verify_code(secret, code_at(secret, STEP - 1), NOW, used) is None


def test_next_step_is_accepted_after_the_previous_one(secret):
    assert verify_code(secret, code_at(secret, STEP + 1), NOW + 30, STEP) == STEP + 1


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c[:5],
        lambda c: c + "0",
        lambda c: c[:3] + "a" + c[4:],
        lambda c: f" {c}",
        lambda c: f"{c}\n",
        lambda c: c[:3] + " " + c[3:],
        lambda c: "".join(chr(0x0660 + int(d)) for d in c),
        lambda c: "".join(chr(0xFF10 + int(d)) for d in c),
        lambda c: "",
    ],
)
def test_code_must_be_exactly_six_ascii_digits(secret, mangle):
    assert verify_code(secret, mangle(code_at(secret, STEP)), NOW, None) is None


def test_wrong_code_is_refused(secret):
    code = code_at(secret, STEP)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    if wrong in {code_at(secret, STEP + d) for d in (-1, 0, 1)}:
        pytest.skip("collision")
    assert verify_code(secret, wrong, NOW, None) is None


def test_provisioning_uri_names_issuer_account_and_secret(secret):
    uri = provisioning_uri(secret, "ana+shop@example.com")
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    assert unquote(parsed.path) == "/Agora:ana+shop@example.com"
    query = parse_qs(parsed.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Agora"]


def test_qr_svg_is_a_standalone_svg(secret):
    svg = qr_svg(provisioning_uri(secret, "a@example.com"))
    assert svg.startswith("<svg")
    assert 'xmlns="http://www.w3.org/2000/svg"' in svg
    assert "<?xml" not in svg
    assert svg.rstrip().endswith("</svg>")


def test_recovery_codes_are_unique_well_formed_and_strong():
    codes = new_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    assert RECOVERY_CODE_BITS >= 50
    for code in codes:
        groups = code.split("-")
        assert [len(g) for g in groups] == [4, 4, 2]
        assert not set("".join(groups)) & set("ilou")
    assert len(new_recovery_codes(25)) == 25


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("ab12-cd34-ef", "ab12-cd34-ef"),
        ("  AB12 CD34 EF ", "ab12-cd34-ef"),
        ("ab12cd34ef", "ab12-cd34-ef"),
        ("AB12--CD34-EF\n", "ab12-cd34-ef"),
        ("abI2-cd34-ef", "ab12-cd34-ef"),
        ("a0c1-xyz0-00", "aOcl-xyzo-0O"),
    ],
)
def test_recovery_code_normalisation(typed, stored):
    assert normalise_recovery_code(typed) == normalise_recovery_code(stored)
    assert hash_recovery_code(typed) == hash_recovery_code(stored)


def test_recovery_code_hash_differs_between_codes():
    a, b = new_recovery_codes(2)
    assert hash_recovery_code(a) != hash_recovery_code(b)
    assert len(hash_recovery_code(a)) == 64
    assert normalise_recovery_code(a) == a.replace("-", "")
