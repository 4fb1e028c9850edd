"""NVFlare 2.7.2's numpy downloads against ours, both directions, through ``tests/interop/nvflare_np_download_peer.py``:
NVFlare's ``download_arrays`` pulling from our ``add_arrays``, and ours from NVFlare's ``add_arrays``.

Torch tensors are not tested against NVFlare: its ``TensorDownloadable`` needs torch and safetensors in the NVFlare
venv. Our safetensors items are checked byte for byte against the safetensors package in ``test_tensors_codec.py``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from flare.app_common.np.np_downloader import ArrayDownloader, add_arrays, download_arrays
from flare.cellnet import Cell
from conftest import ROOT

PEER = str(ROOT / "tests" / "interop" / "nvflare_np_download_peer.py")


def describe(arrays):
    return {
        k: [str(a.dtype), list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
        for k, a in arrays.items()
    }


def test_nvflare_downloads_arrays_from_our_owner(peers, nvflare_python):
    rng = np.random.default_rng(3)
    arrays = {
        "conv.weight": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
        "fc.t": rng.standard_normal((128, 40)).T,  # strided: C order on the wire
        "fc.fortran": np.asfortranarray(rng.standard_normal((20, 30))),
        "big.endian": np.arange(100, dtype=">i4"),
        "steps": np.array(12, dtype=np.int64),
        "empty": np.zeros((0, 4), dtype=np.float16),
    }
    server = Cell("server", listen="tcp://127.0.0.1:0").start()
    try:
        downloader = ArrayDownloader(server, timeout=60, num_receivers=1)
        ref_id = add_arrays(downloader, arrays, max_chunk_size=16 * 1024)
        nv = peers([str(nvflare_python), PEER, "--fqcn", "site-1", "--parent", server.url,
                    "--download-from", "server", "--ref-id", ref_id, "--timeout", "30", "--linger", "30"])
        got = nv.expect("downloaded", timeout=120)
        assert got["error"] is None, got
        assert got["arrays"] == describe(arrays)
        outcome = downloader.wait(30)
        assert outcome is not None and outcome.status == "finished"
        assert [(r.receiver, r.status) for r in outcome.receivers] == [("site-1", "success")]
    finally:
        server.close()


@pytest.mark.parametrize("receivers", [1, 2])
def test_we_download_arrays_from_an_nvflare_owner(peers, nvflare_python, receivers):
    nv = peers([str(nvflare_python), PEER, "--fqcn", "server", "--listen", "tcp://127.0.0.1:0",
                "--serve-arrays", "5", "--num-receivers", str(receivers), "--tx-timeout", "60", "--linger", "30"])
    url = nv.expect("ready")["url"]
    ref = nv.expect("ref")
    cells = [Cell(f"site-{i}", parent_url=url).start() for i in range(1, receivers + 1)]
    try:
        for cell in cells:
            assert cell.wait_for_peer("server", 10)
            error, arrays = download_arrays("server", ref["ref_id"], 30, cell)
            assert error is None
            assert describe(arrays) == ref["arrays"]
            assert arrays["fc.fortran"].flags.f_contiguous
        # NVFlare looks at its transactions every 5 s
        assert nv.expect("tx_done", timeout=30)["status"] == "finished"
    finally:
        for cell in cells:
            cell.close()
