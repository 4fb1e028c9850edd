//! Pull downloads from Python: `DownloadService` (the owner side of a cell), `download` (pull one reference, into
//! memory or a file), `DownloadReader` (pull one reference piece by piece) and `AbortSignal`.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use sfm_core::download::{
    self as core, AbortSignal, DownloadOptions, DownloadReader, DownloadService, DownloadStats, FileSink, ItemProducer,
    MemorySink, Piece, ReceiverStatus, Source, TransactionOptions,
};

use crate::cell::{reporting, PyCell};
use crate::convert::{payload_from_py, seconds};
use crate::errors::{config_error, from_download_error, transport_error};
use crate::payload::Payload;
use crate::runtime;

/// Stops downloads that were given it, from any thread.
#[pyclass(name = "AbortSignal", module = "flare._sfm", frozen)]
#[derive(Default)]
pub struct PyAbortSignal {
    signal: AbortSignal,
}

#[pymethods]
impl PyAbortSignal {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn trigger(&self) {
        self.signal.trigger();
    }

    fn reset(&self) {
        self.signal.reset();
    }

    #[getter]
    fn triggered(&self) -> bool {
        self.signal.is_triggered()
    }
}

fn status_pair(status: &ReceiverStatus) -> (&'static str, String) {
    let reason = match status {
        ReceiverStatus::Failed(why) => why.clone(),
        ReceiverStatus::InProgress => "still in progress".into(),
        ReceiverStatus::Success => String::new(),
    };
    (status.as_str(), reason)
}

/// Items made by a Python callable `produce(index) -> bytes-like`, called with the GIL on a blocking thread.
struct PyItems {
    produce: Py<PyAny>,
}

impl ItemProducer for PyItems {
    fn produce(&self, index: u64) -> Result<Bytes, String> {
        if crate::exit::must_stay_out_of_python() {
            return Err("the process is exiting".into());
        }
        Python::attach(|py| {
            let item = self.produce.bind(py).call1((index,)).map_err(|e| {
                e.display(py);
                format!("item producer raised {e}")
            })?;
            payload_from_py(Some(&item)).map_err(|e| format!("item {index}: {e}"))
        })
    }
}

/// The owner side of a cell's downloads. Every `DownloadService(cell)` of one cell is the same service.
#[pyclass(name = "DownloadService", module = "flare._sfm", frozen)]
pub struct PyDownloadService {
    cell: Py<PyCell>,
    service: DownloadService,
}

impl PyDownloadService {
    /// The given chunk size, else the cell's `download_chunk_size`.
    fn chunk_size(&self, chunk_size: Option<u64>) -> u64 {
        chunk_size.unwrap_or_else(|| self.cell.get().core().config().download.chunk_size)
    }

    fn add(
        &self,
        tx_id: &str,
        source: Result<Source, core::DownloadError>,
        ref_id: Option<String>,
    ) -> PyResult<String> {
        let source = source.map_err(from_download_error)?;
        self.service
            .add_source(tx_id, source, ref_id)
            .map_err(from_download_error)
    }
}

#[pymethods]
impl PyDownloadService {
    #[new]
    fn new(cell: Py<PyCell>) -> PyResult<Self> {
        cell.get().check_process()?;
        let service = cell.get().download_service();
        Ok(PyDownloadService { cell, service })
    }

