"""Control-plane connections (asyncpg, admin role) and the placement of new shops.

:class:`TenantServer` wraps one ``[[tenant_servers]]`` entry; the admin password
is read from the environment variable the entry names, when a connection is
opened, and never kept in a repr. :func:`unified_pool` opens the control-plane
pool on the unified database. :func:`choose_server` is the placement policy, a
pure function of the servers, the shop and the current tenant counts:

* ``fewest_tenants``: the server with the fewest live tenants (ties: config order);
* ``hash``: a stable hash of the shop id (SHA-256, so it is the same on every
  machine and Python version) modulo the number of servers. Adding a server
  moves no existing shop: the registry remembers where each shop lives.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from pgtenantproxy.config import Config, TenantServerSection, UnifiedSection
from pgtenantproxy.net.connect import upstream_tls_context
from pgtenantproxy.tenancy.errors import PlacementError

APPLICATION_NAME = "pgtenantproxy-control"


def asyncpg_ssl(cfg: UnifiedSection | TenantServerSection) -> bool | str | ssl.SSLContext:
    """asyncpg's ``ssl`` argument for a configured ``sslmode``."""
    if cfg.sslmode == "disable":
        return False
    if cfg.sslmode == "prefer":
        return "prefer"
    ctx = upstream_tls_context(cfg)
    assert ctx is not None
    return ctx


class TenantServer:
    """A PostgreSQL server that hosts shop databases."""

    def __init__(self, section: TenantServerSection) -> None:
        self.section = section

    @property
    def name(self) -> str:
        return self.section.name or f"{self.section.host}:{self.section.port}"

    @property
    def host(self) -> str:
        return self.section.host

    @property
    def port(self) -> int:
        return self.section.port

    @property
    def admin_user(self) -> str:
        return self.section.admin_user

    def __repr__(self) -> str:
        return f"TenantServer(name={self.name!r}, host={self.host!r}, port={self.port})"

    def connect_kwargs(self, database: str = "postgres") -> dict[str, Any]:
        """asyncpg.connect arguments for the admin role (hold a password: never log them)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.admin_user,
            "password": self.section.admin_password,
            "database": database,
            "ssl": asyncpg_ssl(self.section),
            "timeout": self.section.connect_timeout_ms / 1000,
            "server_settings": {"application_name": APPLICATION_NAME},
        }

    async def connect(self, database: str = "postgres") -> asyncpg.Connection:
        """An admin connection to ``database`` on this server."""
        return await asyncpg.connect(**self.connect_kwargs(database))


class ServerDirectory:
    """The configured tenant servers, by name, in config order."""

    def __init__(self, sections: Sequence[TenantServerSection]) -> None:
        self.servers = [TenantServer(s) for s in sections]
        self._by_name = {s.name: s for s in self.servers}

    def __iter__(self) -> Any:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    def get(self, name: str) -> TenantServer:
        try:
            return self._by_name[name]
        except KeyError:
            raise PlacementError(
                f"tenant server {name!r} is not in [[tenant_servers]] (known: {', '.join(self._by_name)})"
            ) from None


def choose_server(
    servers: Sequence[TenantServer], policy: str, shop_id: int, counts: Mapping[str, int]
) -> TenantServer:
    """Where a new shop goes."""
    if not servers:
        raise PlacementError("no [[tenant_servers]] are configured: nowhere to provision shops")
    if policy == "hash":
        digest = hashlib.sha256(str(shop_id).encode()).digest()
        return servers[int.from_bytes(digest[:8], "big") % len(servers)]
    if policy == "fewest_tenants":
        return min(servers, key=lambda s: counts.get(s.name, 0))  # min() keeps the first of ties
    raise PlacementError(f"unknown placement policy {policy!r}")


def unified_connect_kwargs(config: Config) -> dict[str, Any]:
    """asyncpg arguments for the control-plane role on the unified database."""
    u = config.unified
    return {
        "host": u.host,
        "port": u.port,
        "user": u.admin_user,
        "password": u.admin_password,
        "database": u.database,
        "ssl": asyncpg_ssl(u),
        "timeout": u.connect_timeout_ms / 1000,
        "server_settings": {"application_name": APPLICATION_NAME},
    }


async def unified_pool(config: Config, *, max_size: int) -> asyncpg.Pool:
    """The control-plane pool on the unified database."""
    pool = await asyncpg.create_pool(min_size=1, max_size=max_size, **unified_connect_kwargs(config))
    assert pool is not None
    return pool
