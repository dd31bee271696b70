"""The doctor's TLS context for a CA file (doctor/network.tls_context), used by the
server and publish checks alike."""

from __future__ import annotations

import ssl
from pathlib import Path

from glimpse_edge.doctor.network import tls_context
from glimpse_edge.doctor.run import Doctor


def test_a_ca_file_that_cannot_be_loaded_fails_the_check_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    doctor = Doctor(tmp_path / "config.toml")
    assert tls_context(doctor, "publish", "publish.ca_file", bad) is None
    [check] = doctor.checks
    assert (check.name, check.status) == ("publish", "fail")
    assert check.summary.startswith(f"publish.ca_file {bad} cannot be loaded: ")
    assert check.fix == "point publish.ca_file at the CA certificate (PEM)"


def test_without_a_ca_file_it_is_the_system_store(tmp_path: Path) -> None:
    doctor = Doctor(tmp_path / "config.toml")
    context = tls_context(doctor, "server", "server.ca_file", None)
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert doctor.checks == []
