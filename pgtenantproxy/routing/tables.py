"""Is a table, as written in the SQL, one of the tenant tables?

Names are compared as PostgreSQL stores them (the parser already folded
unquoted identifiers to lower case). An unqualified name is taken to be in
``public`` (the default search_path), so ``orders`` matches ``orders`` and
``public.orders`` in the tenant-table set, and ``public.orders`` matches both
too. A session whose search_path puts another schema first is outside this
assumption (see docs/routing.md).
"""

from __future__ import annotations

from collections.abc import Set

DEFAULT_SCHEMA = "public"


def is_tenant_table(name: str, tenant_tables: Set[str]) -> bool:
    if name in tenant_tables:
        return True
    schema, dot, bare = name.rpartition(".")
    if not dot:
        return f"{DEFAULT_SCHEMA}.{name}" in tenant_tables
    return schema == DEFAULT_SCHEMA and bare in tenant_tables


def is_shadowed(name: str, shadowed: Set[str]) -> bool:
    """Does an unqualified ``name`` refer to one of the session's temporary tables that shadow a tenant
    table (``pg_temp`` comes first in the search_path)?"""
    return "." not in name and name in shadowed
