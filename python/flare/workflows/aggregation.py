"""Streaming weighted averaging of model parameters: each result is folded into running sums as it arrives, one
parameter at a time, and dropped.

The server then holds one sum buffer per parameter, whatever the number of clients: with the global model, about
twice the model in memory. A buffer is allocated at the first contribution to its key, in a dtype that keeps
precision without taking more memory than needed:

================================  =====================================================
contributed dtype                 sum buffer
================================  =====================================================
float32, float64, complex         the same dtype (float32 sums in float32, in place)
float16, bfloat16, float8         float32
bool, int8/16, uint8/16           float32
int32/64, uint32/64               float64
================================  =====================================================

A fold never allocates a temporary of a whole parameter: it works through ``chunk_bytes`` slices, multiplying into
one reused scratch slice (numpy), or adding with ``alpha`` (torch) after staging an operand of another dtype in that
slice, since torch would otherwise cast it into a new temporary on the CPU. At the end the means are computed in place in the
sum buffers, which become the result, cast back to the parameter's dtype (integers and bools rounded to nearest).
numpy arrays and torch tensors are both supported; torch is never imported here, only recognized when met.
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flare.errors import JobError
from flare.tensors.safetensors import is_torch

CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class _Form:
    """What a parameter is, without holding it: its container, dtype and device."""

    container: str  # "numpy", "torch" or "scalar"
    dtype: Any  # numpy dtype, torch dtype, or the scalar's type
    device: Any = None

    @property
    def is_integral(self) -> bool:
        if self.container == "torch":
            return not (self.dtype.is_floating_point or self.dtype.is_complex)
        if self.container == "numpy":
            return self.dtype.kind in "biu"
        np = sys.modules.get("numpy")  # a numpy scalar type means numpy is imported
        return issubclass(self.dtype, numbers.Integral) or (np is not None and issubclass(self.dtype, np.bool_))


@dataclass
class _Sum:
    buffer: Any  # numpy array or torch tensor in the accumulator dtype, or a float for scalars
    weight: float
    form: _Form  # of the first contribution: the mean is returned in it unless told otherwise
    shape: tuple[int, ...]


class WeightedAggregationHelper:
    """Running weighted sums of parameter dicts.

    Parameters
    ----------
    exclude_vars
        A regular expression: keys it matches (``re.search``) are not aggregated.
    chunk_bytes
        Size of the slices a fold works through; bounds its temporary memory.
    """

    def __init__(self, exclude_vars: str | re.Pattern[str] | None = None, *, chunk_bytes: int = CHUNK_BYTES):
        self._exclude = re.compile(exclude_vars) if isinstance(exclude_vars, str) else exclude_vars
        self._chunk_bytes = chunk_bytes
        self._sums: dict[str, _Sum] = {}
        self._contributors: list[str] = []
        self._scratch: dict[Any, Any] = {}  # (container, accumulator dtype, device) → reused slice buffer

    @property
    def contributors(self) -> list[str]:
        """Who contributed since the last reset, in fold order."""
        return list(self._contributors)

    def add(self, params: Mapping[str, Any], weight: float, contributor: str) -> int:
        """Folds ``weight × value`` of every parameter into the running sums; returns how many were folded.

        Parameters are read through ``flare.fobs.lazy.iter_resolved``, so lazily referenced tensors are pulled one
        batch at a time and each value is released once folded.
        """
        from flare.fobs.lazy import iter_resolved

        if not (math.isfinite(weight) and weight >= 0):
            raise JobError(f"the weight of {contributor}'s result must be a finite number >= 0, got {weight!r}")
        folded = 0
        for key, value in iter_resolved(params):
            if self._exclude is None or not self._exclude.search(key):
                self._fold(key, value, weight, contributor)
                folded += 1
            # released before the next value is pulled: the loop variable would keep it alive until then
            del value
        self._contributors.append(contributor)
        return folded

    def get_result(self, like: Mapping[str, Any] | None = None, *, add: bool = False) -> dict[str, Any]:
        """The weighted means, computed in place in the sum buffers; then resets.

        With ``like``, each mean takes the dtype, container (numpy or torch) and device of ``like[key]`` where it
        has the key (else those of the first contribution). With ``add``, the result is ``like[key] + mean``, added
        in the sum buffer before the cast back: a DIFF result applied to the global model.
        """
        like = like or {}
        result: dict[str, Any] = {}
        try:
            for key in list(self._sums):
                total = self._sums.pop(key)
                if total.weight <= 0:
                    raise JobError(
                        f"the weights of parameter {key!r} sum to {total.weight}: every contributor's weight is 0 "
                        "(check aggregation_weights and NUM_STEPS_CURRENT_ROUND)"
                    )
                total.buffer = _divide(total.buffer, total.weight)
                if add:
                    if key not in like:
                        raise JobError(f"a DIFF was sent for parameter {key!r}, which the global model lacks")
                    total.buffer = self._add_into(total, key, like[key], 1.0, "the global model")
                form = _form_of(key, like[key]) if key in like else total.form
                result[key] = _cast(total.buffer, form)
        finally:
            self.reset()
        return result

    def reset(self) -> None:
        """Drops the sums and contributors."""
        self._sums.clear()
        self._contributors.clear()

    # ---- folding ----
    def _fold(self, key: str, value: Any, weight: float, contributor: str) -> None:
        total = self._sums.get(key)
        if total is None:
            self._sums[key] = _first_sum(key, value, weight)
            return
        total.buffer = self._add_into(total, key, value, weight, contributor)
        total.weight += weight

    def _add_into(self, total: _Sum, key: str, value: Any, weight: float, source: str) -> Any:
        """``total.buffer + weight × value``, in place for arrays and tensors, slice by slice."""
        if isinstance(total.buffer, float):
            return total.buffer + weight * _scalar(key, value, source)
        if _form_of(key, value).container == "scalar":  # a number where others sent 0-d arrays
            value = _numpy().asarray(value)
        shape = _shape_of(value)
        if shape != total.shape:
            raise JobError(f"parameter {key!r} from {source} has shape {shape}, earlier results had {total.shape}")
        flat_sum = total.buffer.reshape(-1)
        flat_value = value.reshape(-1)  # a view, unless the value is not contiguous
        count = flat_sum.shape[0]
        step = max(1, self._chunk_bytes // flat_sum.dtype.itemsize)
        if is_torch(total.buffer):
            for start in range(0, count, step):
                target = flat_sum[start : start + step]
                part = _as_torch(flat_value[start : start + step], flat_sum.device)
                if part.dtype != target.dtype:
                    # add_ would cast the operand into a fresh temporary; staging it in the scratch slice reuses one
                    part = self._scratch_for(flat_sum, min(step, count))[: part.shape[0]].copy_(part)
                target.add_(part, alpha=weight)
            return total.buffer
        np = _numpy()
        for start in range(0, count, step):
            target = flat_sum[start : start + step]
            part = _as_numpy(flat_value[start : start + step])
            product = self._scratch_for(flat_sum, min(step, count))[: part.shape[0]]
            np.multiply(part, weight, out=product, dtype=flat_sum.dtype)
            np.add(target, product, out=target)
        return total.buffer

    def _scratch_for(self, flat_sum: Any, count: int) -> Any:
        """A reused buffer of at least ``count`` elements of the sum's dtype, container and device."""
        device = getattr(flat_sum, "device", None)
        key = (type(flat_sum), flat_sum.dtype, device)
        scratch = self._scratch.get(key)
        if scratch is None or scratch.shape[0] < count:
            if is_torch(flat_sum):
                scratch = _torch().empty(count, dtype=flat_sum.dtype, device=device)
            else:
                scratch = _numpy().empty(count, dtype=flat_sum.dtype)
            self._scratch[key] = scratch
        return scratch[:count]


