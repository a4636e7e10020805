"""The ``pgtenantproxy`` command line: one module per command group.

Each command module exposes ``register(subparsers)``, which adds its
sub-commands with ``set_defaults(func=...)``; ``func(args)`` returns the exit
status. Errors meant for the operator are raised as :class:`CommandError`
and printed without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pgtenantproxy import __version__
from pgtenantproxy.cli import (
    backfill,
    cutover,
    demo,
    dualwrite,
    phase,
    reads,
    reference,
    restore,
    retire,
    serve,
    status,
    tenancy,
    verify,
)
from pgtenantproxy.cli.common import CommandError

COMMANDS = (serve, demo, tenancy, reads, dualwrite, backfill, verify, cutover, phase, retire, restore,
            reference, status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgtenantproxy",
        description="Transparent PostgreSQL proxy that moves a multi-tenant database "
        "to one database per tenant.",
    )
    parser.add_argument("--version", action="version", version=f"pgtenantproxy {__version__}")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=(args.log_level or "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"pgtenantproxy: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
