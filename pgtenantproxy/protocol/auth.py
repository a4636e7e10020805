"""Client-side authentication, sans-IO: the proxy's own logins to tenant servers.

Feed each ``AuthenticationXXX`` request to :meth:`ClientAuth.respond`; it returns
the bytes to send back (a PasswordMessage, SASLInitialResponse or SASLResponse),
or ``None`` when no answer is due. SCRAM-SHA-256 uses scramp; the server's final
signature is verified, so a server that does not know the password cannot fake
success. The password is held only for the exchange and never shown in a repr.
"""

from __future__ import annotations

import hashlib

import scramp

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol import errors
from pgtenantproxy.protocol.errors import ProxyError
from pgtenantproxy.protocol.messages import Authentication, frame

_SCRAM = "SCRAM-SHA-256"


class AuthFailed(ProxyError):
    def __init__(self, message: str) -> None:
        super().__init__(errors.INVALID_AUTHORIZATION, message)


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """PostgreSQL's md5 response: 'md5' + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode()


def _password_message(payload: bytes) -> bytes:
    return frame(c.PASSWORD, payload + b"\x00")


class ClientAuth:
    """Answers a server's authentication requests for one login."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self._password = password
        self._scram: scramp.ScramClient | None = None

    def __repr__(self) -> str:
        return f"ClientAuth(user={self.user!r}, password=***)"

    def respond(self, auth: Authentication) -> bytes | None:
        code = auth.code
        if code == c.AUTH_OK:
            return None
        if code == c.AUTH_CLEARTEXT:
            return _password_message(self._password.encode())
        if code == c.AUTH_MD5:
            return _password_message(md5_password(self.user, self._password, auth.payload[:4]))
        if code == c.AUTH_SASL:
            return self._sasl_start(auth)
        if code == c.AUTH_SASL_CONTINUE:
            return self._sasl_continue(auth)
        if code == c.AUTH_SASL_FINAL:
            self._sasl_final(auth)
            return None
        raise AuthFailed(f"pgtenantproxy: unsupported authentication method (request code {code})")

    def _sasl_start(self, auth: Authentication) -> bytes:
        if _SCRAM not in auth.sasl_mechanisms():
            raise AuthFailed("pgtenantproxy: server offers no supported SASL mechanism")
        self._scram = scramp.ScramClient([_SCRAM], self.user, self._password)
        first = self._scram.get_client_first().encode()
        payload = _SCRAM.encode() + b"\x00" + len(first).to_bytes(4, "big") + first
        return frame(c.PASSWORD, payload)

    def _sasl_continue(self, auth: Authentication) -> bytes:
        if self._scram is None:
            raise AuthFailed("pgtenantproxy: unexpected SASL continue")
        try:
            self._scram.set_server_first(auth.payload.decode())
        except (scramp.ScramException, UnicodeDecodeError) as exc:
            raise AuthFailed(f"pgtenantproxy: SCRAM exchange failed: {exc}") from None
        return frame(c.PASSWORD, self._scram.get_client_final().encode())

    def _sasl_final(self, auth: Authentication) -> None:
        if self._scram is None:
            raise AuthFailed("pgtenantproxy: unexpected SASL final")
        try:
            self._scram.set_server_final(auth.payload.decode())
        except (scramp.ScramException, UnicodeDecodeError):
            raise AuthFailed("pgtenantproxy: the server's SCRAM signature is invalid") from None
