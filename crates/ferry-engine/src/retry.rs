//! Exponential backoff for destination retries.

use std::time::Duration;

/// How a destination retries a message whose delivery failed with a retryable error
/// (connection refused, timeout, HTTP 5xx/429, negative ACK configured to retry).
///
/// The delay before attempt `n + 1` is `initial * multiplier^(n - 1)`, capped at `max`.
/// `max_attempts == 0` retries forever, which is the default: an interface that is down for a
/// weekend must not lose Friday's messages.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Growth factor between consecutive delays (at least 1.0).
    pub multiplier: f64,
    /// Total attempts before the message is marked `ERROR`; 0 means never give up.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            max_attempts: 0,
        }
    }
}

impl RetryPolicy {
    /// The delay to wait after `failed_attempts` consecutive failures (1-based).
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(64) as i32;
        let factor = self.multiplier.max(1.0).powi(exponent);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Whether another attempt is allowed after `attempts` attempts so far.
    pub fn allows_another(&self, attempts: u32) -> bool {
        self.max_attempts == 0 || attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backoff_doubles_from_one_second_to_five_minutes() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(2));
        assert_eq!(p.delay(3), Duration::from_secs(4));
        assert_eq!(p.delay(9), Duration::from_secs(256));
        assert_eq!(p.delay(10), Duration::from_secs(300));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(300));
        assert!(p.allows_another(1_000_000));
    }

    #[test]
    fn max_attempts_limits_retries() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(p.allows_another(2));
        assert!(!p.allows_another(3));
    }
}
