"""The local stack's TLS (``shardctl stack up --tls``): one CA and one server certificate per stack, made once.

Every server of the stack listens on 127.0.0.1 and shares one certificate naming ``127.0.0.1`` and ``localhost``;
clients verify it (``sslmode=verify-full sslrootcert=<tls>/ca.crt``, written into every DSN of the settings
file). The CA's key signs that certificate and is then dropped: nothing on disk can mint another certificate
the stack's clients would trust. The folder lives under the servers' root (``<pg_root>/tls``, the server user's,
0700 above it), so the servers can read the CA too (resharding's subscriptions connect with the same DSNs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shardctl.stack.certificates import issue_server, new_authority, write_certificate, write_private_key
from shardctl.stack.users import chown_tree

HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class StackTLS:
    """Where the stack's CA certificate and its servers' certificate and key are."""

    root: Path

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    @property
    def cert_file(self) -> Path:
        return self.root / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.root / "server.key"

    def ensure(self, user: str | None) -> StackTLS:
        """Make the CA and the server certificate if they are missing (idempotent); the key is 0600 and, like the
        folder, the server user's."""
        if all(p.exists() for p in (self.ca_file, self.cert_file, self.key_file)):
            return self
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        authority = new_authority("Tessera local stack CA")
        server = issue_server(authority, HOSTS)
        write_private_key(self.key_file, server.key)
        write_certificate(self.cert_file, server.pem)
        write_certificate(self.ca_file, authority.pem)  # last: its presence means the set is complete
        chown_tree(self.root, user)
        return self