def _first_sum(key: str, value: Any, weight: float) -> _Sum:
    """A sum buffer holding ``weight × value``, in the accumulator dtype."""
    form = _form_of(key, value)
    if form.container == "scalar":
        return _Sum(weight * _scalar(key, value, "the first result"), weight, form, ())
    shape = _shape_of(value)
    if form.container == "torch":
        torch = _torch()
        buffer = torch.empty(shape, dtype=_torch_accumulator(form.dtype), device=value.device)
        buffer.copy_(value.detach())
        buffer.mul_(weight)
    else:
        np = _numpy()
        buffer = np.empty(shape, dtype=_numpy_accumulator(form.dtype))
        np.multiply(value, weight, out=buffer, dtype=buffer.dtype)
    return _Sum(buffer, weight, form, shape)


def _divide(buffer: Any, weight: float) -> Any:
    if isinstance(buffer, float):
        return buffer / weight
    if is_torch(buffer):
        return buffer.div_(weight)
    _numpy().divide(buffer, weight, out=buffer)
    return buffer


def _cast(mean: Any, form: _Form) -> Any:
    """``mean`` (a sum buffer, or a float) in ``form``'s container, dtype and device; no copy where they match."""
    if isinstance(mean, float):
        if form.container == "scalar":
            return form.dtype(round(mean)) if form.is_integral else form.dtype(mean)
        mean = _numpy().asarray(mean)
    if form.is_integral:
        mean = mean.round_() if is_torch(mean) else _numpy().rint(mean, out=mean)
    if form.container == "scalar":
        return form.dtype(mean.item())
    if form.container == "torch":
        return _as_torch(mean, form.device).to(dtype=form.dtype)
    if is_torch(mean):
        mean = mean.cpu().numpy()
    return mean.astype(form.dtype, copy=False)


