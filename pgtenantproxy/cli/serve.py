"""``pgtenantproxy serve --config PATH``: run the proxy until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pgtenantproxy.app import serve
from pgtenantproxy.cli.common import add_config_argument, config_from_args


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("serve", help="run the proxy")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.log_level is None:
        logging.getLogger().setLevel(config.logging.level.upper())
    serve(config)
    return 0
