"""Decomposers for flare's application classes that NVFlare sends too: FLModel, Shareable, DXO, FLContext and
their enums, each in NVFlare's decomposed form."""

from __future__ import annotations

from typing import Any

from flare.apis.dxo import DXO, DataKind
from flare.apis.fl_context import MASK, VALUE, FLContext
from flare.apis.shareable import Shareable
from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.errors import SerializationError
from flare.fobs.datum import DatumManager
from flare.fobs.decomposer import Decomposer, DictDecomposer, EnumTypeDecomposer


def _fields(data: Any, count: int, what: str) -> tuple | list:
    if not isinstance(data, (tuple, list)) or len(data) != count:
        raise SerializationError(f"{what}: expected {count} fields")
    return data


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
        params_type, params, optimizer_params, metrics, start_round, current_round, total_rounds, meta = _fields(
            data, 8, "FLModel"
        )
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


class DXODecomposer(Decomposer[DXO]):
    """NVFlare's form: the tuple (data_kind, meta, data)."""

    def supported_type(self) -> type[DXO]:
        return DXO

    def decompose(self, target: DXO, manager: DatumManager | None = None) -> Any:
        return (target.data_kind, target.meta, target.data)

    def recompose(self, data: Any, manager: DatumManager | None = None) -> DXO:
        data_kind, meta, content = _fields(data, 3, "DXO")
        try:
            return DXO(data_kind=data_kind, data=content, meta=meta)
        except ValueError as e:
            raise SerializationError(str(e)) from None


class FLContextDecomposer(Decomposer[FLContext]):
    """NVFlare's form: the list [model, props], props mapping each name to {"value": ..., "mask": int}."""

    def supported_type(self) -> type[FLContext]:
        return FLContext

    def decompose(self, target: FLContext, manager: DatumManager | None = None) -> Any:
        return [target.model, target.props]

    def recompose(self, data: Any, manager: DatumManager | None = None) -> FLContext:
        model, props = _fields(data, 2, "FLContext")
        if not isinstance(props, dict):
            raise SerializationError("FLContext: props must be a map")
        for key, prop in props.items():
            if not isinstance(prop, dict) or VALUE not in prop or type(prop.get(MASK)) is not int:
                raise SerializationError(f"FLContext: prop {key!r} must be a map with a value and an int mask")
        ctx = FLContext()
        ctx.model = model
        ctx.props = props
        return ctx


def app_decomposers() -> list[Decomposer]:
    return [
        FLModelDecomposer(),
        EnumTypeDecomposer(ParamsType),
        DictDecomposer(Shareable),
        DXODecomposer(),
        EnumTypeDecomposer(DataKind),
        FLContextDecomposer(),
    ]
