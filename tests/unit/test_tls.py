"""TLS contexts: one per CA file as it is on disk, reused across reconnects (issue 14)."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from glimpse_edge import tls


def ca_pem(name: str) -> bytes:
    """A self-signed CA certificate named ``name``, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def names(ctx: ssl.SSLContext) -> set[str]:
    """Common names of the private CAs a context trusts (the system's are many)."""
    return {value for cert in ctx.get_ca_certs() for rdn in cert["subject"]
            for key, value in rdn if key == "commonName" and value.startswith("Glimpse test")}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ssl.create_default_context() the module makes, counted."""
    made: list[int] = []
    real = ssl.create_default_context

    def counting(*args: object, **kwargs: object) -> ssl.SSLContext:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tls.ssl, "create_default_context", counting)
    return made


def test_reconnects_share_one_context(tmp_path: Path, counted: list[int]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_pem("Glimpse test CA 1"))
    first = tls.client_context(ca)
    assert all(tls.client_context(ca) is first for _ in range(5))
    assert len(counted) == 1
    assert names(first) == {"Glimpse test CA 1"}
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname


def test_a_changed_ca_file_gets_a_new_context(tmp_path: Path, counted: list[int]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_pem("Glimpse test CA 1"))
    first = tls.client_context(ca)
    # replaced the way a deployment tool does it: a new file renamed over the old
    new = tmp_path / "ca.pem.new"
    new.write_bytes(ca_pem("Glimpse test CA 2"))
    os.replace(new, ca)
    second = tls.client_context(ca)
    assert second is not first and names(second) == {"Glimpse test CA 2"}
    assert tls.client_context(ca) is second
    # edited in place to the same size: the modification time tells
    size = ca.stat().st_size
    same_size = next(pem for pem in (ca_pem("Glimpse test CA 3") for _ in range(100))
                     if len(pem) == size)
    with ca.open("r+b") as f:
        f.write(same_size)
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert names(tls.client_context(ca)) == {"Glimpse test CA 3"}
    assert len(counted) == 3


def test_an_unreadable_ca_file_is_an_error_every_time(tmp_path: Path,
                                                      counted: list[int]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"not a certificate\n")
    for _ in range(2):
        with pytest.raises(ssl.SSLError):
            tls.client_context(ca)
    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            tls.client_context(tmp_path / "absent.pem")
    ca.write_bytes(ca_pem("Glimpse test CA 1"))  # fixed: read, and kept from now on
    assert tls.client_context(ca) is tls.client_context(ca)
    assert len(counted) == 5


def test_the_system_store_alone_is_shared_too(counted: list[int]) -> None:
    assert tls.client_context() is tls.client_context(None)
    assert len(counted) <= 1  # made here, or already by an earlier test


def test_a_fresh_context_for_libraries_that_change_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_pem("Glimpse test CA 1"))
    fresh = tls.new_client_context(ca)
    assert fresh is not tls.client_context(ca) and fresh is not tls.new_client_context(ca)
    assert names(fresh) == {"Glimpse test CA 1"}
