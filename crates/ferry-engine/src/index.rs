//! Indexed metadata: the values of a few HL7 paths (the MRN by default) extracted from every
//! received message and stored with it, in the same transaction, so the admin API can find a
//! patient's messages by exact value without reading any content.
//!
//! Extraction runs on the hot path. It reads each path through the message's zero-copy index
//! (two array reads per field), decodes escapes only when the value has any, and copies every
//! value into one buffer of the [`Metadata`] it returns: one allocation for the text and one
//! for the entries per message, whatever the number of keys; the key names are shared `Arc`s.

use std::sync::Arc;

use ferry_hl7::{Message, Path};
use ferry_store::Metadata;

/// The key and path indexed when a channel says nothing: the first identifier of the patient.
pub const DEFAULT_INDEX: (&str, &str) = ("mrn", "PID-3.1");

/// Longest value indexed, in bytes: longer values are not indexed (an identifier is short;
/// a long value is a mistake in the path).
pub const MAX_INDEXED_VALUE_BYTES: usize = 256;

/// What a channel indexes: key names and the HL7 path each is read from.
#[derive(Debug, Clone)]
pub struct MetadataIndex {
    fields: Vec<(Arc<str>, Path)>,
}

impl Default for MetadataIndex {
    /// [`DEFAULT_INDEX`]: `mrn = "PID-3.1"`.
    fn default() -> MetadataIndex {
        let (key, path) = DEFAULT_INDEX;
        MetadataIndex {
            fields: Path::parse(path)
                .map(|p| vec![(Arc::from(key), p)])
                .unwrap_or_default(),
        }
    }
}

impl MetadataIndex {
    /// An index of these `(key, path)` pairs (none: nothing is indexed).
    pub fn new(fields: impl IntoIterator<Item = (String, Path)>) -> MetadataIndex {
        MetadataIndex {
            fields: fields
                .into_iter()
                .map(|(key, path)| (Arc::from(key), path))
                .collect(),
        }
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The key names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| &**k)
    }

    /// The indexed values of `message`: each key whose path holds a non-empty value (escapes
    /// decoded, read in the message's charset) of at most [`MAX_INDEXED_VALUE_BYTES`].
    pub fn extract(&self, message: &Message<'_>) -> Metadata {
        if self.fields.is_empty() {
            return Metadata::default();
        }
        let mut metadata = Metadata::with_capacity(self.fields.len(), 16 * self.fields.len());
        for (key, path) in &self.fields {
            let Some(raw) = message.get_path(path).filter(|r| !r.is_empty()) else {
                continue;
            };
            if raw.len() > MAX_INDEXED_VALUE_BYTES {
                continue;
            }
            let text = message.text(raw);
            if text.is_empty() || text.len() > MAX_INDEXED_VALUE_BYTES {
                continue;
            }
            metadata.push(key.clone(), &text);
        }
        metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(fields: &[(&str, &str)]) -> MetadataIndex {
        MetadataIndex::new(
            fields
                .iter()
                .map(|(k, p)| ((*k).to_owned(), Path::parse(p).expect("path"))),
        )
    }

    #[test]
    fn extracts_present_values_decoded() {
        let raw = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||12345^^^H^MR~999^^^X||DOE\\T\\SON^JANE\rPV1|1|I|||||||||||||||||V77\r";
        let message = Message::parse(raw).expect("parse");
        let all = index(&[
            ("mrn", "PID-3.1"),
            ("other", "PID-3(2).1"),
            ("family", "PID-5.1"),
            ("visit", "PV1-19"),
            ("absent", "PID-30"),
            ("no_segment", "ZZZ-1"),
        ]);
        let metadata = all.extract(&message);
        let got: Vec<(&str, &str)> = metadata.iter().collect();
        assert_eq!(
            got,
            [
                ("mrn", "12345"),
                ("other", "999"),
                ("family", "DOE&SON"),
                ("visit", "V77")
            ]
        );
        let default = MetadataIndex::default().extract(&message);
        assert_eq!(default.iter().collect::<Vec<_>>(), [("mrn", "12345")]);
        assert!(index(&[]).extract(&message).is_empty());
    }

    #[test]
    fn skips_values_too_long_to_be_identifiers() {
        let long = "9".repeat(MAX_INDEXED_VALUE_BYTES + 1);
        let raw = format!("MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5\rPID|1||{long}\r");
        let message = Message::parse(raw.as_bytes()).expect("parse");
        assert!(MetadataIndex::default().extract(&message).is_empty());
    }
}
