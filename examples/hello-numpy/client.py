"""hello-numpy training script: "trains" a 3x3 numpy model by adding 1 to every weight, one round per task.

It shows the Client API with plain numpy params (``params["numpy_key"]``) and both ways of sending them back:
the whole model (``--update_type full``) or its difference to the received one (``--update_type diff``).
"""

import argparse

import numpy as np

import flare.client as flare
from flare.client.tracking import SummaryWriter

NUMPY_KEY = "numpy_key"


def define_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--update_type", choices=["full", "diff"], default="full")
    return parser


def train(weights: np.ndarray) -> np.ndarray:
    """A stand-in for training: a new array, the received one left as it came."""
    return weights + 1


def main() -> None:
    args = define_parser().parse_args()

    flare.init()
    site_name = flare.system_info()["site_name"]
    summary_writer = SummaryWriter()

    while flare.is_running():
        input_model = flare.receive()
        current_round = input_model.current_round
        print(f"{site_name}: round {current_round}, task '{flare.get_task_name()}'")

        received = input_model.params[NUMPY_KEY]
        if flare.is_evaluate():
            flare.send(flare.FLModel(metrics={"weight_mean": float(np.mean(received))}))
            continue

        trained = train(received)
        weight_mean = float(np.mean(trained))
        summary_writer.add_scalar("weight_mean", weight_mean, global_step=current_round)
        print(f"{site_name}: received\n{received}\nsending\n{trained}")

        if args.update_type == "diff":
            params, params_type = {NUMPY_KEY: trained - received}, flare.ParamsType.DIFF
        else:
            params, params_type = {NUMPY_KEY: trained}, flare.ParamsType.FULL
        flare.send(flare.FLModel(params=params, params_type=params_type, metrics={"weight_mean": weight_mean},
                                 current_round=current_round))


if __name__ == "__main__":
    main()
