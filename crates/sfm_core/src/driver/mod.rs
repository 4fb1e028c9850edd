//! Byte pipes. A driver knows nothing of frames or messages: it turns a URL into a connected socket.

mod tcp;

pub use tcp::{connect, listen, DriverError, Url};
