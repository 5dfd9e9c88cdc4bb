"""TLS at the edge without a running system: the HAProxy TLS bind, the joined PEM, and
HAProxy's own check of the config with a self-signed certificate made here."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster import haproxy_edge, infra
from cluster.settings import Settings

MINIMAL = """global
    maxconn 100
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend http_frontend
    bind 127.0.0.1:{plain}
    default_backend app
backend app
    server s1 127.0.0.1:{backend}
"""


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A fresh P-256 key and a certificate for ``name`` and 127.0.0.1 (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_the_tls_bind_goes_into_the_http_frontend_only() -> None:
    config, missing = haproxy_edge.rewrite(
        MINIMAL.format(plain=8000, backend=9000), tls=("127.0.0.1:8443", "/run/tls.pem")
    )
    assert missing == ["side-port binds"]
    frontend = config.split("frontend http_frontend\n", 1)[1].split("\nbackend ", 1)[0]
    binds = [line.strip() for line in frontend.splitlines() if line.strip().startswith("bind")]
    assert binds == [
        "bind 127.0.0.1:8000",
        "bind 127.0.0.1:8443 ssl crt /run/tls.pem alpn http/1.1",
    ]
    assert "set-header X-Forwarded-Proto https if { ssl_fc }" in frontend
    plain, _ = haproxy_edge.rewrite(MINIMAL.format(plain=8000, backend=9000))
    assert "ssl crt" not in plain


def test_the_joined_pem_is_private_and_a_foreign_key_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(var_dir=tmp_path / "var", tls_cert=cert, tls_key=key)
    pem = infra.write_tls_pem(settings)
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    text = pem.read_text()
    assert "BEGIN CERTIFICATE" in text and "BEGIN PRIVATE KEY" in text
    _other_cert, other_key = self_signed(tmp_path, "other")
    with pytest.raises(ValueError, match="not the key"):
        infra.write_tls_pem(Settings(var_dir=tmp_path / "var", tls_cert=cert, tls_key=other_key))
    with pytest.raises(ValueError, match="both"):
        infra.write_tls_pem(Settings(var_dir=tmp_path / "var", tls_cert=cert))


def test_ray_env_carries_the_tls_bind_or_refuses_without_haproxy(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(var_dir=tmp_path / "var", tls_cert=cert, tls_key=key, tls_port=9443)
    infra.ensure_dirs(settings)
    if Path(infra.haproxy_binary()).exists():
        env = infra.ray_env(settings)
        assert env[haproxy_edge.TLS_BIND_ENV] == "127.0.0.1:9443"
        assert Path(env[haproxy_edge.TLS_PEM_ENV]).exists()
    no_proxy = Settings(var_dir=tmp_path / "var", tls_cert=cert, tls_key=key, haproxy=False)
    with pytest.raises(ValueError, match="needs HAProxy"):
        infra.ray_env(no_proxy)
    assert haproxy_edge.TLS_BIND_ENV not in infra.ray_env(Settings(var_dir=tmp_path / "var"))


@pytest.mark.skipif(not shutil.which("haproxy", path="/usr/sbin"), reason="no haproxy here")
def test_haproxy_accepts_the_tls_config(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    pem = infra.write_tls_pem(Settings(var_dir=tmp_path / "var", tls_cert=cert, tls_key=key))
    config, _ = haproxy_edge.rewrite(
        MINIMAL.format(plain=18000, backend=19000), tls=("127.0.0.1:18443", str(pem))
    )
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run(
        ["/usr/sbin/haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_make_run_can_make_its_own_self_signed_certificate(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", tls_self_signed=True)
    infra.ensure_dirs(settings)
    cert, key = infra.self_signed_certificate(settings.run_dir)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # Kept while valid (the same file on every `agora up`), so clients can pin it once.
    assert infra.self_signed_certificate(settings.run_dir) == (cert, key)
    assert cert.read_bytes() == infra.self_signed_certificate(settings.run_dir)[0].read_bytes()
    if Path(infra.haproxy_binary()).exists():
        env = infra.ray_env(settings)
        assert Path(env[haproxy_edge.TLS_PEM_ENV]).read_bytes().startswith(cert.read_bytes())
