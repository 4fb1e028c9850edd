//! flare's transport core: NVFlare-compatible SFM frames, TCP connections with a control lane ahead of a bulk lane,
//! and cells named by FQCN that route request/reply traffic through a tree of relays.
//!
//! [`quant`] holds the CPU kernels of the quantization filters (bitsandbytes-compatible 8- and 4-bit blocks).
//!
//! This crate knows nothing of Python; `crates/sfm_py` binds it.

pub mod cell;
pub mod config;
pub mod conn;
pub mod download;
pub mod driver;
pub mod frame;
pub mod quant;
pub mod stream;

pub use cell::{Cell, Message, ReturnCode};
pub use config::CommConfig;
