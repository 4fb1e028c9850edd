//! Conversions between Python objects and core types: header values, header dicts, settings, and payload buffers
//! (borrowed through the buffer protocol, never copied).

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple};

use sfm_core::frame::{Headers, Value};
use sfm_core::CommConfig;

use crate::errors::config_error;

pub fn value_to_py(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::Nil => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Value::UInt(u) => u.into_pyobject(py)?.into_any().unbind(),
        Value::F32(f) => PyFloat::new(py, f64::from(*f)).into_any().unbind(),
        Value::F64(f) => PyFloat::new(py, *f).into_any().unbind(),
        Value::Str(s) => PyString::new(py, s).into_any().unbind(),
        Value::Bin(b) | Value::Ext(_, b) => PyBytes::new(py, b).into_any().unbind(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Map(entries) => {
            let dict = PyDict::new(py);
            for (k, v) in entries {
                dict.set_item(value_to_py(py, k)?, value_to_py(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

pub fn py_to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.is_none() {
        Ok(Value::Nil)
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Ok(Value::Bool(b.is_true()))
    } else if obj.is_instance_of::<PyInt>() {
        match obj.extract::<i64>() {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) => Ok(Value::UInt(obj.extract::<u64>()?)),
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        Ok(Value::F64(f.value()))
    } else if let Ok(s) = obj.cast::<PyString>() {
        Ok(Value::Str(s.to_str()?.to_string()))
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(Value::Bin(Bytes::copy_from_slice(b.as_bytes())))
    } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        obj.try_iter()?
            .map(|item| py_to_value(&item?))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array)
    } else if let Ok(d) = obj.cast::<PyDict>() {
        d.iter()
            .map(|(k, v)| Ok((py_to_value(&k)?, py_to_value(&v)?)))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Map)
    } else {
        Err(PyTypeError::new_err(format!(
            "header values must be None, bool, int, float, str, bytes, list, tuple or dict, not {}",
            obj.get_type().name()?
        )))
    }
}

pub fn headers_to_py(py: Python<'_>, headers: &Headers) -> PyResult<Py<PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in headers.iter() {
        dict.set_item(k, value_to_py(py, v)?)?;
    }
    Ok(dict.unbind())
}

pub fn py_to_headers(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Headers> {
    let mut headers = Headers::new();
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(headers);
    };
    let dict = obj
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("headers must be a dict"))?;
    for (k, v) in dict.iter() {
        let key: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("header names must be str"))?;
        headers.insert(key, py_to_value(&v)?);
    }
    Ok(headers)
}

/// Keeps a Python buffer exported while Rust holds its bytes. Releasing a buffer needs the GIL; a transport thread
/// must never wait for it, so the release is handed to a thread of its own.
struct BorrowedBuffer(Option<PyBuffer<u8>>);

impl AsRef<[u8]> for BorrowedBuffer {
    fn as_ref(&self) -> &[u8] {
        buffer_bytes(self.0.as_ref().expect("buffer present until drop"))
    }
}

fn buffer_bytes(buf: &PyBuffer<u8>) -> &[u8] {
    // SAFETY: the buffer is C-contiguous bytes (checked at creation) and stays exported while `buf` lives.
    unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) }
}

impl Drop for BorrowedBuffer {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            if let Err(mpsc::SendError(buf)) = releaser().send(buf) {
                // The releaser is gone only while the process exits; leaking the export then is harmless.
                std::mem::forget(buf);
            }
        }
    }
}

fn releaser() -> &'static mpsc::Sender<PyBuffer<u8>> {
    static TX: OnceLock<mpsc::Sender<PyBuffer<u8>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<PyBuffer<u8>>();
        std::thread::Builder::new()
            .name("flare-buffer-release".into())
            .spawn(move || {
                while let Ok(buf) = rx.recv() {
                    // SAFETY: a plain query of interpreter state, valid at any time.
                    if unsafe { pyo3::ffi::Py_IsInitialized() } == 0 || crate::exit::must_stay_out_of_python() {
                        // The interpreter is gone or going (process exit): nothing to release into.
                        std::mem::forget(buf);
                        continue;
                    }
                    Python::attach(|_| drop(buf));
                }
            })
            .expect("spawn buffer release thread");
        tx
    })
}

/// Payloads up to this size are copied rather than borrowed.
const COPY_BELOW: usize = 16 * 1024;

