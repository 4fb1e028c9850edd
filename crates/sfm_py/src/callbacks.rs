//! The callback pool: threads of their own that run Python callbacks, so that transport threads never wait for
//! the GIL. Transport threads only push jobs onto a queue.

use std::sync::Mutex;

use crossbeam_channel::Sender;
use pyo3::prelude::*;

use crate::exit::{park_until_exit, RunningCallback};

type Job = Box<dyn FnOnce(Python<'_>) + Send>;

pub struct CallbackPool {
    tx: Mutex<Option<Sender<Job>>>,
}

impl CallbackPool {
    pub fn new(size: usize, name: &str) -> std::io::Result<Self> {
        // A multi-consumer queue: idle workers take jobs without contending on a lock.
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..size.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                while let Ok(job) = rx.recv() {
                    let Some(_running) = RunningCallback::start() else {
                        std::mem::forget(job); // dropping it could release Python objects
                        park_until_exit();
                    };
                    Python::attach(job);
                }
            })?;
        }
        Ok(CallbackPool {
            tx: Mutex::new(Some(tx)),
        })
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
