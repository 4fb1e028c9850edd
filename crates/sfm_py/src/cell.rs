//! `flare._sfm.Cell`: a core cell driven from Python. Blocking calls release the GIL; handlers run on the cell's
//! callback pool.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use sfm_core::cell::{Cell, IncomingRequest, Message, PeerEvent, ReturnCode};
use sfm_core::download::DownloadService;
use sfm_core::frame::Headers;

use crate::callbacks::CallbackPool;
use crate::convert::{comm_config_from_py, headers_to_py, payload_from_py, py_to_headers};
use crate::errors::{config_error, from_cell_error, from_stream_error, transport_error};
use crate::payload::Payload;
use crate::runtime;

/// Default number of threads running Python callbacks of one cell (`callback_pool_size`).
const DEFAULT_CALLBACK_POOL_SIZE: usize = 8;

#[pyclass(name = "Cell", module = "flare._sfm", frozen)]
pub struct PyCell {
    cell: Cell,
    pool: Arc<CallbackPool>,
    pid: u32,
    /// Started on first use by an owner of downloads; one per cell.
    downloads: OnceLock<DownloadService>,
}

fn timeout_arg(timeout: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(timeout)
        .map_err(|_| config_error("timeout", "must be a non-negative number of seconds"))
}

fn reply_to_py(py: Python<'_>, reply: &Message) -> PyResult<Py<PyTuple>> {
    let headers = headers_to_py(py, &reply.headers)?;
    let payload = Py::new(py, Payload::new(reply.payload.clone()))?;
    Ok(PyTuple::new(py, [headers.into_any(), payload.into_any()])?.unbind())
}

