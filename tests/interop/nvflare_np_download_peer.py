#!/usr/bin/env python3
"""NVFlare 2.7.2's numpy downloads (nvflare.app_common.np.np_downloader) as a peer for flare's interop tests.

It extends nvflare_download_peer.py (same roles, stdin and signal handling, JSON-lines output) with arrays instead
of a file. Each array is reported as [dtype, shape, sha256 of its C-order bytes].

Owner
  --serve-arrays SEED [--num-receivers K] [--tx-timeout S]
      ObjectDownloader(cell, S, K) and np_downloader.add_arrays() of a few arrays made from SEED
      (float32, Fortran-ordered float64, int8, bool, empty), then
        {"event": "ref", "ref_id": "..", "fqcn": "server", "arrays": {key: [dtype, shape, sha256]}}
      and when the transaction ends: {"event": "tx_done", "tx_id": "T..", "status": ".."}

Receiver
  --download-from FQCN --ref-id RID [--timeout S]
      np_downloader.download_arrays(FQCN, RID, S, cell):
        {"event": "downloaded", "error": null|"..", "arrays": {key: [dtype, shape, sha256]}}
"""

import hashlib
import sys

from nvflare_download_peer import DownloadPeer
from nvflare_download_peer import parse_args as parse_download_args
from nvflare_peer import emit, main


def describe(arrays):
    import numpy as np

    return {
        k: [str(a.dtype), list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
        for k, a in arrays.items()
    }


def make_arrays(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((300, 129)).astype(np.float32),
        "fc.fortran": np.asfortranarray(rng.standard_normal((40, 30))),
        "embed.int8": rng.integers(-128, 127, size=(1000,), dtype=np.int8),
        "mask": rng.random(17) > 0.5,
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    seed = None
    if "--serve-arrays" in argv:
        at = argv.index("--serve-arrays")
        seed = int(argv[at + 1])
        # the file peer's parser wants one of its modes; the file is never opened
        argv[at : at + 2] = ["--serve-file", "-"]
    args = parse_download_args(argv)
    args.serve_arrays = seed
    return args


class NpDownloadPeer(DownloadPeer):
    def serve(self):
        from nvflare.app_common.np import np_downloader
        from nvflare.fuel.f3.streaming.obj_downloader import ObjectDownloader

        a = self.args
        arrays = make_arrays(a.serve_arrays)
        downloader = ObjectDownloader(
            self.cell, timeout=a.tx_timeout, num_receivers=a.num_receivers, transaction_done_cb=self._tx_done_cb
        )
        ref_id = np_downloader.add_arrays(downloader, arrays)
        emit("ref", ref_id=ref_id, fqcn=a.fqcn, tx_id=downloader.tx_id, arrays=describe(arrays))
        while not self.tx_done.wait(0.1):
            if self.stop_event.is_set():
                return

    def download(self):
        from nvflare.app_common.np import np_downloader

        a = self.args
        if not self.wait_for_peers([a.download_from]):
            return self.request_exit("peers_missing", 2)
        error, arrays = np_downloader.download_arrays(
            from_fqcn=a.download_from, ref_id=a.ref_id, per_request_timeout=a.timeout, cell=self.cell
        )
        emit("downloaded", error=error, arrays=describe(arrays or {}))
        if error:
            self.exit_code = 1


if __name__ == "__main__":
    main(parse=parse_args, peer_class=NpDownloadPeer)
