//! The callback pool: threads of their own that run Python callbacks, so that transport threads never wait for
//! the GIL. Transport threads only push jobs onto a queue.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

type Job = Box<dyn FnOnce(Python<'_>) + Send>;

pub struct CallbackPool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
}

impl CallbackPool {
    pub fn new(size: usize, name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || loop {
                let job = match rx.lock().expect("pool queue lock").recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                Python::attach(|py| job(py));
            })?;
        }
        Ok(CallbackPool { tx: Mutex::new(Some(tx)) })
    }

    /// Queues a job; false once the pool is shut down.
    pub fn submit(&self, job: impl FnOnce(Python<'_>) + Send + 'static) -> bool {
        match self.tx.lock().expect("pool lock").as_ref() {
            Some(tx) => tx.send(Box::new(job)).is_ok(),
            None => false,
        }
    }

    /// Lets the threads finish queued jobs and exit.
    pub fn shutdown(&self) {
        self.tx.lock().expect("pool lock").take();
    }
}
