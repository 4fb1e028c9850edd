"""A numpy training script that marks each phase of its round with a file ``<marker_dir>/<site>.<phase>`` holding
its pid, so that a test can act (abort, kill) while the script is in a given phase:

``started`` after ``flare.init()``, ``receiving`` just before the task data is pulled (``flare.is_running()`` asks
for the next task and pulls its data), ``received``, ``sending`` just before the result goes out (the server then
pulls it), ``sent``."""

import argparse
import os
import time

import numpy as np

import flare.client as flare

parser = argparse.ArgumentParser()
parser.add_argument("--marker_dir", required=True)
parser.add_argument("--train_seconds", type=float, default=0.0)
args = parser.parse_args()


def mark(phase: str) -> None:
    path = os.path.join(args.marker_dir, f"{site}.{phase}")
    with open(path + ".new", "w") as out:
        out.write(str(os.getpid()))
    os.replace(path + ".new", path)  # a test never reads a half-written marker


flare.init()
site = flare.system_info()["site_name"]
mark("started")
while True:
    mark("receiving")
    if not flare.is_running():
        break
    model = flare.receive()
    mark("received")
    time.sleep(args.train_seconds)
    params = {k: v + np.float32(1) for k, v in model.params.items()}
    mark("sending")
    flare.send(flare.FLModel(params=params, meta={"NUM_STEPS_CURRENT_ROUND": 1}))
    mark("sent")
