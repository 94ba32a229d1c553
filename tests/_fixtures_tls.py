"""TLS for servers under test: a CA of the test's own and a certificate from it for 127.0.0.1 (trustme)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

__all__ = ["Tls", "tls"]


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def serve_args(self) -> tuple[str, ...]:
        """`fluxedit serve`'s arguments to serve HTTPS with this certificate."""
        return ("--ssl-certfile", str(self.cert_file), "--ssl-keyfile", str(self.key_file))


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files.cert_file))
    cert.private_key_pem.write_to_path(str(files.key_file))
    return files
