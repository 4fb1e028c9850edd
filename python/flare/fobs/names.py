"""Type names as they appear on the wire, and the table between NVFlare's class names and flare's.

A wrapped object on the wire names its class (``__fobs_type__``) and the decomposer that took it apart
(``__fobs_dc__``). NVFlare writes its own fully-qualified names there, so a payload from NVFlare names
``nvflare.app_common.abstract.fl_model.FLModel`` where we have ``flare.app_common.abstract.fl_model.FLModel``.
The alias tables below are the only bridge between the two: a name is never turned into a class by importing it.
"""

from __future__ import annotations

FOBS_TYPE = "__fobs_type__"
FOBS_DATA = "__fobs_data__"
FOBS_DECOMPOSER = "__fobs_dc__"

# NVFlare 2.7.2's BUILTIN_TYPES: names it accepts from the wire without registration. They stay allowed here so
# that a payload naming one of them is never refused as foreign; one with no flare counterpart below still cannot be
# rebuilt, and the error says so.
NVFLARE_BUILTIN_TYPES: frozenset[str] = frozenset(
    {
        "nvflare.apis.dxo.DXO",
        "nvflare.apis.fl_context.FLContext",
        "nvflare.apis.workspace.Workspace",
        "nvflare.app_common.abstract.fl_model.FLModel",
        "numpy.ndarray",
        "numpy.float32",
        "numpy.float64",
        "numpy.int32",
        "numpy.int64",
        "nvflare.app_common.abstract.statistics_spec.Bin",
        "nvflare.app_common.abstract.statistics_spec.BinRange",
        "nvflare.app_common.abstract.statistics_spec.DataType",
        "nvflare.app_common.abstract.statistics_spec.Feature",
        "nvflare.app_common.abstract.statistics_spec.Histogram",
        "nvflare.app_common.abstract.statistics_spec.HistogramType",
        "nvflare.app_common.abstract.statistics_spec.StatisticConfig",
        "nvflare.apis.shareable.Shareable",
        "nvflare.app_common.abstract.learnable.Learnable",
        "nvflare.app_common.abstract.model.ModelLearnable",
        "nvflare.apis.client.Client",
        "nvflare.apis.fl_snapshot.RunSnapshot",
        "nvflare.apis.signal.Signal",
        "argparse.Namespace",
        "nvflare.fuel.utils.fobs.datum.Datum",
        "nvflare.fuel.utils.fobs.datum.DatumRef",
        "nvflare.private.admin_defs.Message",
        "nvflare.private.fed.server.run_info.RunInfo",
        "nvflare.private.fed.server.server_state.HotState",
        "nvflare.app_common.widgets.event_recorder._CtxPropReq",
        "nvflare.app_common.widgets.event_recorder._EventReq",
        "nvflare.app_common.widgets.event_recorder._EventStats",
        "tenseal.CKKSVector",
        "nvflare.apis.dxo.DataKind",
        "nvflare.app_common.abstract.fl_model.ParamsType",
        "nvflare.apis.analytix.AnalyticsDataType",
        "nvflare.apis.analytix.LogWriterName",
        "nvflare.apis.job_def.JobMetaKey",
        "xgboost.core.DataSplitMode",
        "nvflare.edge.web.models.device_info.DeviceInfo",
        "nvflare.edge.web.models.user_info.UserInfo",
        "nvflare.edge.web.models.capabilities.Capabilities",
        "nvflare.edge.web.models.job_request.JobRequest",
        "nvflare.edge.web.models.job_response.JobResponse",
        "nvflare.edge.web.models.task_request.TaskRequest",
        "nvflare.edge.web.models.task_response.TaskResponse",
        "nvflare.edge.web.models.selection_request.SelectionRequest",
        "nvflare.edge.web.models.selection_response.SelectionResponse",
        "nvflare.edge.web.models.result_report.ResultReport",
        "nvflare.edge.web.models.result_response.ResultResponse",
        "nvflare.edge.web.models.error_response.ErrorResponse",
    }
)

# NVFlare class name -> flare class name, for the classes both have. We write NVFlare's name (so NVFlare can read
# what we send) and accept either.
TYPE_ALIASES: dict[str, str] = {
    "nvflare.app_common.abstract.fl_model.FLModel": "flare.app_common.abstract.fl_model.FLModel",
    "nvflare.app_common.abstract.fl_model.ParamsType": "flare.app_common.abstract.fl_model.ParamsType",
    "nvflare.fuel.utils.fobs.datum.DatumRef": "flare.fobs.datum.DatumRef",
    "nvflare.fuel.utils.fobs.datum.Datum": "flare.fobs.datum.Datum",
    "nvflare.apis.shareable.Shareable": "flare.apis.shareable.Shareable",
    "nvflare.apis.dxo.DXO": "flare.apis.dxo.DXO",
    "nvflare.apis.dxo.DataKind": "flare.apis.dxo.DataKind",
    "nvflare.apis.fl_context.FLContext": "flare.apis.fl_context.FLContext",
}

