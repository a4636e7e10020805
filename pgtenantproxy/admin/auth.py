"""Bearer-token authentication of the admin API.

The token(s) come from the environment variable named by ``[admin]
token_env`` (never from the config file): either one token, or named tokens
``alice:TOKEN1,bob:TOKEN2`` so the audit log says who acted. A request's
``Authorization: Bearer ...`` is compared with every configured token in
constant time (``hmac.compare_digest`` over SHA-256 digests, every token
checked, so neither the length nor the position of a match leaks).

Without any token the API is open, which :func:`check_exposure` allows only
on a loopback address: on any other address the proxy refuses to start.
Tokens are never logged; an unnamed token is identified in the audit log by
the first 8 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from pgtenantproxy.config import AdminSection, is_loopback, parse_listen

MIN_TOKEN_LENGTH = 16


class AdminConfigError(ValueError):
    """The admin API cannot start safely as configured."""


@dataclass(frozen=True)
class Token:
    name: str
    digest: bytes = field(repr=False)


@dataclass(frozen=True)
class TokenSet:
    tokens: tuple[Token, ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.tokens)

    @classmethod
    def parse(cls, raw: str, *, variable: str = "token") -> TokenSet:
        raw = raw.strip()
        if not raw:
            return cls()
        entries = [e.strip() for e in raw.split(",")] if "," in raw or _named(raw) else [raw]
        tokens = []
        for entry in entries:
            name, secret = entry.split(":", 1) if _named(entry) else ("", entry)
            if len(secret) < MIN_TOKEN_LENGTH:
                raise AdminConfigError(
                    f"{variable}: every token must be at least {MIN_TOKEN_LENGTH} characters"
                )
            digest = hashlib.sha256(secret.encode()).digest()
            tokens.append(Token(name or "token-" + digest.hex()[:8], digest))
        return cls(tuple(tokens))

    def identify(self, header: str | None) -> str | None:
        """The caller's identity for a valid ``Authorization`` header, else None."""
        if not header or not header.startswith("Bearer "):
            return None
        offered = hashlib.sha256(header[len("Bearer "):].strip().encode()).digest()
        found: str | None = None
        for token in self.tokens:  # no early exit: every token is compared
            if hmac.compare_digest(offered, token.digest):
                found = token.name
        return found


def _named(entry: str) -> bool:
    name, sep, _ = entry.partition(":")
    return bool(sep) and name.replace("-", "").replace("_", "").isalnum()


def load_tokens(section: AdminSection, environ: Mapping[str, str] | None = None) -> TokenSet:
    env = os.environ if environ is None else environ
    return TokenSet.parse(env.get(section.token_env, ""), variable=section.token_env)


def check_exposure(section: AdminSection, tokens: TokenSet) -> None:
    """Refuse an open admin API on a non-loopback address."""
    host, _ = parse_listen(section.listen)
    if not tokens.required and not is_loopback(host):
        raise AdminConfigError(
            f"[admin] listen: {section.listen} is not a loopback address and {section.token_env} "
            "holds no token: refusing to expose an unauthenticated admin API"
        )
