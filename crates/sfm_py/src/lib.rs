//! `flare._sfm`: the Python face of `sfm_core`. Only the export list and module set-up live here.

mod callbacks;
mod cell;
mod convert;
mod download;
mod errors;
mod exit;
mod payload;
mod quant;
mod reader;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _sfm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    init_logging();
    m.add_class::<cell::PyCell>()?;
    m.add_class::<payload::Payload>()?;
    m.add_class::<reader::PyStreamReader>()?;
    m.add_class::<download::PyAbortSignal>()?;
    m.add_class::<download::PyDownloadService>()?;
    m.add_class::<download::PyDownloadReader>()?;
    m.add_function(wrap_pyfunction!(download::download, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::configure_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(convert::default_comm_config, m)?)?;
    m.add_function(wrap_pyfunction!(quant::quantize_blockwise8, m)?)?;
    m.add_function(wrap_pyfunction!(quant::dequantize_blockwise8, m)?)?;
    m.add_function(wrap_pyfunction!(quant::quantize_4bit, m)?)?;
    m.add_function(wrap_pyfunction!(quant::dequantize_4bit, m)?)?;
    m.add_function(wrap_pyfunction!(quant::cast_floats, m)?)?;
    m.add_function(wrap_pyfunction!(quant::code_table, m)?)?;
    exit::register_hook(m)?;
    Ok(())
}

/// Transport logs go to stderr, filtered by `FLARE_LOG` (e.g. `info`, `sfm_core=debug`; default `warn`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLARE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
