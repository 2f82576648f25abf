//! Keeping message content out of logs and out of the answers sent back to senders.
//!
//! An error about a message may quote it: a script throws `cannot admit DOE JANE`, a parse
//! error shows the bytes it choked on, a downstream system's negative ACK carries its own
//! text. Ferry's errors are written as `summary: detail` (`transform 1: <script>:3: Error:
//! …`, `negative ACK AE: …`, `connection failed: …`), and the summary never holds message
//! content. So:
//!
//! - **Logs** (at every level, TRACE included) get [`Redacted`]: the summary only, unless
//!   the process was started with the explicit opt-in (`FERRY_LOG_PHI=1`, which `ferry run`
//!   passes to [`allow_in_logs`]). The full text is stored with the message either way.
//! - **Answers to senders** (ACK text, HTTP bodies) get [`public`]: the summary and a pointer
//!   to the store, whatever the opt-in says (an ACK is not a log the operator controls).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static LOG_PHI: AtomicBool = AtomicBool::new(false);

/// Allow (or forbid again) message content in log lines, for this whole process. Off by
/// default. `ferry run` turns it on when `FERRY_LOG_PHI=1` is set.
pub fn allow_in_logs(allowed: bool) {
    LOG_PHI.store(allowed, Ordering::Relaxed);
}

/// Whether message content may appear in log lines.
pub fn logs_allowed() -> bool {
    LOG_PHI.load(Ordering::Relaxed)
}

/// The part of an error text before its first `": "`: what failed, without the detail that
/// may quote the message.
pub fn summary(text: &str) -> &str {
    text.split_once(": ").map_or(text, |(head, _)| head)
}

/// The text of an error for an answer to a sender (ACK MSA-3/ERR, HTTP body): its summary,
/// then where the detail is.
pub fn public(text: &str) -> String {
    let head = summary(text);
    if head.len() == text.len() {
        text.to_owned()
    } else {
        format!("{head} (details are stored with the message)")
    }
}

/// An error text for a log field: the whole text with the opt-in, else its [`summary`] and a
/// note that the rest was withheld.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if logs_allowed() {
            return f.write_str(self.0);
        }
        let head = summary(self.0);
        f.write_str(head)?;
        if head.len() != self.0.len() {
            f.write_str(
                " (detail withheld: it may hold message content; FERRY_LOG_PHI=1 logs it)",
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A delivery failure for a log field. Connection, TLS and HTTP errors are about the peer,
/// not the message, and are logged whole (an operator needs `invalid peer certificate:
/// Expired`); a negative ACK's text (`negative ACK AE: …`) is the peer quoting the message
/// back, so it is [`Redacted`].
#[derive(Clone, Copy)]
pub struct Delivery<'a>(pub &'a str);

impl fmt::Display for Delivery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.starts_with("negative ACK") || self.0.contains("not an HL7 ACK") {
            fmt::Display::fmt(&Redacted(self.0), f)
        } else {
            f.write_str(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_what_comes_before_the_detail() {
        assert_eq!(
            summary("transform 1: <inline>:1: Error: DOE"),
            "transform 1"
        );
        assert_eq!(summary("HTTP 500"), "HTTP 500");
        assert_eq!(
            public("negative ACK AE: DOE JANE unknown"),
            "negative ACK AE (details are stored with the message)"
        );
        assert_eq!(
            public("filtered out by filter 2"),
            "filtered out by filter 2"
        );
    }

    #[test]
    fn redacted_shows_the_detail_only_with_the_opt_in() {
        // One test flips the global, so the two states are checked in order here.
        let text = "transform 1: Error: cannot admit DOE";
        let shown = Redacted(text).to_string();
        assert!(shown.starts_with("transform 1 (detail withheld"), "{shown}");
        assert!(!shown.contains("DOE"));
        allow_in_logs(true);
        assert_eq!(Redacted(text).to_string(), text);
        allow_in_logs(false);
        assert!(!Redacted(text).to_string().contains("DOE"));
        let nak = Delivery("negative ACK AE: DOE unknown").to_string();
        assert!(nak.starts_with("negative ACK AE (detail withheld"), "{nak}");
        let tls = "connection failed: invalid peer certificate: Expired";
        assert_eq!(Delivery(tls).to_string(), tls);
    }
}
