//! Interpreter exit while native threads are busy.
//!
//! When the interpreter finalizes, Python ends any other thread that takes the GIL with `pthread_exit`, and that
//! unwinding through Rust frames aborts the whole process: a process exiting while a daemon thread waits in a flare
//! call, or while a callback thread runs Python code, would die of SIGABRT instead of exiting. So an `atexit` hook
//! (registered at import: it runs after the hooks of code that imports flare, which may still use cells) first stops
//! the callback pools from starting callbacks and gives the running ones [`CALLBACK_DRAIN`] to end, then records the
//! thread that finalizes. From then on every other thread stays out of Python: it parks until the process is gone.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// Longest an exiting interpreter waits for Python callbacks that are running to end.
const CALLBACK_DRAIN: Duration = Duration::from_secs(1);

static CALLBACKS_STOPPED: AtomicBool = AtomicBool::new(false);
static CALLBACKS_RUNNING: AtomicUsize = AtomicUsize::new(0);
static FINALIZER: OnceLock<ThreadId> = OnceLock::new();

pub fn register_hook(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(interpreter_exiting, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}

#[pyfunction]
fn interpreter_exiting(py: Python<'_>) {
    CALLBACKS_STOPPED.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + CALLBACK_DRAIN;
        while CALLBACKS_RUNNING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let _ = FINALIZER.set(std::thread::current().id());
}

/// Whether this thread must not take the GIL again: the interpreter is finalizing on another thread.
pub fn must_stay_out_of_python() -> bool {
    FINALIZER
        .get()
        .is_some_and(|finalizer| *finalizer != std::thread::current().id())
}

/// Parks the calling thread until the process ends: the fate of a thread that must stay out of Python.
pub fn park_until_exit() -> ! {
    loop {
        std::thread::park();
    }
}

/// Counts a Python callback as running while it lives.
pub struct RunningCallback(());

impl RunningCallback {
    /// None once the interpreter is exiting: start no more callbacks.
    pub fn start() -> Option<Self> {
        // Counted before the check, and the hook stops before it counts: one of the two always sees the other.
        CALLBACKS_RUNNING.fetch_add(1, Ordering::SeqCst);
        let running = RunningCallback(());
        (!CALLBACKS_STOPPED.load(Ordering::SeqCst)).then_some(running)
    }
}

impl Drop for RunningCallback {
    fn drop(&mut self) {
        CALLBACKS_RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}
