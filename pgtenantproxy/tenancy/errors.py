"""The control plane's error tree: one base class, one subclass per kind of failure.

Every message is meant for an operator: it names the shop, server, table or
setting at fault and never contains a password, a key or a connection string.
"""

from __future__ import annotations


class TenancyError(Exception):
    """A control-plane failure an operator can act on."""


class ControlSchemaError(TenancyError):
    """The control schema is missing, newer than this program, or cannot be upgraded."""


class UnknownTenantError(TenancyError):
    """No active credentials are registered for the shop."""

    def __init__(self, shop_id: int) -> None:
        super().__init__(f"shop {shop_id}: no tenant database is registered (provision it first)")
        self.shop_id = shop_id


class PlacementError(TenancyError):
    """No tenant server can take the shop (none configured, or the recorded one is gone)."""


class ProvisioningError(TenancyError):
    """A provisioning or deprovisioning step failed."""


class InjectedFailure(ProvisioningError):
    """The failure a test asked for with ``fail_at``: raised right after the named step."""

    def __init__(self, step: str) -> None:
        super().__init__(f"injected failure after step {step!r}")
        self.step = step


class CloneError(TenancyError):
    """The unified tenant tables use something the schema clone cannot reproduce."""


class MigrationError(TenancyError):
    """Tenant schema migration files are invalid or conflict with what was applied."""


ERROR_TEXT_LIMIT = 2000


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, bounded, for state rows and reports."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 3] + "..."
