"""Server and client processes: ``python -m flare.runtime server|client ...`` (PocEnv starts them)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from flare.recipe.logs import configure_console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flare.runtime")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server", help="run a federated server")
    server.add_argument("--workspace", required=True)
    server.add_argument("--listen", default="tcp://127.0.0.1:0")
    server.add_argument("--url-file", help="write the URL clients connect to into this file")
    client = sub.add_parser("client", help="run a site's client")
    client.add_argument("--name", required=True)
    client.add_argument("--server", required=True, help="the server's URL")
    client.add_argument("--workspace", required=True)
    client.add_argument("--sites-on-host", type=int, default=1, help="sites sharing this machine's CPU threads")
    for p in (server, client):
        p.add_argument("--log-config", default="full")
    args = parser.parse_args(argv)
    configure_console(args.log_config)
    stop = threading.Event()
    started = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        if not started.is_set():
            # still connecting or registering (which may take registration_timeout): nothing to shut down yet
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.role == "server":
        from flare.runtime.server import FederatedServer

        node = FederatedServer(args.workspace, listen=args.listen)
        url = node.start()
        if args.url_file:
            tmp = Path(args.url_file + ".tmp")
            tmp.write_text(url)
            os.replace(tmp, args.url_file)
        ends = [node.closed, node.shutdown_requested]
    else:
        from flare.runtime.client import FederatedClient

        node = FederatedClient(args.name, args.server, args.workspace, sites_on_host=args.sites_on_host)
        node.start()
        ends = [node.closed]
    started.set()
    while not stop.wait(0.2) and not any(end.is_set() for end in ends):
        pass
    logging.getLogger(__name__).info("shutting down")
    node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
