//! Received payloads handed to Python without a copy: a read-only object over the received frame's memory that
//! supports the buffer protocol (`memoryview(p)`, `bytes(p)`, `numpy.frombuffer(p, ...)`).

use std::ffi::c_int;

use bytes::Bytes;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

#[pyclass(frozen, module = "flare._sfm")]
pub struct Payload {
    data: Bytes,
}

impl Payload {
    pub fn new(data: Bytes) -> Self {
        Payload { data }
    }

    pub fn bytes(&self) -> Bytes {
        self.data.clone()
    }
}

#[pymethods]
impl Payload {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, &self.data)
    }

    fn __repr__(&self) -> String {
        format!("<Payload of {} bytes>", self.data.len())
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        crate::convert::payload_from_py(Some(other))
            .map(|b| b == self.data)
            .unwrap_or(false)
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a received payload is read-only"));
        }
        let data = &slf.get().data;
        // SAFETY: `data` lives as long as `slf`, which the view keeps a reference to (`obj`).
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut std::ffi::c_void,
                data.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}
