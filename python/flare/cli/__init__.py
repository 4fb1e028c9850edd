"""The ``flare`` command."""

from __future__ import annotations

import argparse
import logging
from flare.cli import transfer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flare", description="flare command line")
    commands = parser.add_subparsers(dest="command", required=True)
    transfer.add_commands(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)