    /// Starts a transaction. `on_receiver(tx_id, ref_id, receiver, status, reason)` runs when a receiver finishes
    /// or fails a reference; `on_done(tx_id, status, refs, receivers)` once when the transaction ends, with
    /// `receivers` a list of `(receiver, ref_id, status, reason)`. Both run on the cell's callback pool.
    #[pyo3(signature = (timeout=None, num_receivers=0, tx_id=None, on_receiver=None, on_done=None))]
    fn new_transaction(
        &self,
        timeout: Option<&Bound<'_, PyAny>>,
        num_receivers: usize,
        tx_id: Option<String>,
        on_receiver: Option<Py<PyAny>>,
        on_done: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(config_error("timeout", "must be greater than zero"));
        }
        let cell = self.cell.get();
        let on_receiver = on_receiver.map(|cb| {
            let run = |py: Python<'_>, cb: &Py<PyAny>, e: core::table::ReceiverEvent| {
                let (status, reason) = status_pair(&e.status);
                cb.bind(py)
                    .call1((e.tx_id, e.ref_id, e.receiver, status, reason))
                    .map(drop)
            };
            Arc::new(cell.pooled(cb, reporting(run))) as core::service::ReceiverCallback
        });
        let on_done = on_done.map(|cb| {
            let run = |py: Python<'_>, cb: &Py<PyAny>, o: core::TxOutcome| {
                let receivers: Vec<_> = o
                    .receivers
                    .iter()
                    .map(|(who, rid, status)| {
                        let (status, reason) = status_pair(status);
                        (who.clone(), rid.clone(), status, reason)
                    })
                    .collect();
                cb.bind(py)
                    .call1((o.tx_id, o.status.as_str(), o.refs, receivers))
                    .map(drop)
            };
            Arc::new(cell.pooled(cb, reporting(run))) as core::service::DoneCallback
        });
        Ok(self.service.new_transaction(TransactionOptions {
            tx_id,
            timeout,
            num_receivers,
            on_receiver,
            on_done,
        }))
    }

    /// Serves a bytes-like object (borrowed, not copied) in chunks of `chunk_size`.
    #[pyo3(signature = (tx_id, data, chunk_size=None, ref_id=None))]
    fn add_bytes(
        &self,
        tx_id: &str,
        data: &Bound<'_, PyAny>,
        chunk_size: Option<u64>,
        ref_id: Option<String>,
    ) -> PyResult<String> {
        let data = payload_from_py(Some(data))?;
        self.add(tx_id, Source::memory(data, self.chunk_size(chunk_size)), ref_id)
    }

    /// Serves the file at `path`, read chunk by chunk.
    #[pyo3(signature = (tx_id, path, chunk_size=None, ref_id=None))]
    fn add_file(
        &self,
        tx_id: &str,
        path: PathBuf,
        chunk_size: Option<u64>,
        ref_id: Option<String>,
    ) -> PyResult<String> {
        self.add(tx_id, Source::file(&path, self.chunk_size(chunk_size)), ref_id)
    }

    /// Serves `count` items made on demand by `produce(index) -> bytes-like`; a reply packs items up to
    /// `max_chunk_size` bytes.
    #[pyo3(signature = (tx_id, produce, count, max_chunk_size=None, ref_id=None))]
    fn add_items(
        &self,
        tx_id: &str,
        produce: Py<PyAny>,
        count: u64,
        max_chunk_size: Option<u64>,
        ref_id: Option<String>,
    ) -> PyResult<String> {
        let producer = Arc::new(PyItems { produce });
        self.add(
            tx_id,
            Source::items(producer, count, self.chunk_size(max_chunk_size)),
            ref_id,
        )
    }

    /// Ends a transaction now; False if there was none.
    fn delete_transaction(&self, tx_id: &str) -> bool {
        self.service.delete_transaction(tx_id)
    }

    /// `{"refs", "num_receivers", "active_receivers", "receivers", "timeout"}` of a live transaction, else None.
    fn transaction_info<'py>(&self, py: Python<'py>, tx_id: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(info) = self.service.transaction_info(tx_id) else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("refs", info.refs)?;
        d.set_item("num_receivers", info.num_receivers)?;
        d.set_item("active_receivers", info.active_receivers)?;
        let receivers: Vec<_> = info
            .receivers
            .iter()
            .map(|(who, rid, status)| {
                let status = match status {
                    ReceiverStatus::InProgress => "in_progress",
                    other => other.as_str(),
                };
                (who.clone(), rid.clone(), status)
            })
            .collect();
        d.set_item("receivers", receivers)?;
        d.set_item("timeout", info.timeout.as_secs_f64())?;
        Ok(Some(d))
    }

    /// Bytes of produced chunks the cache holds now.
    #[getter]
    fn cache_used(&self) -> u64 {
        self.service.cache_used()
    }

    /// Sources registered and not yet released.
    #[getter]
    fn live_sources(&self) -> usize {
        self.service.live_sources()
    }
}

