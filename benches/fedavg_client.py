"""The training script of ``bench_fedavg.py``: trains like a memory-careful trainer that updates its weights in place.

Each round it adds 1 to every array or tensor it received, in place, and sends the same objects back, so that a site
never needs a second copy of the model. A numpy array that arrives read-only cannot be updated in place: it is
replaced by a copy of its own, one array at a time, and the script says how many it had to copy (the bench reads
that line from the site's log). References are dropped after ``send`` so that the next round's model does not arrive
while this one is still held.
"""

import numpy as np

import flare.client as flare

flare.init()
site = flare.system_info()["site_name"]
while flare.is_running():
    model = flare.receive()
    params = model.params
    copied = 0
    for key in list(params):
        value = params[key]
        if isinstance(value, np.ndarray):
            if not value.flags.writeable:
                value = params[key] = value.copy()
                copied += 1
            np.add(value, 1, out=value)
        else:
            value.add_(1)
        del value
    kind = type(next(iter(params.values()))).__module__.split(".")[0]
    print(f"fedavg_client {site} round {model.current_round}: {len(params)} {kind} entries, {copied} read-only "
          "copied", flush=True)
    flare.send(flare.FLModel(params=params, meta={"NUM_STEPS_CURRENT_ROUND": 1}))
    del model, params
