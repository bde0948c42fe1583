"""The one API key check, shared by the fast path (``serving.fast_path``) and the Litestar app
(``serving.security``): which key a request carries, whether it may use a scope, whether its rate limit admits it.

The key travels as ``Authorization: Bearer <key>`` (RFC 6750) and nowhere else: one standard header that
Prometheus (``authorization.credentials_file``), HTTP clients and proxies know, and that proxies and tracing
tools redact by default; no query parameter (URLs end up in logs). The check costs a header scan and a dict lookup
of the header's value as sent; the first time a value is seen, parsing it and one SHA-256, in memory
(``shardctl.store.key_ring``); never a catalog round trip.

The fast path never renders a refusal: a request it cannot admit goes on to the Litestar route, which checks
again and answers the problem detail (401, 403, 429). What it already decided travels in the scope (a client
cannot set scope keys): ``ADMITTED`` (the key, its token already taken, so the route takes none) and ``LIMITED``
(the seconds a refused key must wait).
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.rate_limit import RateLimiter
from shardctl.store.api_keys import ApiKey
from shardctl.store.key_ring import KeyRing

ADMITTED = "tessera.admitted"
LIMITED = "tessera.retry_after"
_BEARER = b"bearer "


def authorization_of(headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> bytes | None:
    """A request's ``Authorization`` header (ASGI names are lower-case), or None."""
    for name, value in headers:
        if name == b"authorization":
            return value
    return None


@dataclass
class Gate:
    """A worker's key table and its share of the rate limits."""

    keys: KeyRing
    limiter: RateLimiter

    def admit_known(self, authorization: bytes | None) -> ApiKey | None:
        """The common case in one step: the key of an ``Authorization`` value verified before, its request
        admitted by a token of this worker's lease (spent). None: ask ``key_of_authorization`` and the limiter."""
        if authorization is None:
            return None
        key = self.keys.recalled.get(authorization)  # KeyRing.recall without the call: this runs on every request
        return key if key is not None and self.limiter.spend(key) else None

    def key_of(self, headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> ApiKey | None:
        """The active key the request carries, or None (none, malformed, unknown, revoked)."""
        return self.key_of_authorization(authorization_of(headers))

    def key_of_authorization(self, authorization: bytes | None) -> ApiKey | None:
        """The active key of an ``Authorization`` header's value: ``Bearer <key>`` (the scheme in any case)."""
        if authorization is None:
            return None
        known = self.keys.recall(authorization)  # the common case: this value was verified before
        if known is not None or authorization[:7].lower() != _BEARER:
            return known
        return self.keys.verify(authorization[7:].strip(), sent=authorization)

    async def close(self) -> None:
        self.keys.stop()
        await self.limiter.close()
