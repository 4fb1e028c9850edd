#!/usr/bin/env python3
"""NVFlare 2.7.2's Shareable, DXO and FLContext through its FOBS, on one side of flare.fobs.

Run with the Python of the test-only NVFlare virtualenv (it needs numpy there too):
    VENV/bin/python nvflare_shareable_peer.py dump DIR    writes DIR/<case>.fobs with NVFlare's fobs.dumps
    VENV/bin/python nvflare_shareable_peer.py load DIR    loads every DIR/<case>.fobs with NVFlare's fobs.loads and
                                                          compares it with the case built here
Output as nvflare_fobs_peer.py's: one JSON object per case, {"case": NAME, "ok": bool, "error": str|null}.

build_cases() takes the classes as a namespace and imports nothing from NVFlare, so the flare side of the test
imports this file and builds the very same cases with flare's classes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace


def build_cases(np, api) -> dict:
    """Every case, by name. ``api`` holds Shareable, DXO, DataKind, FLContext, ReturnCode, make_reply, FLModel,
    ParamsType and FLModelUtils, from NVFlare or from flare. The 12 MiB array goes out of band (NVFlare's datum
    threshold is 10 MiB). The FLModelUtils cases check that both sides map an FLModel to the same Shareable."""
    rng = np.random.default_rng(11)
    weights = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "big": rng.standard_normal((1536, 2048)).astype(np.float32),  # 12 MiB
        "b": np.arange(5, dtype=np.int64),
    }
    task = api.DXO(
        api.DataKind.WEIGHTS,
        data=weights,
        meta={"NUM_STEPS_CURRENT_ROUND": 12, "initial_metrics": {"acc": 0.75}},
    ).to_shareable()
    task.set_header("start_round", 0)
    task.set_header("current_round", 2)
    task.set_header("num_rounds", 5)
    task.set_return_code(api.ReturnCode.OK)
    task.add_cookie("round", 2)
    task.set_peer_props({"site": "site-1"})

    peer = api.FLContext()
    peer.set_prop("__identity_name__", "site-1", private=False, sticky=False)
    peer.set_prop("kind", api.DataKind.METRICS, private=False, sticky=True)
    peer.set_prop("secret", [1, 2], private=True, sticky=False)
    reply = api.make_reply(api.ReturnCode.EXECUTION_EXCEPTION, headers={"__task_name__": "train"})
    reply.set_peer_context(peer)

    context = api.FLContext()
    context.set_prop("numbers", {"a": np.float32(0.5), "b": (1, 2)}, private=False)
    context.set_prop("peer", peer, private=True, sticky=False)

    evaluated_diff = api.FLModel(
        params_type=api.ParamsType.DIFF,
        params={"w": weights["w"], "big": weights["big"]},
        metrics={"acc": 0.5},
        current_round=2,
        total_rounds=5,
        meta={"NUM_STEPS_CURRENT_ROUND": 3, "validate_type": "before_train_validate"},
    )
    metrics_only = api.FLModel(metrics={"loss": 0.125}, start_round=None, current_round=1)

    return {
        "task_shareable": task,
        "metrics_dxo": api.DXO(api.DataKind.METRICS, data={"loss": 0.25, "acc": np.float64(0.9)}),
        "collection_dxo": api.DXO(
            api.DataKind.COLLECTION,
            data={
                "model": api.DXO(api.DataKind.WEIGHT_DIFF, data={"w": weights["w"]}, meta={"filter_history": ["q"]}),
                "extra": api.DXO(api.DataKind.APP_DEFINED, data=[1, "two", b"3"]),
            },
        ),
        "plain_str_kind": api.DXO("WEIGHTS", data={"w": weights["b"]}),
        "reply_with_peer_context": reply,
        "fl_context": context,
        "fl_model_utils_params": api.FLModelUtils.to_shareable(evaluated_diff),
        "fl_model_utils_metrics": api.FLModelUtils.to_shareable(metrics_only),
    }


def import_nvflare_apis():
    """NVFlare's fobs with the decomposers its runtime registers at startup (numpy, FLModel, Shareable, DXO,
    FLContext), and the classes the cases use."""
    from nvflare_fobs_peer import import_nvflare_fobs

    fobs, FLModel, ParamsType = import_nvflare_fobs()
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable, make_reply
    from nvflare.apis.utils.decomposers import flare_decomposers
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    flare_decomposers.register()
    api = SimpleNamespace(
        Shareable=Shareable, DXO=DXO, DataKind=DataKind, FLContext=FLContext, ReturnCode=ReturnCode,
        make_reply=make_reply, FLModel=FLModel, ParamsType=ParamsType, FLModelUtils=FLModelUtils,
    )
    return fobs, api


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("dump", "load"):
        print(__doc__, file=sys.stderr)
        return 2
    import numpy as np

    # this runs as a script in NVFlare's interpreter, beside nvflare_fobs_peer; the tests import this module by path
    from nvflare_fobs_peer import exchange

    fobs, api = import_nvflare_apis()
    return exchange(argv[0], Path(argv[1]), fobs, np, build_cases(np, api))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
