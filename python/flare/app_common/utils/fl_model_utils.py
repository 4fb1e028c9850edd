"""``FLModelUtils``: FLModel to and from the Shareable/DXO form that NVFlare's Shareable-based components use.

The mapping is NVFlare's:

- ``params`` become a DXO of kind WEIGHTS (``ParamsType.FULL``) or WEIGHT_DIFF (``DIFF``); metrics sent with them
  (an evaluation of the global model) go in the DXO's meta as ``"initial_metrics"``;
- metrics alone become a DXO of kind METRICS;
- ``FLModel.meta`` is merged into the DXO's meta;
- round numbers travel as the Shareable headers ``start_round``, ``current_round`` and ``num_rounds``.

``optimizer_params`` do not travel this way, as in NVFlare.
"""

from __future__ import annotations

from typing import Any

from flare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from flare.apis.fl_context import FLContext
from flare.apis.shareable import Shareable
from flare.app_common.abstract.fl_model import FLModel, ParamsType

# Shareable header names, NVFlare's AppConstants values
START_ROUND = "start_round"
CURRENT_ROUND = "current_round"
NUM_ROUNDS = "num_rounds"
VALIDATE_TYPE = "_validate_type"
SUBMIT_MODEL_NAME = "submit_model_name"

_KIND_OF_PARAMS = {ParamsType.FULL: DataKind.WEIGHTS, ParamsType.DIFF: DataKind.WEIGHT_DIFF}
_PARAMS_OF_KIND: dict[str, ParamsType] = {kind: params_type for params_type, kind in _KIND_OF_PARAMS.items()}

# FLModel attributes in to_dxo's dict, by their own names
_MODEL_ATTRS = (
    "params_type",
    "params",
    "metrics",
    "optimizer_params",
    "start_round",
    "current_round",
    "total_rounds",
    "meta",
)


class FLModelUtils:
    @staticmethod
    def to_shareable(fl_model: FLModel) -> Shareable:
        """``fl_model`` as a Shareable carrying a DXO; ``ValueError`` if it has neither params nor metrics."""
        if fl_model.params is None and fl_model.metrics is None:
            raise ValueError("FLModel without params and metrics is NOT supported.")
        if fl_model.params is not None:
            params_type = ParamsType(fl_model.params_type or ParamsType.FULL)
            meta = {} if fl_model.metrics is None else {MetaKey.INITIAL_METRICS: fl_model.metrics}
            dxo = DXO(_KIND_OF_PARAMS[params_type], data=fl_model.params, meta=meta)
        else:
            dxo = DXO(DataKind.METRICS, data=fl_model.metrics, meta={})
        model_meta = fl_model.meta or {}
        dxo.meta.update(model_meta)

        shareable = dxo.to_shareable()
        for header, value in (
            (START_ROUND, fl_model.start_round),
            (CURRENT_ROUND, fl_model.current_round),
            (NUM_ROUNDS, fl_model.total_rounds),
        ):
            if value is not None:
                shareable.set_header(header, value)
        if MetaKey.VALIDATE_TYPE in model_meta:
            shareable.set_header(VALIDATE_TYPE, model_meta[MetaKey.VALIDATE_TYPE])
        return shareable

    @staticmethod
    def from_shareable(shareable: Shareable, fl_ctx: FLContext | None = None) -> FLModel:
        """The FLModel a Shareable carries. A DXO of a kind other than WEIGHTS, WEIGHT_DIFF or METRICS is read as
        FULL params. The job id and site name headers, when present, are copied into the meta. ``fl_ctx`` is
        accepted for NVFlare's signature and not used."""
        metrics = None
        params_type = None
        params = None
        meta: dict[str, Any] = {}

        submit_model_name = shareable.get_header(SUBMIT_MODEL_NAME)
        if submit_model_name:
            # cross-site evaluation asks for a model by name: no DXO comes with it
            meta[SUBMIT_MODEL_NAME] = submit_model_name
        else:
            dxo = from_shareable(shareable)
            meta = dict(dxo.meta)
            if dxo.data_kind == DataKind.METRICS:
                metrics = dxo.data
            else:
                params_type = _PARAMS_OF_KIND.get(dxo.data_kind, ParamsType.FULL)
                params = dxo.data
                metrics = meta.get(MetaKey.INITIAL_METRICS)

        validate_type = shareable.get_header(VALIDATE_TYPE)
        if validate_type is not None:
            meta[MetaKey.VALIDATE_TYPE] = validate_type
        for key in (MetaKey.JOB_ID, MetaKey.SITE_NAME):
            value = shareable.get_header(key)
            if value is not None:
                meta[key] = value

        return FLModel(
            params_type=params_type,
            params=params,
            metrics=metrics,
            start_round=shareable.get_header(START_ROUND),
            current_round=shareable.get_header(CURRENT_ROUND),
            total_rounds=shareable.get_header(NUM_ROUNDS),
            meta=meta,
        )

    @staticmethod
    def to_dxo(fl_model: FLModel) -> DXO:
        """``fl_model`` as one DXO of kind FL_MODEL, its attributes that are not None by name."""
        data = {}
        for attr in _MODEL_ATTRS:
            value = getattr(fl_model, attr)
            if value is not None:
                data[attr] = value
        return DXO(data_kind=DataKind.FL_MODEL, data=data)

    @staticmethod
    def from_dxo(dxo: DXO) -> FLModel:
        """The FLModel in a DXO of kind FL_MODEL."""
        if dxo.data_kind != DataKind.FL_MODEL:
            raise ValueError(f"Invalid dxo with data_kind: {dxo.data_kind}")
        if not isinstance(dxo.data, dict):
            raise ValueError(f"Invalid dxo with data of type: {type(dxo.data)}")
        return FLModel(**{attr: dxo.data.get(attr) for attr in _MODEL_ATTRS})

    @staticmethod
    def get_meta_prop(model: FLModel, key: str, default: Any = None) -> Any:
        _check_model(model)
        return model.meta.get(key, default) if model.meta else default

    @staticmethod
    def set_meta_prop(model: FLModel, key: str, value: Any) -> None:
        _check_model(model)
        model.meta[key] = value

    @staticmethod
    def get_configs(model: FLModel) -> dict | None:
        return FLModelUtils.get_meta_prop(model, MetaKey.CONFIGS)

    @staticmethod
    def update_model(model: FLModel, model_update: FLModel, replace_meta: bool = True) -> FLModel:
        """Applies ``model_update`` to the FULL ``model`` in place: its params replace ``model``'s (FULL) or are
        added to them (DIFF); its metrics replace ``model``'s; its meta replaces or updates ``model``'s."""
        if model.params_type != ParamsType.FULL:
            raise RuntimeError(f"params_type {model.params_type} of `model` not supported! Expected `ParamsType.FULL`.")
        if replace_meta:
            model.meta = model_update.meta
        else:
            model.meta.update(model_update.meta)
        model.metrics = model_update.metrics
        if model_update.params_type == ParamsType.FULL:
            model.params = model_update.params
        elif model_update.params_type == ParamsType.DIFF:
            for name, value in model_update.params.items():
                model.params[name] = model.params[name] + value
        else:
            raise RuntimeError(f"params_type {model_update.params_type} of `model_update` not supported!")
        return model


def _check_model(model: Any) -> None:
    if not isinstance(model, FLModel):
        raise TypeError(f"model must be FLModel, but got {type(model).__name__}")


__all__ = ["FLModelUtils"]