impl PyCell {
    /// Wraps a Python callback so that each event is queued to the cell's callback pool, where `run` calls it:
    /// transport threads only enqueue.
    pub(crate) fn pooled<T, F>(&self, callback: Py<PyAny>, run: F) -> impl Fn(T) + Send + Sync + 'static
    where
        T: Send + 'static,
        F: Fn(Python<'_>, &Py<PyAny>, T) + Send + Sync + Clone + 'static,
    {
        let pool = self.pool.clone();
        let callback = Arc::new(callback);
        move |event: T| {
            let (callback, run) = (callback.clone(), run.clone());
            pool.submit(move |py| run(py, &callback, event));
        }
    }

    pub(crate) fn core(&self) -> &Cell {
        &self.cell
    }

    pub(crate) fn download_service(&self) -> DownloadService {
        self.downloads.get_or_init(|| DownloadService::new(&self.cell)).clone()
    }

    pub(crate) fn check_process(&self) -> PyResult<()> {
        if self.pid != std::process::id() {
            return Err(transport_error(format!(
                "cell {:?} was created in another process (before a fork); create a new cell in this one",
                self.cell.fqcn()
            )));
        }
        Ok(())
    }
}

/// A callback runner whose Python exceptions are printed (there is nobody else to tell).
pub(crate) fn reporting<T>(
    run: impl Fn(Python<'_>, &Py<PyAny>, T) -> PyResult<()> + Send + Sync + Clone + 'static,
) -> impl Fn(Python<'_>, &Py<PyAny>, T) + Send + Sync + Clone + 'static {
    move |py, callback, event| {
        if let Err(e) = run(py, callback, event) {
            e.display(py);
        }
    }
}

/// Runs a Python request handler and turns what it returns into the reply.
fn run_handler(py: Python<'_>, callback: &Py<PyAny>, request: IncomingRequest) {
    let IncomingRequest { message, responder } = request;
    let outcome = (|| -> PyResult<Option<Message>> {
        let headers = headers_to_py(py, &message.headers)?;
        let payload = Py::new(py, Payload::new(message.payload))?;
        let result = callback.bind(py).call1((headers, payload))?;
        if result.is_none() {
            return Ok(None);
        }
        let (headers, payload): (Option<Bound<'_, PyAny>>, Option<Bound<'_, PyAny>>) = result.extract()?;
        Ok(Some(Message::new(
            py_to_headers(headers.as_ref())?,
            payload_from_py(payload.as_ref())?,
        )))
    })();
    match outcome {
        Ok(Some(reply)) => responder.reply(reply),
        Ok(None) => drop(responder),
        Err(err) => {
            let text = err.to_string();
            err.display(py);
            responder.reply(Message::error_reply(
                ReturnCode::ProcessException,
                format!("handler raised {text}"),
            ));
        }
    }
}

#[pymethods]
impl PyCell {
    /// `Cell(fqcn, settings=None)`: settings is a dict of transport settings (seconds for durations) plus
    /// `callback_pool_size`.
    #[new]
    #[pyo3(signature = (fqcn, settings=None))]
    fn new(fqcn: &str, settings: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut pool_size = DEFAULT_CALLBACK_POOL_SIZE;
        let transport = match settings {
            Some(s) => {
                let copy = s.copy()?;
                if let Some(v) = copy.get_item("callback_pool_size")? {
                    pool_size = v
                        .extract()
                        .map_err(|_| config_error("callback_pool_size", "must be a positive integer"))?;
                    if pool_size == 0 {
                        return Err(config_error("callback_pool_size", "must be a positive integer"));
                    }
                    copy.del_item("callback_pool_size")?;
                }
                Some(copy)
            }
            None => None,
        };
        let config = comm_config_from_py(transport.as_ref())?;
        let handle = runtime::handle()?;
        let cell = Cell::with_handle(fqcn, config, handle).map_err(from_cell_error)?;
        let pool = CallbackPool::new(pool_size, "flare-callback")
            .map_err(|e| transport_error(format!("cannot start the callback pool: {e}")))?;
        Ok(PyCell {
            cell,
            pool: Arc::new(pool),
            pid: std::process::id(),
            downloads: OnceLock::new(),
        })
    }

    #[getter]
    fn fqcn(&self) -> &str {
        self.cell.fqcn()
    }

    /// Listens for children on `url`; returns the bound URL (port 0 picks one).
    fn listen(&self, py: Python<'_>, url: &str) -> PyResult<String> {
        self.check_process()?;
        let cell = self.cell.clone();
        let url = url.to_string();
        let bound = runtime::wait(py, self.cell.runtime(), async move { cell.listen(&url).await })?;
        Ok(bound.map_err(from_cell_error)?.to_string())
    }

    /// Connects to a parent in the background; reconnects with backoff when the link drops.
    fn connect(&self, url: &str) -> PyResult<()> {
        self.check_process()?;
        self.cell.connect(url).map_err(from_cell_error)
    }

    /// `callback(headers: dict, payload: Payload) -> None | (headers | None, payload | None)`, run on the pool.
    /// If the pool is gone (the cell is closing), a request is dropped and its responder answers OK.
    fn register_request_cb(&self, channel: &str, topic: &str, callback: Py<PyAny>) {
        self.cell
            .register_request_handler(channel, topic, Arc::new(self.pooled(callback, run_handler)));
    }

    /// `callback(headers: dict, payload: Payload)` for each whole blob sent to (channel, topic), run on the pool.
    fn register_blob_cb(&self, channel: &str, topic: &str, callback: Py<PyAny>) {
        let run = |py: Python<'_>, callback: &Py<PyAny>, blob: Message| {
            let headers = headers_to_py(py, &blob.headers)?;
            callback
                .bind(py)
                .call1((headers, Py::new(py, Payload::new(blob.payload))?))
                .map(drop)
        };
        self.cell
            .register_blob_handler(channel, topic, Arc::new(self.pooled(callback, reporting(run))));
    }

    /// Streams `payload` to `target`'s blob callback for (channel, topic); returns once the last chunk is sent.
    #[pyo3(signature = (target, channel, topic, payload=None, headers=None))]
    fn send_blob(
        &self,
        py: Python<'_>,
        target: &str,
        channel: &str,
        topic: &str,
        payload: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.check_process()?;
        let (payload, headers) = (payload_from_py(payload)?, py_to_headers(headers)?);
        let cell = self.cell.clone();
        let (target, channel, topic) = (target.to_string(), channel.to_string(), topic.to_string());
        runtime::wait(py, self.cell.runtime(), async move {
            cell.send_blob(&target, &channel, &topic, headers, payload).await
        })?
        .map_err(from_stream_error)
    }

    /// `callback(reader: StreamReader)` for each new stream to (channel, topic), run on the pool as soon as the
    /// first chunk arrives; the reader yields chunks in order as they come.
    fn register_stream_cb(&self, channel: &str, topic: &str, callback: Py<PyAny>) {
        let idle = self.cell.config().stream_receiver.read_timeout;
        let run = move |py: Python<'_>, callback: &Py<PyAny>, reader: sfm_core::cell::StreamReader| {
            let reader = Py::new(py, crate::reader::PyStreamReader::new(py, reader, idle)?)?;
            callback.bind(py).call1((reader,)).map(drop)
        };
        self.cell
            .register_stream_reader(channel, topic, Arc::new(self.pooled(callback, reporting(run))));
    }

    /// Streams the file at `path` to `target`'s file callback for (channel, topic); returns the bytes sent.
    #[pyo3(signature = (target, channel, topic, path, headers=None))]
    fn send_file(
        &self,
        py: Python<'_>,
        target: &str,
        channel: &str,
        topic: &str,
        path: std::path::PathBuf,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        self.check_process()?;
        let headers = py_to_headers(headers)?;
        let cell = self.cell.clone();
        let (target, channel, topic) = (target.to_string(), channel.to_string(), topic.to_string());
        runtime::wait(py, self.cell.runtime(), async move {
            cell.send_file(&target, &channel, &topic, headers, &path).await
        })?
        .map_err(from_stream_error)
    }

    /// Files streamed to (channel, topic) are written into `directory`; `callback(headers, path, size)` runs on
    /// the pool once each is complete.
    fn register_file_cb(&self, channel: &str, topic: &str, directory: std::path::PathBuf, callback: Py<PyAny>) {
        type Received = (Headers, std::path::PathBuf, u64);
        let run = |py: Python<'_>, callback: &Py<PyAny>, (headers, path, size): Received| {
            callback
                .bind(py)
                .call1((headers_to_py(py, &headers)?, path, size))
                .map(drop)
        };
        let on_file = self.pooled(callback, reporting(run));
        let handler = move |headers: Headers, path: std::path::PathBuf, size: u64| on_file((headers, path, size));
        self.cell
            .register_file_handler(channel, topic, directory, Arc::new(handler));
    }

