"""hello-numpy: federated averaging of a 3x3 numpy model over simulated client sites (NVFlare's hello-numpy job).

    python job.py [--n_clients 2] [--num_rounds 3] [--update_type full|diff] [--launch_external_process]
"""

import argparse

from flare.app_common.np.recipes import NumpyFedAvgRecipe
from flare.client.config import TransferType
from flare.recipe import SimEnv, add_experiment_tracking


def define_parser() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n_clients", type=int, default=2)
    parser.add_argument("--num_rounds", type=int, default=3)
    parser.add_argument("--update_type", choices=["full", "diff"], default="full",
                        help="send the whole model back, or its difference to the received one")
    parser.add_argument("--launch_external_process", action="store_true",
                        help="run client.py in its own process instead of inside each client")
    return parser.parse_args()


def main() -> None:
    args = define_parser()
    n_clients = args.n_clients

    recipe = NumpyFedAvgRecipe(
        name="hello-numpy",
        min_clients=n_clients,
        num_rounds=args.num_rounds,
        model=[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        train_script="client.py",
        train_args=f"--update_type {args.update_type}",
        launch_external_process=args.launch_external_process,
        params_transfer_type=TransferType.DIFF if args.update_type == "diff" else TransferType.FULL,
    )
    add_experiment_tracking(recipe, tracking_type="tensorboard")

    env = SimEnv(num_clients=n_clients)
    run = recipe.execute(env)
    result = run.get_result()
    print()
    print("Job Status is:", run.get_status())
    print("Result can be found in :", result)
    print()


if __name__ == "__main__":
    main()
