//! The receiver's retry rule, sans-IO: which failure may be retried and after how long.

use std::time::Duration;

use crate::cell::ReturnCode;

/// Retry a request that failed for a passing reason ([`RetryPolicy::is_transient`]) at most `max_retries` times,
/// waiting `initial_backoff`, then twice that, and so on, never more than `max_backoff` (NVFlare: 3 retries, 2 s
/// doubling, capped at 60 s). Asking for the same piece again is always safe: owners answer the same state with the
/// same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Whether a request that failed with `code` may succeed when asked again: it timed out, or the connection it
    /// travelled on dropped (the reply was lost with it; a child reconnects and the owner keeps the transaction),
    /// or the owner is not reachable at this moment (its link is down and may come back within the backoff).
    /// Anything the owner itself answered (an unknown or ended reference, a failed producer) is final.
    pub fn is_transient(code: &ReturnCode) -> bool {
        matches!(
            code,
            ReturnCode::Timeout | ReturnCode::CommError | ReturnCode::TargetUnreachable
        )
    }

    /// The wait before retry number `retry` (1-based), or `None` once retries are used up.
    pub fn backoff(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        let factor = 2u32.saturating_pow(retry - 1);
        Some(self.initial_backoff.saturating_mul(factor).min(self.max_backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_stops_after_max_retries() {
        let policy = RetryPolicy {
            max_retries: 7,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        };
        let waits: Vec<_> = (1..=8).map(|n| policy.backoff(n).map(|d| d.as_secs())).collect();
        assert_eq!(
            waits,
            [Some(2), Some(4), Some(8), Some(16), Some(32), Some(60), Some(60), None]
        );
        assert_eq!(policy.backoff(0), None);
    }

    #[test]
    fn lost_connections_and_timeouts_are_retried_refusals_are_not() {
        for code in [
            ReturnCode::Timeout,
            ReturnCode::CommError,
            ReturnCode::TargetUnreachable,
        ] {
            assert!(RetryPolicy::is_transient(&code), "{code:?}");
        }
        for code in [
            ReturnCode::InvalidRequest,
            ReturnCode::ProcessException,
            ReturnCode::MsgTooBig,
            ReturnCode::InvalidTarget,
        ] {
            assert!(!RetryPolicy::is_transient(&code), "{code:?}");
        }
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let policy = RetryPolicy {
            max_retries: u32::MAX,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        };
        assert_eq!(policy.backoff(200), Some(Duration::from_secs(60)));
    }
}