/// Borrows any C-contiguous bytes-like object (bytes, bytearray, memoryview, numpy array, ...) without copying.
pub fn payload_from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Bytes> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Bytes::new());
    };
    if let Ok(p) = obj.cast::<crate::payload::Payload>() {
        return Ok(p.get().bytes());
    }
    let type_error = || {
        PyTypeError::new_err(format!(
            "payload must be a bytes-like object (bytes, bytearray, memoryview, contiguous array), not {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    };
    let buf = match PyBuffer::<u8>::get(obj) {
        Ok(buf) => buf,
        // Buffers of other item types (a float32 array, ...) travel as their raw bytes.
        Err(_) => PyMemoryView::from(obj)
            .and_then(|view| view.call_method1("cast", ("B",)))
            .and_then(|bytes_view| PyBuffer::<u8>::get(&bytes_view))
            .map_err(|_| type_error())?,
    };
    if !buf.is_c_contiguous() {
        return Err(PyTypeError::new_err("payload buffer must be C-contiguous"));
    }
    if buf.len_bytes() <= COPY_BELOW {
        // Small payloads are copied (the writer coalesces them with the frame head anyway), which spares a
        // hand-off to the release thread per message.
        return Ok(Bytes::copy_from_slice(buffer_bytes(&buf)));
    }
    Ok(Bytes::from_owner(BorrowedBuffer(Some(buf))))
}

pub fn seconds(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let s: f64 = v
        .extract()
        .map_err(|_| config_error(name, "must be a number of seconds"))?;
    Duration::try_from_secs_f64(s).map_err(|_| config_error(name, "must be a non-negative number of seconds"))
}

fn count(name: &str, v: &Bound<'_, PyAny>) -> PyResult<usize> {
    v.extract()
        .map_err(|_| config_error(name, "must be a non-negative integer"))
}

/// Builds the core settings from a dict of `{name: value}`; durations are seconds. Unknown names are refused.
pub fn comm_config_from_py(settings: Option<&Bound<'_, PyDict>>) -> PyResult<CommConfig> {
    let mut cfg = CommConfig::default();
    let Some(settings) = settings else { return Ok(cfg) };
    for (k, v) in settings.iter() {
        let name: String = k.extract()?;
        match name.as_str() {
            "max_frame_size" => cfg.max_frame_size = count(&name, &v)?,
            "heartbeat_interval" => cfg.heartbeat_interval = seconds(&name, &v)?,
            "heartbeat_timeout" => cfg.heartbeat_timeout = seconds(&name, &v)?,
            "streaming_send_timeout" | "send_timeout" => cfg.send_timeout = seconds(&name, &v)?,
            "connect_timeout" => cfg.connect_timeout = seconds(&name, &v)?,
            "reconnect_initial_backoff" => cfg.reconnect_initial_backoff = seconds(&name, &v)?,
            "reconnect_max_backoff" => cfg.reconnect_max_backoff = seconds(&name, &v)?,
            "tcp_no_delay" => cfg.tcp_no_delay = v.extract().map_err(|_| config_error(&name, "must be a bool"))?,
            "control_queue_frames" => cfg.control_queue_frames = count(&name, &v)?,
            "tcp_notsent_lowat" => cfg.tcp_notsent_lowat = count(&name, &v)?,
            "receive_huge_pages" => {
                cfg.receive_huge_pages = v.extract().map_err(|_| config_error(&name, "must be a bool"))?
            }
            "bulk_queue_bytes" => cfg.bulk_queue_bytes = count(&name, &v)?,
            "max_hops" => cfg.max_hops = count(&name, &v)?,
            "stream_threshold" => cfg.stream_threshold = count(&name, &v)?,
            "streaming_chunk_size" => cfg.stream_sender.chunk_size = count(&name, &v)? as u64,
            "streaming_window_size" => cfg.stream_sender.window_size = count(&name, &v)? as u64,
            "streaming_ack_interval" => {
                cfg.stream_sender.ack_interval = count(&name, &v)? as u64;
                cfg.stream_receiver.default_ack_interval = cfg.stream_sender.ack_interval;
            }
            "streaming_ack_progress_timeout" => cfg.stream_sender.ack_progress_timeout = seconds(&name, &v)?,
            "streaming_stall_check_interval" => cfg.stream_sender.stall_check_interval = seconds(&name, &v)?,
            "sfm_send_stall_consecutive_checks" => {
                cfg.stream_sender.stall_consecutive_checks = v
                    .extract()
                    .map_err(|_| config_error(&name, "must be a non-negative integer"))?
            }
            "sfm_close_stalled_connection" => {
                cfg.close_stalled_connection = v.extract().map_err(|_| config_error(&name, "must be a bool"))?
            }
            "streaming_read_timeout" => cfg.stream_receiver.read_timeout = seconds(&name, &v)?,
            "streaming_max_blob_size" => cfg.stream_receiver.max_size = count(&name, &v)? as u64,
            "streaming_max_out_seq_chunks" => {
                cfg.stream_receiver.max_out_of_order = Some(count(&name, &v)?).filter(|n| *n > 0)
            }
            "download_chunk_size" => cfg.download.chunk_size = count(&name, &v)? as u64,
            "download_cache_budget" => cfg.download.cache_budget = count(&name, &v)? as u64,
            "download_cache_ttl" => cfg.download.cache_ttl = seconds(&name, &v)?,
            "download_send_budget" => cfg.download.send_budget = count(&name, &v)? as u64,
            "min_download_timeout" => cfg.download.min_download_timeout = seconds(&name, &v)?,
            "download_receiver_idle_timeout" => cfg.download.receiver_idle_timeout = seconds(&name, &v)?,
            "streaming_per_request_timeout" => cfg.download.per_request_timeout = seconds(&name, &v)?,
            "download_max_retries" => {
                cfg.download.max_retries = v
                    .extract()
                    .map_err(|_| config_error(&name, "must be a non-negative integer"))?
            }
            "download_retry_backoff" => cfg.download.retry_backoff = seconds(&name, &v)?,
            "download_retry_max_backoff" => cfg.download.retry_max_backoff = seconds(&name, &v)?,
            "download_max_inflight" => cfg.download.max_inflight = count(&name, &v)?,
            "download_fault_drop_every" => cfg.download.fault_drop_every = count(&name, &v)? as u64,
            other => return Err(config_error(other, "unknown transport setting")),
        }
    }
    cfg.validate().map_err(|e| config_error(e.name, &e.reason))?;
    Ok(cfg)
}

/// The core's defaults, so that the Python settings object shows the same values the transport uses.
#[pyfunction]
pub fn default_comm_config(py: Python<'_>) -> PyResult<Py<PyDict>> {
    let cfg = CommConfig::default();
    let d = PyDict::new(py);
    d.set_item("max_frame_size", cfg.max_frame_size)?;
    d.set_item("heartbeat_interval", cfg.heartbeat_interval.as_secs_f64())?;
    d.set_item("heartbeat_timeout", cfg.heartbeat_timeout.as_secs_f64())?;
    d.set_item("streaming_send_timeout", cfg.send_timeout.as_secs_f64())?;
    d.set_item("connect_timeout", cfg.connect_timeout.as_secs_f64())?;
    d.set_item("reconnect_initial_backoff", cfg.reconnect_initial_backoff.as_secs_f64())?;
    d.set_item("reconnect_max_backoff", cfg.reconnect_max_backoff.as_secs_f64())?;
    d.set_item("tcp_no_delay", cfg.tcp_no_delay)?;
    d.set_item("control_queue_frames", cfg.control_queue_frames)?;
    d.set_item("tcp_notsent_lowat", cfg.tcp_notsent_lowat)?;
    d.set_item("receive_huge_pages", cfg.receive_huge_pages)?;
    d.set_item("bulk_queue_bytes", cfg.bulk_queue_bytes)?;
    d.set_item("max_hops", cfg.max_hops)?;
    d.set_item("stream_threshold", cfg.stream_threshold)?;
    d.set_item("streaming_chunk_size", cfg.stream_sender.chunk_size)?;
    d.set_item("streaming_window_size", cfg.stream_sender.window_size)?;
    d.set_item("streaming_ack_interval", cfg.stream_sender.ack_interval)?;
    d.set_item(
        "streaming_ack_progress_timeout",
        cfg.stream_sender.ack_progress_timeout.as_secs_f64(),
    )?;
    d.set_item(
        "streaming_stall_check_interval",
        cfg.stream_sender.stall_check_interval.as_secs_f64(),
    )?;
    d.set_item(
        "sfm_send_stall_consecutive_checks",
        cfg.stream_sender.stall_consecutive_checks,
    )?;
    d.set_item("sfm_close_stalled_connection", cfg.close_stalled_connection)?;
    d.set_item("streaming_read_timeout", cfg.stream_receiver.read_timeout.as_secs_f64())?;
    d.set_item("streaming_max_blob_size", cfg.stream_receiver.max_size)?;
    d.set_item(
        "streaming_max_out_seq_chunks",
        cfg.stream_receiver.max_out_of_order.unwrap_or(0),
    )?;
    let dl = &cfg.download;
    d.set_item("download_chunk_size", dl.chunk_size)?;
    d.set_item("download_cache_budget", dl.cache_budget)?;
    d.set_item("download_cache_ttl", dl.cache_ttl.as_secs_f64())?;
    d.set_item("download_send_budget", dl.send_budget)?;
    d.set_item("min_download_timeout", dl.min_download_timeout.as_secs_f64())?;
    d.set_item("download_receiver_idle_timeout", dl.receiver_idle_timeout.as_secs_f64())?;
    d.set_item("streaming_per_request_timeout", dl.per_request_timeout.as_secs_f64())?;
    d.set_item("download_max_retries", dl.max_retries)?;
    d.set_item("download_retry_backoff", dl.retry_backoff.as_secs_f64())?;
    d.set_item("download_retry_max_backoff", dl.retry_max_backoff.as_secs_f64())?;
    d.set_item("download_max_inflight", dl.max_inflight)?;
    d.set_item("download_fault_drop_every", dl.fault_drop_every)?;
    Ok(d.unbind())
}
