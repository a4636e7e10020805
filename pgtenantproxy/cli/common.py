"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse

from pgtenantproxy.config import Config, ConfigError, load_config


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
