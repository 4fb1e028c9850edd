"""Decomposers for flare's application classes that NVFlare sends too (FLModel and its ParamsType)."""

from __future__ import annotations

from typing import Any

from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.errors import SerializationError
from flare.fobs.datum import DatumManager
from flare.fobs.decomposer import Decomposer, EnumTypeDecomposer


class FLModelDecomposer(Decomposer[FLModel]):
    """NVFlare's form: the tuple (params_type, params, optimizer_params, metrics, start_round, current_round,
    total_rounds, meta)."""

    def supported_type(self) -> type[FLModel]:
        return FLModel

    def decompose(self, target: FLModel, manager: DatumManager | None = None) -> Any:
        return (
            target.params_type,
            target.params,
            target.optimizer_params,
            target.metrics,
            target.start_round,
            target.current_round,
            target.total_rounds,
            target.meta,
        )

    def recompose(self, data: Any, manager: DatumManager | None = None) -> FLModel:
        if not isinstance(data, (tuple, list)) or len(data) != 8:
            raise SerializationError("FLModel: expected 8 fields")
        params_type, params, optimizer_params, metrics, start_round, current_round, total_rounds, meta = data
        try:
            return FLModel(
                params_type=params_type,
                params=params,
                optimizer_params=optimizer_params,
                metrics=metrics,
                start_round=start_round,
                current_round=current_round,
                total_rounds=total_rounds,
                meta=meta,
            )
        except (TypeError, ValueError) as e:
            raise SerializationError(f"FLModel: {e}") from None


def app_decomposers() -> list[Decomposer]:
    return [FLModelDecomposer(), EnumTypeDecomposer(ParamsType)]
