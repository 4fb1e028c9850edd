#!/usr/bin/env python3
"""NVFlare 2.7.2's pull downloads (nvflare.fuel.f3.streaming) as a peer for flare's interop tests.

It extends nvflare_peer.py's Peer: same interpreter, roles (--listen / --parent), stdin and signal handling, exit
codes and JSON-lines output; see that docstring. The cell is always NVFlare's streaming Cell, because
"download_service__" is a channel it streams: download requests and replies travel as blobs, each reply on
"return_only".

Owner
  --serve-file PATH [--chunk-size N] [--num-receivers K] [--tx-timeout S]
      ObjectDownloader(cell, S, K) and file_downloader.add_file(PATH, N), then
        {"event": "ref", "ref_id": "R..", "fqcn": "server", "tx_id": "T..", "size": N, "sha256": ".."}
      as each receiver is done with the file (file_downloaded_cb):
        {"event": "file_downloaded", "receiver": "site-1", "status": "success"|"failed"}
      when the transaction ends (transaction_done_cb):
        {"event": "tx_done", "tx_id": "T..", "status": "finished"|"timeout"|"deleted"}
      NVFlare looks at its transactions every 5 s, so tx_done comes up to 5 s after the last receiver finished. With
      K = 0 (receivers unknown, NVFlare's meaning) the transaction can only time out: S seconds without a request.

Receiver
  --download-from FQCN --ref-id RID [--location DIR] [--timeout S]
      waits until FQCN is connected, then file_downloader.download_file(FQCN, RID, S, cell, DIR):
        {"event": "downloaded", "error": null|"..", "path": "..", "size": N, "sha256": "..", "elapsed_ms": ..}
      NVFlare writes into DIR (default: the temp dir) under a fresh name, and leaves the partial file there on error.
      Exit code 1 if the download failed.

--linger counts from tx_done (owner) or downloaded (receiver).
"""

import argparse
import hashlib
import os
import threading
import time

from nvflare_peer import BLOB_TOPIC, DEFAULT_STREAMED_CHANNEL, Peer, comm_env, emit, main


def file_digest(path):
    """(size, sha256 hex) of a file, read in pieces: downloads are large."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                return size, h.hexdigest()
            h.update(block)
            size += len(block)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="NVFlare file download owner or receiver for interop tests")
    p.add_argument("--fqcn", required=True, help="FQCN of this cell, e.g. server or site-1")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--listen", metavar="URL", help="listen on URL (root server cell), e.g. tcp://127.0.0.1:0")
    role.add_argument("--parent", metavar="URL", help="connect to URL as a client/child cell")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve-file", metavar="PATH", help="own PATH and serve it to receivers")
    mode.add_argument("--download-from", metavar="FQCN", help="download --ref-id from this owner")
    p.add_argument("--chunk-size", type=int, default=None, help="owner: bytes per reply (default NVFlare's 5 MiB)")
    p.add_argument("--num-receivers", type=int, default=1, help="owner: receivers expected (default 1; 0 = unknown)")
    p.add_argument("--tx-timeout", type=float, default=60.0, help="owner: idle seconds before the transaction ends")
    p.add_argument("--ref-id", help="receiver: reference id to download")
    p.add_argument("--location", metavar="DIR", default=None, help="receiver: directory for the downloaded file")
    p.add_argument("--timeout", type=float, default=30.0, help="receiver: per-request timeout in seconds")
    p.add_argument(
        "--comm-config",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="NVFlare comm config var, exported as env NVFLARE_<NAME> before NVFlare loads (repeatable)",
    )
    p.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to become ready / see the owner")
    p.add_argument("--linger", type=float, default=None, help="exit this many seconds after the work is done")
    p.add_argument("--ignore-stdin", action="store_true", help="do not exit on stdin EOF")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard limit on total runtime (default 900 s)")
    p.add_argument("--verbose", "-v", action="count", default=0, help="-v: INFO, -vv: DEBUG NVFlare logs")
    args = p.parse_args(argv)
    if args.download_from and not args.ref_id:
        p.error("--download-from needs --ref-id")
    if args.num_receivers < 0:
        p.error("--num-receivers must be >= 0")
    # what nvflare_peer's Peer and main read
    args.comm_env = comm_env(p, args.comm_config)
    args.heartbeat_interval = None
    args.streamed = True
    args.channel = DEFAULT_STREAMED_CHANNEL
    args.blob_topic = BLOB_TOPIC
    return args


class DownloadPeer(Peer):
    def __init__(self, args):
        super().__init__(args)
        self.tx_done = threading.Event()

    def work(self):
        try:
            if self.args.serve_file:
                self.serve()
            else:
                self.download()
        except Exception as ex:
            emit("error", message=f"{type(ex).__name__}: {ex}")
            self.request_exit("failed", 2)

    def serve(self):
        from nvflare.fuel.f3.streaming import file_downloader
        from nvflare.fuel.f3.streaming.obj_downloader import ObjectDownloader

        a = self.args
        size, sha = file_digest(a.serve_file)
        downloader = ObjectDownloader(
            self.cell, timeout=a.tx_timeout, num_receivers=a.num_receivers, transaction_done_cb=self._tx_done_cb
        )
        ref_id = file_downloader.add_file(
            downloader, a.serve_file, chunk_size=a.chunk_size, file_downloaded_cb=self._file_downloaded_cb
        )
        emit("ref", ref_id=ref_id, fqcn=a.fqcn, tx_id=downloader.tx_id, size=size, sha256=sha)
        while not self.tx_done.wait(0.1):
            if self.stop_event.is_set():
                return

    def _file_downloaded_cb(self, to_receiver, status, file_name, **kwargs):
        if to_receiver:  # "" is NVFlare's extra call once every expected receiver is done
            emit("file_downloaded", receiver=to_receiver, status=status)

    def _tx_done_cb(self, tx_id, status, objects, **kwargs):
        emit("tx_done", tx_id=tx_id, status=status)
        self.tx_done.set()

    def download(self):
        from nvflare.fuel.f3.streaming import file_downloader

        a = self.args
        if not self.wait_for_peers([a.download_from]):
            return self.request_exit("peers_missing", 2)
        t0 = time.perf_counter()
        error, path = file_downloader.download_file(
            from_fqcn=a.download_from, ref_id=a.ref_id, per_request_timeout=a.timeout, cell=self.cell,
            location=a.location,
        )
        rec = {"error": error, "path": path, "elapsed_ms": round((time.perf_counter() - t0) * 1000.0, 3)}
        if path and os.path.isfile(path):
            rec["size"], rec["sha256"] = file_digest(path)
        emit("downloaded", **rec)
        if error:
            self.exit_code = 1


if __name__ == "__main__":
    main(parse=parse_args, peer_class=DownloadPeer)
