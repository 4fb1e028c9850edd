"""``PTFedAvg``: ``FedAvg`` for PyTorch models, at NVFlare's ``nvflare.app_opt.pt.fedavg`` path.

The aggregation is ``FedAvg``'s streaming (InTime) fold, and early stopping its ``stop_cond``/``patience``. What
PyTorch adds: the initial model may be an ``nn.Module`` (its ``state_dict()`` is sent), and a job without a
persistor keeps its models with ``PTFileModelPersistor`` as torch tensors, in NVFlare's ``{"model": state_dict}``
layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flare.app_common.abstract.fl_model import FLModel
from flare.app_common.abstract.model_persistor import ModelPersistor
from flare.app_opt.pt.file_model_persistor import PTFileModelPersistor, state_dict_of
from flare.errors import ConfigError
from flare.workflows.fedavg import FedAvg


class PTFedAvg(FedAvg):
    """``FedAvg`` whose model may be an ``nn.Module``.

    Parameters
    ----------
    model, initial_model
        The initial model (give one of them; ``initial_model`` is NVFlare's ``PTFedAvg`` name): an ``nn.Module``,
        a state dict or an ``FLModel``. None: the persistor's model.
    **kwargs
        Every other ``FedAvg`` setting.
    """

    def __init__(self, *, model: Any = None, initial_model: Any = None, **kwargs: Any):
        if model is not None and initial_model is not None:
            raise ConfigError("give PTFedAvg the initial model as model or as initial_model, not both")
        chosen = model if model is not None else initial_model
        if chosen is not None and not isinstance(chosen, (Mapping, FLModel)):
            chosen = state_dict_of(chosen)
        super().__init__(model=chosen, **kwargs)

    def default_persistor(self, initial_ckpt: Path | None = None) -> ModelPersistor:
        """``PTFileModelPersistor`` at ``save_filename``, handing out torch tensors."""
        return PTFileModelPersistor(
            model={}, initial_ckpt=initial_ckpt, save_filename=self.save_filename, allow_numpy_conversion=False
        )


__all__ = ["PTFedAvg"]
