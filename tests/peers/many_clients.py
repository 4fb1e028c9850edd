"""Several light federated clients in one process, each with its own cell and connection, for the scale tests.

Starts sites ``--prefix<first>`` .. ``--prefix<first+count-1>`` against ``--server`` and prints
``{"event": "ready", "pid": ...}`` once all registered. Sites named in ``--silent`` never acknowledge a job
deployment (their handler blocks), as a client stuck at start-job would. Stops when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

from flare.cellnet import Message
from flare.config import RuntimeSettings
from flare.runtime.client import FederatedClient


class SilentClient(FederatedClient):
    """Registers and beats, but never answers a deployment."""

    def _on_deploy(self, msg: Message) -> Any:
        self.closed.wait()
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="site-")
    parser.add_argument("--silent", default="", help="comma-separated site names")
    parser.add_argument("--sites-on-host", type=int, default=1)
    args = parser.parse_args()
    silent = set(filter(None, args.silent.split(",")))
    # light clients: few callback threads each, so that a hundred of them fit a small machine
    settings = RuntimeSettings.from_config({"callback_pool_size": 2})
    clients = []
    starters = []
    for number in range(args.first, args.first + args.count):
        name = f"{args.prefix}{number}"
        kind = SilentClient if name in silent else FederatedClient
        client = kind(name, args.server, os.path.join(args.workspace, name), settings=settings,
                      sites_on_host=args.sites_on_host)
        clients.append(client)
        starters.append(threading.Thread(target=client.start, daemon=True))
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join()
    print(json.dumps({"event": "ready", "pid": os.getpid()}), flush=True)
    sys.stdin.read()
    for client in clients:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
