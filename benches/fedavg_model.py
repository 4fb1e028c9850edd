"""The torch model of ``bench_fedavg.py``: nothing but ``layers`` flat float32 parameters of ``numel`` elements each,
so that its state dict is exactly the payload size the bench asks for. It lives in a module of its own because the
recipe ships the model's source file with the job."""

from __future__ import annotations

import torch
from torch import nn


class FlatLayers(nn.Module):
    """``layers.{i}.weight`` filled with the value ``i``, so that a client can tell one layer from another."""

    def __init__(self, layers: int = 8, numel: int = 1024):
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(layers):
            layer = nn.Module()
            layer.weight = nn.Parameter(torch.full((numel,), float(i)), requires_grad=False)
            self.layers.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
