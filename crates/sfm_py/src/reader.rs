//! `flare._sfm.StreamReader`: an incoming stream read chunk by chunk from Python, in order, each chunk a zero-copy
//! `Payload`. Waiting releases the GIL.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sfm_core::cell::StreamReader;

use crate::convert::headers_to_py;
use crate::errors::{config_error, from_stream_error};
use crate::payload::Payload;
use crate::runtime;

#[pyclass(name = "StreamReader", module = "flare._sfm", frozen)]
pub struct PyStreamReader {
    /// Taken out while a read is in progress, so that the GIL can be released without holding this lock.
    reader: Mutex<Option<StreamReader>>,
    headers: Py<PyDict>,
    origin: String,
    size: Option<u64>,
    idle_timeout: Duration,
}

impl PyStreamReader {
    pub fn new(py: Python<'_>, reader: StreamReader, idle_timeout: Duration) -> PyResult<Self> {
        Ok(PyStreamReader {
            headers: headers_to_py(py, reader.headers())?,
            origin: reader.origin().to_string(),
            size: reader.size(),
            reader: Mutex::new(Some(reader)),
            idle_timeout,
        })
    }
}

#[pymethods]
impl PyStreamReader {
    #[getter]
    fn headers(&self, py: Python<'_>) -> Py<PyDict> {
        self.headers.clone_ref(py)
    }

    #[getter]
    fn origin(&self) -> &str {
        &self.origin
    }

    #[getter]
    fn size(&self) -> Option<u64> {
        self.size
    }

    /// The next chunk, or None at the end. Waits at most `timeout` seconds (default: `streaming_read_timeout`).
    #[pyo3(signature = (timeout=None))]
    fn read_chunk(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Payload>> {
        let idle = match timeout {
            Some(t) => Duration::try_from_secs_f64(t).map_err(|_| config_error("timeout", "must be >= 0 seconds"))?,
            None => self.idle_timeout,
        };
        let outcome = runtime::wait_taken(py, &self.reader, "stream reader", |mut reader| async move {
            let outcome = reader.next_chunk(idle).await;
            (reader, outcome)
        })?;
        Ok(outcome.map_err(from_stream_error)?.map(Payload::new))
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Payload> {
        self.read_chunk(py, None)?.ok_or_else(|| PyStopIteration::new_err(()))
    }

    /// Stops reading; a stream not read to its end is aborted and its sender told.
    fn close(&self) {
        self.reader.lock().expect("reader lock").take();
    }
}