/// Download options from keyword arguments; unset ones come from the cell's settings.
fn options(
    cell: &PyCell,
    per_request_timeout: Option<&Bound<'_, PyAny>>,
    max_retries: Option<u32>,
    max_inflight: Option<usize>,
    abort: Option<&PyAbortSignal>,
) -> PyResult<DownloadOptions> {
    let mut opts = DownloadOptions::from_config(&cell.core().config().download);
    if let Some(t) = per_request_timeout.filter(|t| !t.is_none()) {
        opts.per_request_timeout = seconds("per_request_timeout", t)?;
        if opts.per_request_timeout.is_zero() {
            return Err(config_error("per_request_timeout", "must be greater than zero"));
        }
    }
    if let Some(n) = max_retries {
        opts.retry.max_retries = n;
    }
    if let Some(n) = max_inflight {
        if n == 0 {
            return Err(config_error("max_inflight", "must be at least 1"));
        }
        opts.max_inflight = n;
    }
    if let Some(abort) = abort {
        opts.abort = abort.signal.clone();
    }
    Ok(opts)
}

fn stats_to_py<'py>(py: Python<'py>, stats: &DownloadStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("bytes", stats.bytes)?;
    d.set_item("total_size", stats.total_size)?;
    d.set_item("requests", stats.requests)?;
    d.set_item("retries", stats.retries)?;
    Ok(d)
}

fn payloads(py: Python<'_>, items: Vec<Bytes>) -> PyResult<Bound<'_, PyList>> {
    let items: Vec<Py<Payload>> = items
        .into_iter()
        .map(|b| Py::new(py, Payload::new(b)))
        .collect::<PyResult<_>>()?;
    PyList::new(py, items)
}

/// Pulls `ref_id` from `owner`: into memory (returns `(payload, items, stats)`), or into the file at `path`
/// (returns `(None, [], stats)`). `progress(done, total)` runs on this thread, at most every `progress_interval`
/// seconds and once at the end.
#[pyfunction]
#[pyo3(signature = (
    cell, owner, ref_id, path=None, per_request_timeout=None, max_retries=None, max_inflight=None, abort=None,
    progress=None, progress_interval=1.0
))]
#[allow(clippy::too_many_arguments)] // mirrors the Python signature
pub fn download<'py>(
    py: Python<'py>,
    cell: &PyCell,
    owner: &str,
    ref_id: &str,
    path: Option<PathBuf>,
    per_request_timeout: Option<&Bound<'_, PyAny>>,
    max_retries: Option<u32>,
    max_inflight: Option<usize>,
    abort: Option<&PyAbortSignal>,
    progress: Option<Py<PyAny>>,
    progress_interval: f64,
) -> PyResult<(Option<Payload>, Bound<'py, PyList>, Bound<'py, PyDict>)> {
    cell.check_process()?;
    let mut opts = options(cell, per_request_timeout, max_retries, max_inflight, abort)?;
    opts.progress_interval = Duration::try_from_secs_f64(progress_interval)
        .map_err(|_| config_error("progress_interval", "must be a non-negative number of seconds"))?;
    let (tx, rx) = mpsc::channel::<(u64, Option<u64>)>();
    if progress.is_some() {
        let tx = Mutex::new(tx);
        opts.progress = Some(Arc::new(move |done, total| {
            let _ = tx.lock().expect("progress lock").send((done, total));
        }));
    }
    let report = |py: Python<'_>| -> PyResult<()> {
        if let Some(cb) = &progress {
            for (done, total) in rx.try_iter() {
                cb.bind(py).call1((done, total))?;
            }
        }
        Ok(())
    };
    let core = cell.core().clone();
    let (owner, ref_id) = (owner.to_string(), ref_id.to_string());
    let handle = core.runtime().clone();
    // The download runs as its own task: if Ctrl-C interrupts the wait, the abort signal stops it.
    let abort_on_exit = opts.abort.clone();
    let task = handle.spawn(async move {
        match path {
            Some(path) => {
                let mut sink = FileSink::new(&path);
                let stats = core::download(&core, &owner, &ref_id, &mut sink, opts).await?;
                Ok((None, stats))
            }
            None => {
                let mut sink = MemorySink::default();
                let stats = core::download(&core, &owner, &ref_id, &mut sink, opts).await?;
                Ok((Some(sink.into_parts()), stats))
            }
        }
    });
    let joined = runtime::wait_with(py, &handle, task, report).inspect_err(|_| abort_on_exit.trigger())?;
    let outcome = joined.map_err(|e| transport_error(format!("download task failed: {e}")))?;
    let (parts, stats) = outcome.map_err(from_download_error)?;
    let stats = stats_to_py(py, &stats)?;
    match parts {
        Some((bytes, items)) => Ok((Some(Payload::new(bytes)), payloads(py, items)?, stats)),
        None => Ok((None, PyList::empty(py), stats)),
    }
}

