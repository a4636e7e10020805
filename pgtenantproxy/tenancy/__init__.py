"""The tenancy control plane: tenant databases, their credentials, and their schema.

State lives in the ``pgtenantproxy`` control schema of the unified database
(:mod:`.control_schema`). :class:`~.service.TenancyService` is the entry point;
the routing layer gets a shop's credentials with
``await service.credentials(shop_id)`` (or ``service.registry.get``), a
:class:`~.registry.TenantCredentials` whose repr masks the password.

Modules: ``crypto`` (AES-256-GCM keyring), ``registry`` (encrypted credentials,
TTL cache, rotation), ``servers`` (tenant servers, placement), ``schema_clone``
and ``schema_model`` (tenant schema from the unified catalog), ``tenant_objects``
(role/database/grants on a tenant server), ``provisioning``, ``schema_migrations``,
``hardening``, ``passwords`` (SCRAM verifiers), ``sql`` (quoting).
"""

from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.registry import ConnectionRegistry, TenantCredentials, connect_tenant
from pgtenantproxy.tenancy.service import TenancyService

__all__ = ["ConnectionRegistry", "TenancyError", "TenancyService", "TenantCredentials", "connect_tenant"]
