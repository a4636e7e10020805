"""pgtenantproxy: a transparent PostgreSQL proxy that moves a multi-tenant
database to one database per tenant with zero downtime."""

__version__ = "0.1.0"
