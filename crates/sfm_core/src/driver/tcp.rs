//! Plain TCP (`tcp://host:port`), the default driver.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Errors of the driver layer.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("bad url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot listen on {url}: {source}")]
    Listen { url: String, source: std::io::Error },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("connecting to {url} timed out after {timeout:?} (setting connect_timeout)")]
    ConnectTimeout { url: String, timeout: Duration },
}

/// A parsed endpoint URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, DriverError> {
        let bad = |reason: &str| DriverError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host:port"))?;
        match scheme {
            "tcp" => {}
            "stcp" | "grpc" | "grpcs" | "http" | "https" | "agrpc" | "agrpcs" => {
                return Err(bad("only the tcp:// driver is available in this build"))
            }
            _ => return Err(bad("unknown scheme; use tcp://host:port")),
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port must be a number from 0 to 65535"))?;
        Ok(Url {
            scheme: scheme.to_string(),
            host: host.to_string(),
            port,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

/// Binds a listener; port 0 picks a free port. Returns the listener and the URL it is reachable at.
pub async fn listen(url: &str) -> Result<(TcpListener, Url), DriverError> {
    let parsed = Url::parse(url)?;
    let listener = TcpListener::bind(parsed.authority())
        .await
        .map_err(|source| DriverError::Listen {
            url: url.to_string(),
            source,
        })?;
    let local: SocketAddr = listener.local_addr().map_err(|source| DriverError::Listen {
        url: url.to_string(),
        source,
    })?;
    let bound = Url {
        scheme: parsed.scheme,
        host: parsed.host,
        port: local.port(),
    };
    Ok((listener, bound))
}

/// Connects within `timeout`.
pub async fn connect(url: &str, timeout: Duration, no_delay: bool) -> Result<TcpStream, DriverError> {
    let parsed = Url::parse(url)?;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(parsed.authority()))
        .await
        .map_err(|_| DriverError::ConnectTimeout {
            url: url.to_string(),
            timeout,
        })?
        .map_err(|source| DriverError::Connect {
            url: url.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(no_delay);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_urls() {
        let u = Url::parse("tcp://127.0.0.1:8002").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8002));
        assert_eq!(u.to_string(), "tcp://127.0.0.1:8002");
        assert_eq!(Url::parse("tcp://[::1]:5").unwrap().to_string(), "tcp://[::1]:5");
    }

    #[test]
    fn rejects_bad_urls_with_reason() {
        for bad in [
            "127.0.0.1:1",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "ftp://h:1",
            "grpc://h:1",
        ] {
            let err = Url::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