    /// `callback(event: "up" | "down", name: str, reason: str)`, run on the pool.
    fn on_peer_event(&self, callback: Py<PyAny>) {
        let run = |py: Python<'_>, callback: &Py<PyAny>, event: PeerEvent| {
            let (kind, name, reason) = match event {
                PeerEvent::Up(name) => ("up", name, String::new()),
                PeerEvent::Down { name, reason } => ("down", name, reason),
            };
            callback.bind(py).call1((kind, name, reason)).map(drop)
        };
        self.cell.on_peer_event(Arc::new(self.pooled(callback, reporting(run))));
    }

    /// Sends a request; returns `(headers, payload)` of the reply, whose `cn__return_code` says how it went.
    #[pyo3(signature = (target, channel, topic, payload=None, headers=None, timeout=10.0))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature
    fn request(
        &self,
        py: Python<'_>,
        target: &str,
        channel: &str,
        topic: &str,
        payload: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
        timeout: f64,
    ) -> PyResult<Py<PyTuple>> {
        self.check_process()?;
        let (payload, headers, timeout) = (
            payload_from_py(payload)?,
            py_to_headers(headers)?,
            timeout_arg(timeout)?,
        );
        let cell = self.cell.clone();
        let (target, channel, topic) = (target.to_string(), channel.to_string(), topic.to_string());
        let reply = runtime::wait(py, self.cell.runtime(), async move {
            cell.request(&target, &channel, &topic, headers, payload, timeout).await
        })?;
        reply_to_py(py, &reply)
    }

    /// Sends one request to each target concurrently; returns `[(target, headers, payload)]`.
    #[pyo3(signature = (targets, channel, topic, payload=None, headers=None, timeout=10.0))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature
    fn broadcast(
        &self,
        py: Python<'_>,
        targets: Vec<String>,
        channel: &str,
        topic: &str,
        payload: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
        timeout: f64,
    ) -> PyResult<Vec<(String, Py<PyTuple>)>> {
        self.check_process()?;
        let (payload, headers, timeout) = (
            payload_from_py(payload)?,
            py_to_headers(headers)?,
            timeout_arg(timeout)?,
        );
        let cell = self.cell.clone();
        let (channel, topic) = (channel.to_string(), topic.to_string());
        let replies = runtime::wait(py, self.cell.runtime(), async move {
            cell.broadcast(&targets, &channel, &topic, headers, payload, timeout)
                .await
        })?;
        replies
            .iter()
            .map(|(t, reply)| Ok((t.clone(), reply_to_py(py, reply)?)))
            .collect()
    }

    /// Sends without waiting for replies; returns `{target: ""}` on success or the reason it could not be sent.
    #[pyo3(signature = (targets, channel, topic, payload=None, headers=None))]
    fn fire_and_forget(
        &self,
        py: Python<'_>,
        targets: Vec<String>,
        channel: &str,
        topic: &str,
        payload: Option<&Bound<'_, PyAny>>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<(String, String)>> {
        self.check_process()?;
        let (payload, headers): (_, Headers) = (payload_from_py(payload)?, py_to_headers(headers)?);
        let cell = self.cell.clone();
        let (channel, topic) = (channel.to_string(), topic.to_string());
        runtime::wait(py, self.cell.runtime(), async move {
            cell.fire_and_forget(&targets, &channel, &topic, headers, payload).await
        })
    }

    /// Cells with a live connection to this one.
    fn peers(&self) -> Vec<String> {
        self.cell.peers()
    }

    /// Cells this one has a connection or a learned route to.
    fn reachable(&self) -> Vec<String> {
        self.cell.reachable()
    }

    /// Waits until `name` is directly connected or routed to; False on timeout.
    fn wait_for_peer(&self, py: Python<'_>, name: &str, timeout: f64) -> PyResult<bool> {
        self.check_process()?;
        let timeout = timeout_arg(timeout)?;
        let cell = self.cell.clone();
        let name = name.to_string();
        runtime::wait(py, self.cell.runtime(), async move {
            cell.wait_for_peer(&name, timeout).await
        })
    }

    /// Closes connections, stops listening and reconnecting, fails pending requests, and stops the callback pool.
    fn close(&self) {
        self.cell.close();
        self.pool.shutdown();
    }
}