/// One reference pulled piece by piece: each piece is a `Payload` (byte sources) or a list of them (item sources).
/// Closing it (or dropping it) stops the download and tells the owner.
#[pyclass(name = "DownloadReader", module = "flare._sfm", frozen)]
pub struct PyDownloadReader {
    /// Taken out while a read is in progress, so that the GIL can be released without holding this lock.
    reader: Mutex<Option<DownloadReader>>,
    total_size: Mutex<Option<u64>>,
}

#[pymethods]
impl PyDownloadReader {
    #[new]
    #[pyo3(signature = (cell, owner, ref_id, per_request_timeout=None, max_retries=None, max_inflight=None, abort=None, capacity=4))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature
    fn new(
        cell: &PyCell,
        owner: &str,
        ref_id: &str,
        per_request_timeout: Option<&Bound<'_, PyAny>>,
        max_retries: Option<u32>,
        max_inflight: Option<usize>,
        abort: Option<&PyAbortSignal>,
        capacity: usize,
    ) -> PyResult<Self> {
        cell.check_process()?;
        let opts = options(cell, per_request_timeout, max_retries, max_inflight, abort)?;
        let reader = DownloadReader::start(cell.core(), owner, ref_id, opts, capacity);
        Ok(PyDownloadReader {
            reader: Mutex::new(Some(reader)),
            total_size: Mutex::new(None),
        })
    }

    /// Total bytes, once the first piece arrived and if the owner told it.
    #[getter]
    fn total_size(&self) -> Option<u64> {
        *self.total_size.lock().expect("size lock")
    }

    /// The next piece, or None at the end.
    fn read(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let (outcome, total_size) =
            runtime::wait_taken(py, &self.reader, "download reader", |mut reader| async move {
                let outcome = reader.next().await;
                let total_size = reader.total_size();
                (reader, (outcome, total_size))
            })?;
        *self.total_size.lock().expect("size lock") = total_size;
        match outcome.map_err(from_download_error)? {
            None => Ok(None),
            Some(Piece::Bytes(b)) => Ok(Some(Py::new(py, Payload::new(b))?.into_any())),
            Some(Piece::Items(items)) => Ok(Some(payloads(py, items)?.into_any().unbind())),
        }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.read(py)?.ok_or_else(|| PyStopIteration::new_err(()))
    }

    /// Stops the download; the owner is told.
    fn close(&self) {
        self.reader.lock().expect("reader lock").take();
    }
}
