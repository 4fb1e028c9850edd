"""hello-pt: federated averaging of SimpleNetwork over simulated client sites (NVFlare's hello-pt job).

    python job.py [--n_clients 2] [--num_rounds 3] [--launch_external_process] [--quantization nf4]
"""

import argparse

from model import SimpleNetwork

from flare.app_opt.pt.recipes import FedAvgRecipe
from flare.recipe import SimEnv, add_experiment_tracking


def define_parser() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n_clients", type=int, default=2)
    parser.add_argument("--num_rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--launch_external_process", action="store_true",
                        help="run client.py in its own process instead of inside each client")
    parser.add_argument("--quantization", default=None,
                        help="send the model both ways as float16, bfloat16, blockwise8, float4, nf4 or adaquant")
    return parser.parse_args()


def main() -> None:
    args = define_parser()
    n_clients = args.n_clients

    recipe = FedAvgRecipe(
        name="hello-pt",
        min_clients=n_clients,
        num_rounds=args.num_rounds,
        model=SimpleNetwork(),
        train_script="client.py",
        # each site trains on its own shard of the data: one shard per client
        train_args=f"--batch_size {args.batch_size} --epochs {args.epochs} --num_sites {n_clients}",
        launch_external_process=args.launch_external_process,
        quantization=args.quantization,
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