def _form_of(key: str, value: Any) -> _Form:
    if isinstance(value, (int, float)):
        return _Form("scalar", type(value))
    if is_torch(value):
        return _Form("torch", value.dtype, value.device)
    np = sys.modules.get("numpy")  # a numpy value means numpy is imported: metrics alone never need it
    if np is not None and isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise JobError(
                f"parameter {key!r} is a {value.dtype} array, which cannot be averaged: exclude it with exclude_vars"
            )
        return _Form("numpy", value.dtype)
    if np is not None and isinstance(value, (np.number, np.bool_)):
        return _Form("scalar", type(value))
    raise JobError(
        f"parameter {key!r} is a {type(value).__name__}, which cannot be averaged: send numpy arrays, torch tensors "
        "or numbers, or exclude it with exclude_vars"
    )


def _scalar(key: str, value: Any, source: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        kind = type(value).__name__
        raise JobError(f"parameter {key!r} from {source} is a {kind}, earlier ones were numbers") from None


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in getattr(value, "shape", ()))


def _numpy_accumulator(dtype: Any) -> Any:
    np = _numpy()
    if dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize < 4 else dtype
    if dtype.kind == "c":
        return dtype
    return np.dtype(np.float32) if dtype.itemsize <= 2 else np.dtype(np.float64)


def _torch_accumulator(dtype: Any) -> Any:
    torch = _torch()
    if dtype.is_complex:
        return torch.complex64 if dtype.itemsize < 8 else dtype
    if dtype.is_floating_point:
        return torch.float32 if dtype.itemsize < 4 else dtype
    return torch.float32 if dtype.itemsize <= 2 else torch.float64


def _as_torch(value: Any, device: Any) -> Any:
    if not is_torch(value):
        with warnings.catch_warnings():
            # from_numpy warns about read-only arrays; the tensor made here is only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            value = _torch().from_numpy(value)
    value = value.detach()  # sums are data: a tensor that requires grad must not pull them into its graph
    return value.to(device) if device is not None else value


def _as_numpy(value: Any) -> Any:
    if not is_torch(value):
        return value
    value = value.detach().cpu()
    try:
        return value.numpy()
    except TypeError:  # bfloat16 and float8: numpy has no such dtype
        return value.float().numpy()


def _numpy() -> Any:
    import numpy

    return numpy


def _torch() -> Any:
    import torch

    return torch


__all__ = ["CHUNK_BYTES", "WeightedAggregationHelper"]
