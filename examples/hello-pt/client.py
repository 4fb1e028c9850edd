"""hello-pt training script: trains SimpleNetwork on this site's shard of scikit-learn's digits, one round per task.

The job runs it on every client site; the Client API (``flare.receive`` / ``flare.send``) carries the global model
in and the trained one out. Everything else is ordinary PyTorch.
"""

import argparse
import zlib

import torch
from model import SimpleNetwork
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import flare.client as flare
from flare.client.tracking import SummaryWriter

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0  # the same split on every site: each its own training shard, all the same validation part
LEARNING_RATE = 1e-2


def define_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--num_sites", type=int, default=2, help="how many shards the training part is cut into")
    return parser


def shard_index(site_name: str, num_sites: int) -> int:
    """site-1 trains on shard 0, site-2 on shard 1, ...; a site named otherwise on the shard its name hashes to."""
    suffix = site_name.rsplit("-", 1)[-1]
    number = int(suffix) - 1 if suffix.isdigit() else zlib.crc32(site_name.encode())
    return number % num_sites


def load_data(site_name: str, num_sites: int) -> tuple[TensorDataset, TensorDataset]:
    """This site's training shard and the shared validation part of the digits (1797 images of 8x8, 0..16)."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    num_validation = int(len(order) * VALIDATION_FRACTION)
    validation, training = order[:num_validation], order[num_validation:]
    shard = training[shard_index(site_name, num_sites)::num_sites]
    return TensorDataset(images[shard], labels[shard]), TensorDataset(images[validation], labels[validation])


def train(model: nn.Module, loader: DataLoader, epochs: int, on_epoch=None) -> int:
    """Trains ``model`` in place; returns the number of optimizer steps taken."""
    model.to(DEVICE).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    for epoch in range(epochs):
        total_loss = 0.0
        for images, labels in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(images.to(DEVICE)), labels.to(DEVICE))
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, total_loss / len(loader))
    return steps


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """The accuracy of ``model`` on ``loader``."""
    model.to(DEVICE).eval()
    correct = total = 0
    for images, labels in loader:
        predicted = model(images.to(DEVICE)).argmax(dim=1)
        correct += (predicted == labels.to(DEVICE)).sum().item()
        total += len(labels)
    return correct / total


def main() -> None:
    args = define_parser().parse_args()
    if DEVICE == "cpu":
        # the network is tiny: one thread per site trains it fastest, and simulated sites share the machine's cores
        torch.set_num_threads(1)
    model = SimpleNetwork()

    flare.init()
    site_name = flare.system_info()["site_name"]
    train_set, validation_set = load_data(site_name, args.num_sites)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers)
    validation_loader = DataLoader(validation_set, batch_size=256, num_workers=args.num_workers)
    summary_writer = SummaryWriter()
    print(f"{site_name}: {len(train_set)} training and {len(validation_set)} validation images")

    while flare.is_running():
        input_model = flare.receive()
        current_round = input_model.current_round
        print(f"{site_name}: task '{flare.get_task_name()}', round {current_round}")

        if flare.is_submit_model():
            # the last locally trained model, which the server asked for by name
            flare.send(flare.FLModel(params=model.cpu().state_dict()))
            continue

        model.load_state_dict(input_model.params)
        if flare.is_evaluate():
            accuracy = evaluate(model, validation_loader)
            print(f"{site_name}: the received model's validation accuracy is {accuracy:.3f}")
            flare.send(flare.FLModel(metrics={"accuracy": accuracy}))
            continue

        def log_loss(epoch: int, loss: float) -> None:
            summary_writer.add_scalar("train_loss", loss, global_step=current_round * args.epochs + epoch)

        steps = train(model, train_loader, args.epochs, on_epoch=log_loss)
        accuracy = evaluate(model, validation_loader)
        summary_writer.add_scalar("validation_accuracy", accuracy, global_step=current_round)
        print(f"{site_name}: round {current_round} validation accuracy {accuracy:.3f}")
        flare.send(flare.FLModel(params=model.cpu().state_dict(), metrics={"accuracy": accuracy},
                                 meta={"NUM_STEPS_CURRENT_ROUND": steps}))


if __name__ == "__main__":
    main()
