"""Hello, cells: a server cell and two client cells, each in its own process, exchanging requests.

    python examples/hello-cellnet/run.py

The server answers "greet" requests; each client greets the server, then greets the other client through the
server, which relays the request. Until the federated-job layer lands, this is what `make run` shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from flare.cellnet import Cell, Message


def greet_handler(cell: Cell):
    def greet(request: Message) -> bytes:
        return f"hello {bytes(request.payload).decode()}, this is {cell.fqcn}".encode()

    return greet


def run_server() -> int:
    with Cell("server", listen="tcp://127.0.0.1:0") as server:
        server.register_request_cb("hello", "greet", greet_handler(server))
        print(json.dumps({"url": server.url}), flush=True)
        sys.stdin.read()  # serve until the launcher closes our stdin
    return 0


def run_client(name: str, url: str, other: str) -> int:
    with Cell(name, parent_url=url) as client:
        client.register_request_cb("hello", "greet", greet_handler(client))
        if not client.wait_for_peer("server", 10):
            print(f"[{name}] could not reach the server at {url}", flush=True)
            return 1
        for target in ("server", other):
            deadline = time.monotonic() + 10
            while True:  # the other client may not have joined yet
                reply = client.request(target, "hello", "greet", name.encode(), timeout=5)
                if reply.ok or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            status = bytes(reply.payload).decode() if reply.ok else f"failed: {reply.return_code} {reply.error}"
            print(f"[{name}] -> {target}: {status}", flush=True)
            if not reply.ok:
                return 1
        time.sleep(1)  # stay reachable while the other client greets us
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "server":
        return run_server()
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return run_client(*sys.argv[2:5])
    server = subprocess.Popen([sys.executable, __file__, "server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        url = json.loads(server.stdout.readline())["url"]
        print(f"server cell listening at {url}")
        clients = [
            subprocess.Popen([sys.executable, __file__, "client", name, url, other])
            for name, other in (("site-1", "site-2"), ("site-2", "site-1"))
        ]
        codes = [c.wait(timeout=60) for c in clients]
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    print("done" if not any(codes) else f"failed: exit codes {codes}")
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