_NVF_CORE = "nvflare.fuel.utils.fobs.decomposers.core_decomposers."
_NVF_GENERIC = "nvflare.fuel.utils.fobs.decomposer."
_NVF_NUMPY = "nvflare.app_common.decomposers.numpy_decomposers."
_NVF_APIS = "nvflare.apis.utils.decomposers.flare_decomposers."

# NVFlare decomposer class name -> flare decomposer class name. Only the decomposer's name crosses the wire; which
# decomposer rebuilds an object is decided by its type name, here as in NVFlare once a type is registered.
DECOMPOSER_ALIASES: dict[str, str] = {
    _NVF_CORE + "TupleDecomposer": "flare.fobs.builtin_decomposers.TupleDecomposer",
    _NVF_CORE + "SetDecomposer": "flare.fobs.builtin_decomposers.SetDecomposer",
    _NVF_CORE + "OrderedDictDecomposer": "flare.fobs.builtin_decomposers.OrderedDictDecomposer",
    _NVF_CORE + "DatetimeDecomposer": "flare.fobs.builtin_decomposers.DatetimeDecomposer",
    _NVF_GENERIC + "DataClassDecomposer": "flare.fobs.decomposer.DataClassDecomposer",
    _NVF_GENERIC + "EnumTypeDecomposer": "flare.fobs.decomposer.EnumTypeDecomposer",
    _NVF_GENERIC + "DictDecomposer": "flare.fobs.decomposer.DictDecomposer",
    _NVF_NUMPY + "NumpyArrayDecomposer": "flare.fobs.numpy_decomposers.NumpyArrayDecomposer",
    _NVF_NUMPY + "Float32ScalarDecomposer": "flare.fobs.numpy_decomposers.Float32ScalarDecomposer",
    _NVF_NUMPY + "Float64ScalarDecomposer": "flare.fobs.numpy_decomposers.Float64ScalarDecomposer",
    _NVF_NUMPY + "Int32ScalarDecomposer": "flare.fobs.numpy_decomposers.Int32ScalarDecomposer",
    _NVF_NUMPY + "Int64ScalarDecomposer": "flare.fobs.numpy_decomposers.Int64ScalarDecomposer",
    "nvflare.app_opt.pt.decomposers.TensorDecomposer": "flare.fobs.torch_decomposers.TensorDecomposer",
    "nvflare.app_common.decomposers.common_decomposers.FLModelDecomposer": (
        "flare.fobs.app_decomposers.FLModelDecomposer"
    ),
    _NVF_APIS + "DXODecomposer": "flare.fobs.app_decomposers.DXODecomposer",
    _NVF_APIS + "ContextDecomposer": "flare.fobs.app_decomposers.FLContextDecomposer",
}

_TYPE_TO_WIRE = {flare: nvf for nvf, flare in TYPE_ALIASES.items()}
_DECOMPOSER_TO_WIRE = {flare: nvf for nvf, flare in DECOMPOSER_ALIASES.items()}
# NVFlare sends a DatumRef through its generic DataClassDecomposer; ours resolves the reference as it rebuilds it.
_DECOMPOSER_TO_WIRE["flare.fobs.builtin_decomposers.DatumRefDecomposer"] = _NVF_GENERIC + "DataClassDecomposer"

# Error messages quote names read from the wire; a crafted name can be any length.
_MAX_QUOTED = 120


def class_name(cls: type) -> str:
    """The fully-qualified name of a class, as FOBS writes it: builtins go without their module."""
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def wire_type_name(name: str) -> str:
    """The name written for a flare class: NVFlare's where NVFlare has the class, else flare's own."""
    return _TYPE_TO_WIRE.get(name, name)


def wire_decomposer_name(name: str) -> str:
    """The decomposer name written for a flare decomposer class (NVFlare's where it has one)."""
    return _DECOMPOSER_TO_WIRE.get(name, name)


def canonical_type_name(name: str) -> str:
    """The flare name for a type name read from the wire."""
    return TYPE_ALIASES.get(name, name)


def canonical_decomposer_name(name: str) -> str:
    """The flare name for a decomposer name read from the wire."""
    return DECOMPOSER_ALIASES.get(name, name)


def quoted(name: object) -> str:
    """A wire-supplied name, quoted and shortened for an error message."""
    text = repr(name)
    if len(text) > _MAX_QUOTED:
        text = text[:_MAX_QUOTED] + "..."
    return text
