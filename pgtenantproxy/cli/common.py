"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg

from pgtenantproxy.config import Config, ConfigError, load_config
from pgtenantproxy.tenancy.crypto import EncryptionKeyError

T = TypeVar("T")


class CommandError(Exception):
    """An operator-facing failure: printed as one line, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default="config.toml", help="path to config.toml (default: ./config.toml)"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CommandError(str(exc), status=2) from None


async def open_control_plane(config: Config, opening: Awaitable[T]) -> T:
    """Await a control-plane service's ``open``; a missing key or an unreachable
    unified database becomes a one-line CommandError (exit 2) naming where and as whom."""
    try:
        return await opening
    except EncryptionKeyError as exc:
        raise CommandError(str(exc), status=2) from None
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        u = config.unified
        raise CommandError(
            f"cannot open the control plane on the unified database {u.database} at {u.host}:{u.port} "
            f"as {u.admin_user}: {exc}",
            status=2,
        ) from None
