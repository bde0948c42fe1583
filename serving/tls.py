"""HTTPS for the prediction service: the certificate settings, checked before Granian starts.

Granian's ``Server`` loads the pair with Python's ``ssl`` when it is built (a bad file is a traceback there), and
its Rust workers load the key again (a key they cannot read is a worker that panics at boot). Loading the pair
here first turns every bad input (a variable without its partner, a missing or unreadable file, not PEM, a key of
another certificate, an encrypted key, a key other users may read) into one line naming the variable and the file,
and a non-zero exit.
"""

from __future__ import annotations

import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.settings import ServingSettings

CERT_VAR = "TESSERA_SERVING__TLS_CERTIFICATE"
KEY_VAR = "TESSERA_SERVING__TLS_KEY"


class TLSSettingsError(ValueError):
    """HTTPS settings that cannot work; the message is one line and never holds the key."""


@dataclass(frozen=True)
class TLSFiles:
    """What Granian serves HTTPS with."""

    certificate: Path
    key: Path

    def granian_options(self) -> dict[str, Any]:
        """``granian.server.Server`` keywords."""
        return {"ssl_cert": self.certificate, "ssl_key": self.key}


def tls_files(serving: ServingSettings) -> TLSFiles | None:
    """The checked certificate and key, or None when HTTPS is not asked for; ``TLSSettingsError`` otherwise."""
    cert, key = serving.tls_certificate, serving.tls_key
    if cert is None and key is None:
        return None
    if key is None:
        raise TLSSettingsError(f"{CERT_VAR} is set without {KEY_VAR}: HTTPS needs the certificate's private key")
    if cert is None:
        raise TLSSettingsError(f"{KEY_VAR} is set without {CERT_VAR}: HTTPS needs the certificate too")
    _read(cert, CERT_VAR)
    key_text = _read(key, KEY_VAR)
    if key.stat().st_mode & stat.S_IRWXO:
        raise TLSSettingsError(f"{KEY_VAR}: other users may read {key}: make it readable by the service only (0600)")
    if "ENCRYPTED" in key_text:
        raise TLSSettingsError(
            f"{KEY_VAR}: {key} is encrypted, which Granian cannot load: give it unencrypted, readable by the service "
            "only (0600, or a Kubernetes Secret)"
        )
    _check_pair(cert, key)
    return TLSFiles(cert, key)


def _read(path: Path, variable: str) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        raise TLSSettingsError(f"{variable}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _check_pair(cert: Path, key: Path) -> None:
    """Load the pair as a TLS server would; a failure becomes what to fix."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=str(cert))
    except ssl.SSLError:
        raise TLSSettingsError(f"{CERT_VAR}: {cert} holds no PEM certificate") from None
    try:
        # A callable, not None: with None OpenSSL would prompt on the terminal if the key wanted a password.
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except ssl.SSLError as exc:
        if "MISMATCH" in (exc.reason or "").upper():
            raise TLSSettingsError(f"{KEY_VAR}: {key} is not the key of the certificate in {cert}") from None
        raise TLSSettingsError(f"{KEY_VAR}: {key} holds no usable PEM private key ({exc.reason}).") from None
