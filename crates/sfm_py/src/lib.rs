//! `flare._sfm`: the Python face of `sfm_core`. Only the export list and module set-up live here.

mod callbacks;
mod cell;
mod convert;
mod errors;
mod payload;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _sfm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<cell::PyCell>()?;
    m.add_class::<payload::Payload>()?;
    m.add_function(wrap_pyfunction!(runtime::configure_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(convert::default_comm_config, m)?)?;
    Ok(())
}
