"""Tenant role passwords: generated at random, handed to PostgreSQL as SCRAM verifiers.

``CREATE ROLE ... PASSWORD`` and ``ALTER ROLE ... PASSWORD`` cannot take bind
parameters. Rather than splice the plaintext into the statement (where
``log_statement`` or ``pg_stat_statements`` could keep it), the control plane
computes the ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``
verifier itself and sends that: PostgreSQL stores a verifier as given, and the
plaintext never travels in SQL. The verifier only holds base64 characters,
``$`` and ``:``, and is still quoted with :func:`~pgtenantproxy.sqltext.literal`.
"""

from __future__ import annotations

import base64
import secrets

import scramp

from pgtenantproxy.sqltext import ident, literal

ITERATIONS = 4096
SALT_BYTES = 16
PASSWORD_BYTES = 32  # 256 bits of entropy, 43 URL-safe characters


def generate_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def scram_verifier(password: str, *, iterations: int = ITERATIONS) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password."""
    mechanism = scramp.ScramMechanism("SCRAM-SHA-256")
    salt, stored_key, server_key, count = mechanism.make_auth_info(
        password, iteration_count=iterations, salt=secrets.token_bytes(SALT_BYTES)
    )

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${count}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def create_role_sql(role: str, password: str) -> str:
    """A login role with no privileges beyond logging in."""
    return (
        f"CREATE ROLE {ident(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
        f"NOREPLICATION NOBYPASSRLS PASSWORD {literal(scram_verifier(password))}"
    )


def alter_role_password_sql(role: str, password: str) -> str:
    return f"ALTER ROLE {ident(role)} PASSWORD {literal(scram_verifier(password))}"
