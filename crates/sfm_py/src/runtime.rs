//! The process-wide tokio runtime that runs every cell's transport tasks, and the one way Python threads wait on it.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::{Handle, Runtime};

struct Shared {
    runtime: Option<Runtime>,
    /// The process that built the runtime: after a fork the child has none of its threads and must build its own.
    pid: u32,
    worker_threads: usize,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    runtime: None,
    pid: 0,
    worker_threads: 2,
});

/// How often a waiting call wakes up to let Python handle signals (Ctrl-C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Sets the number of transport threads; takes effect if no cell has started yet in this process.
#[pyfunction]
pub fn configure_runtime(worker_threads: usize) -> PyResult<()> {
    if worker_threads == 0 {
        return Err(crate::errors::config_error("transport_threads", "must be at least 1"));
    }
    SHARED.lock().expect("runtime lock").worker_threads = worker_threads;
    Ok(())
}

pub fn handle() -> PyResult<Handle> {
    let mut shared = SHARED.lock().expect("runtime lock");
    let pid = std::process::id();
    if shared.runtime.is_some() && shared.pid != pid {
        // Inherited across fork: its threads do not exist here, and dropping it would wait for them forever.
        std::mem::forget(shared.runtime.take());
    }
    if shared.runtime.is_none() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(shared.worker_threads)
            .thread_name("flare-transport")
            .enable_all()
            .build()
            .map_err(|e| crate::errors::transport_error(format!("cannot start the transport runtime: {e}")))?;
        shared.runtime = Some(rt);
        shared.pid = pid;
    }
    Ok(shared.runtime.as_ref().expect("runtime").handle().clone())
}

/// Runs `fut` to completion with the GIL released, waking every 100 ms to let Python raise KeyboardInterrupt.
pub fn wait<F>(py: Python<'_>, handle: &Handle, fut: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    wait_with(py, handle, fut, |_| Ok(()))
}

/// As [`wait`], running `between` with the GIL at every wake-up and once more at the end, on this thread: how
/// a blocking call reports progress to Python callbacks without a transport thread ever taking the GIL.
pub fn wait_with<F>(
    py: Python<'_>,
    handle: &Handle,
    fut: F,
    mut between: impl FnMut(Python<'_>) -> PyResult<()>,
) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let mut fut = Box::pin(fut);
    loop {
        let done = py.detach(|| {
            let done = handle.block_on(async { tokio::time::timeout(SIGNAL_CHECK_INTERVAL, &mut fut).await });
            if crate::exit::must_stay_out_of_python() {
                crate::exit::park_until_exit();
            }
            done
        });
        between(py)?;
        if let Ok(output) = done {
            return Ok(output);
        }
        py.check_signals()?;
    }
}

/// Runs `step` on the reader held in `slot` with the GIL released, and puts the reader back. The reader is taken
/// out of its slot for the wait, so no lock is held across it; another thread reading meanwhile gets an error.
pub fn wait_taken<R, T, Fut>(
    py: Python<'_>,
    slot: &Mutex<Option<R>>,
    what: &str,
    step: impl FnOnce(R) -> Fut,
) -> PyResult<T>
where
    R: Send,
    T: Send,
    Fut: Future<Output = (R, T)> + Send,
{
    let taken = slot.lock().expect("reader lock").take();
    let Some(reader) = taken else {
        return Err(crate::errors::transport_error(format!(
            "this {what} is closed, or in use by another thread"
        )));
    };
    let (reader, outcome) = wait(py, &handle()?, step(reader))?;
    *slot.lock().expect("reader lock") = Some(reader);
    Ok(outcome)
}
