"""A numpy training script for the runtime tests: each site adds its own offset and reports how many steps it ran,
so that the server's weighted mean can be checked exactly. Optional marker files let a test act mid-round."""

import argparse
import os
import time

import numpy as np

import flare.client as flare

parser = argparse.ArgumentParser()
parser.add_argument("--marker_dir", default="")
parser.add_argument("--pause", type=float, default=0.0)
parser.add_argument("--fail_round", type=int, default=-1)
args = parser.parse_args()

flare.init()
site = flare.system_info()["site_name"]
index = int(site.rsplit("-", 1)[1])
while flare.is_running():
    model = flare.receive()
    if args.marker_dir:
        with open(os.path.join(args.marker_dir, f"{site}.round{model.current_round}"), "w") as out:
            out.write(str(os.getpid()))
    if model.current_round == args.fail_round:
        raise RuntimeError(f"{site} fails on purpose in round {model.current_round}")
    time.sleep(args.pause)
    params = {k: v + np.float32(index) for k, v in model.params.items()}
    flare.send(flare.FLModel(params=params, metrics={"loss": float(index)},
                             meta={"NUM_STEPS_CURRENT_ROUND": index}))
