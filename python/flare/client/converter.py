"""Parameter conversion at the Client API boundary, and only there.

The server holds parameters in ``server_expected_format``; the training script sees them in
``params_exchange_format``. ``receive()`` converts server -> script and ``send()`` script -> server; nothing else in
flare converts. Supported: the same format on both sides or ``raw`` on either side (no conversion at all), and
``numpy`` <-> ``pytorch``.

numpy <-> pytorch shares memory wherever it can: ``torch.from_numpy`` for writable arrays and
``tensor.detach().cpu().numpy()`` for CPU tensors. A tensor of a dtype numpy lacks (bfloat16, the float8 kinds) stays a
torch tensor on its way to a server that expects numpy: FOBS carries torch tensors natively, so nothing is lost by
not converting it. The other way, such a tensor reaches a numpy script as float32.

Each entry the server sent goes back in the type and dtype the server sent it: the converter remembers them at
``to_script`` and restores them at ``to_server``, so that a float16 model trained in float32, or a bfloat16 model seen
as float32 by a numpy script, returns to the server as it left it. Entries the server did not send are converted by
format only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flare.apis.fl_constant import ExchangeFormat
from flare.errors import ConfigError

_PASS_THROUGH = ExchangeFormat.RAW
_CONVERTIBLE = frozenset({ExchangeFormat.NUMPY, ExchangeFormat.PYTORCH})


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ConfigError("params_exchange_format or server_expected_format is 'pytorch', but torch is not "
                          "installed in this process: install torch, or use 'numpy' on both sides") from e
    return torch


def _array_to_tensor(array: np.ndarray) -> Any:
    """The array as a tensor over the same memory; a copy when the array is read-only (in-place training would
    write into it) or has negative strides (torch cannot view those)."""
    torch = _torch()
    if not array.flags.writeable:
        return torch.from_numpy(array.copy())
    try:
        return torch.from_numpy(array)
    except ValueError:
        return torch.from_numpy(array.copy())


def _tensor_to_array(tensor: Any) -> np.ndarray | None:
    """The tensor as an array over the same memory when it is on the CPU; None for a dtype numpy lacks."""
    try:
        return tensor.detach().cpu().numpy()
    except TypeError:
        return None


def _numpy_to_pytorch(value: Any) -> Any:
    if not isinstance(value, np.ndarray):
        return value
    try:
        return _array_to_tensor(value)
    except TypeError:
        return value  # a dtype torch lacks (object, strings): the script gets the array


def _pytorch_to_numpy(value: Any, to_server: bool) -> Any:
    torch = _torch()
    if not isinstance(value, torch.Tensor):
        return value
    array = _tensor_to_array(value)
    if array is not None:
        return array
    if to_server:
        return value.detach().cpu()
    wide = torch.complex64 if value.is_complex() else torch.float32
    return value.detach().to(device="cpu", dtype=wide).numpy()


def _restore_dtype(value: Any, dtype: Any) -> Any:
    """``value`` (an array or a tensor) in the type and dtype the server sent; no copy when they already match."""
    torch = _torch()
    if isinstance(dtype, np.dtype):
        if isinstance(value, np.ndarray):
            return value if value.dtype == dtype else value.astype(dtype)
        server_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        return value.detach().to(device="cpu", dtype=server_dtype).numpy()
    if isinstance(value, np.ndarray):
        value = _array_to_tensor(value)
    return value.detach().to(device="cpu", dtype=dtype)


class ParamsConverter:
    """Converts the params of one client between the server's format and the script's.

    Parameters
    ----------
    server_expected_format
        The format the server holds (``ExchangeFormat``).
    params_exchange_format
        The format the training script sees.
    """

    def __init__(self, server_expected_format: str, params_exchange_format: str):
        known = _CONVERTIBLE | {_PASS_THROUGH}
        for name, value in (("server_expected_format", server_expected_format),
                            ("params_exchange_format", params_exchange_format)):
            if value not in known:
                raise ConfigError(f"{name}={value!r} is not supported by the Client API: use one of "
                                  f"{sorted(known)}")
        self.server_format = server_expected_format
        self.script_format = params_exchange_format
        self._server_dtypes: dict[Any, Any] = {}

    @property
    def converts(self) -> bool:
        """Whether the two sides differ; when they do not, params pass untouched both ways."""
        return (self.server_format != self.script_format
                and _PASS_THROUGH not in (self.server_format, self.script_format))

    def to_script(self, params: Any) -> Any:
        """The received ``params`` in the script's format; remembers their dtypes for ``to_server``. Entries are
        replaced in the dict one by one, so that an entry that has to be copied lets its original go before the
        next one is copied: a model is never held twice."""
        self._server_dtypes = {}
        if not self.converts or not isinstance(params, dict):
            return params
        array_types = (np.ndarray, _torch().Tensor)
        for key in list(params):
            value = params[key]
            if isinstance(value, array_types):
                self._server_dtypes[key] = value.dtype
            if self.script_format == ExchangeFormat.PYTORCH:
                params[key] = _numpy_to_pytorch(value)
            else:
                params[key] = _pytorch_to_numpy(value, to_server=False)
            del value
        return params

    def to_server(self, params: Any) -> Any:
        """``params`` from the script in the server's format, each received entry in the dtype it came with."""
        if not self.converts or not isinstance(params, dict):
            return params
        array_types = (np.ndarray, _torch().Tensor)
        converted = {}
        for key, value in params.items():
            dtype = self._server_dtypes.get(key)
            if dtype is not None and isinstance(value, array_types):
                converted[key] = _restore_dtype(value, dtype)
            elif self.server_format == ExchangeFormat.NUMPY:
                converted[key] = _pytorch_to_numpy(value, to_server=True)
            else:
                converted[key] = _numpy_to_pytorch(value)
        return converted


def params_diff(new: Any, base: Any) -> dict:
    """``new - base`` per key, for numpy arrays and torch tensors alike: what a client sends with transfer type DIFF.

    Raises ``KeyError`` naming a key of ``new`` that ``base`` lacks, and ``TypeError`` when either is not a dict.
    """
    if not isinstance(new, dict) or not isinstance(base, dict):
        raise TypeError(f"transfer type DIFF needs dict params on both sides, got {type(new).__name__} sent and "
                        f"{type(base).__name__} received")
    diff = {}
    for key, value in new.items():
        if key not in base:
            raise KeyError(f"transfer type DIFF: parameter {key!r} was not in the received model, so it has nothing "
                           "to be a difference to")
        diff[key] = value - base[key]
    return diff


__all__ = ["ParamsConverter", "params_diff"]
