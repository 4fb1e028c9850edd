//! The one place where core errors become Python exceptions. The classes live in `flare.errors`, so that Python
//! code and Rust raise the same tree (`FlareTimeoutError` is also a builtin `TimeoutError`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

use sfm_core::cell::CellError;
use sfm_core::download::DownloadError;
use sfm_core::driver::DriverError;
use sfm_core::stream::StreamError;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn raise(class: &'static str, message: String) -> PyErr {
    Python::attach(|py| {
        let module = ERRORS.get_or_try_init(py, || PyModule::import(py, "flare.errors").map(Bound::unbind));
        match module.and_then(|m| m.bind(py).getattr(class)) {
            Ok(cls) => match cls.call1((message.clone(),)) {
                Ok(exc) => PyErr::from_value(exc),
                Err(e) => e,
            },
            Err(e) => e,
        }
    })
}

pub fn transport_error(message: String) -> PyErr {
    raise("TransportError", message)
}

pub fn config_error(setting: &str, reason: &str) -> PyErr {
    raise("ConfigError", format!("setting {setting}: {reason}"))
}

pub fn from_stream_error(err: StreamError) -> PyErr {
    let class = match &err {
        e if e.is_stall() => "StallDetected",
        StreamError::ReadTimeout { .. } => "FlareTimeoutError",
        StreamError::TooLarge { .. } => "FrameTooLarge",
        StreamError::Protocol(_) => "ProtocolError",
        StreamError::Config(_) => "ConfigError",
        StreamError::Aborted { .. }
        | StreamError::InvalidState { .. }
        | StreamError::AckStalled { .. }
        | StreamError::Stalled { .. } => "TransportError",
    };
    raise(class, err.to_string())
}

pub fn from_cell_error(err: CellError) -> PyErr {
    match err {
        CellError::InvalidName(why) => raise("ConfigError", format!("invalid cell name: {why}")),
        CellError::Config(e) => raise("ConfigError", e.to_string()),
        CellError::Driver(DriverError::BadUrl { .. }) => raise("ConfigError", err.to_string()),
        CellError::Driver(DriverError::ConnectTimeout { .. }) => raise("FlareTimeoutError", err.to_string()),
        CellError::Driver(e) => raise("TransportError", e.to_string()),
        CellError::Closed(_) => raise("ConnectionClosed", err.to_string()),
        CellError::NoRuntime => raise("TransportError", err.to_string()),
    }
}

pub fn from_download_error(err: DownloadError) -> PyErr {
    let class = match &err {
        DownloadError::Aborted { .. } => "DownloadAborted",
        DownloadError::TimedOut { .. } => "FlareTimeoutError",
        DownloadError::Protocol { .. } => "ProtocolError",
        DownloadError::Refused { .. }
        | DownloadError::ProducerFailed { .. }
        | DownloadError::Sink { .. }
        | DownloadError::NoTransaction(_)
        | DownloadError::DuplicateRef(_)
        | DownloadError::BadSource(_) => "DownloadError",
    };
    raise(class, err.to_string())
}
