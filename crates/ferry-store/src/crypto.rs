//! Encryption at rest: AES-256-GCM envelopes around every stored blob that can hold PHI.
//!
//! **Envelope** (binary columns: `messages.raw`, `messages.source_response`, `content.data`):
//!
//! ```text
//! FF 'F' 'E' '1' | key_id_len (1 byte, 1..=64) | key_id (ASCII) | nonce (12 random bytes)
//!                | ciphertext | tag (16 bytes)
//! ```
//!
//! The associated data binds the envelope to its place: `"ferry-store-v1"`, then the channel
//! name, message id, connector name, stage and key id, each length-prefixed. A blob copied to
//! another row, stage, message or channel fails authentication instead of being read as that
//! row's content.
//!
//! **Telling envelopes from plaintext.** Stores written before encryption was enabled hold
//! plaintext blobs; they stay readable. The first byte of an envelope is `0xFF`, which never
//! begins UTF-8 text, so no HL7 message (`MSH`, a UTF-8 BOM `EF BB BF`, or an MLLP-stripped
//! segment), JSON, XML or text response starts with the 4-byte magic. The rule: a blob that
//! starts with the magic **is** an envelope and must decrypt — an unknown key id, a truncated
//! header or a failed tag is an error ([`StoreError::Crypto`]), never a fallback to returning
//! the bytes. A blob without the magic is legacy plaintext and is returned as stored (and is
//! re-encrypted by key rotation).
//!
//! **Error texts** (`connector_messages.error`, a `TEXT` column) may quote message data, so
//! they are encrypted too, as `ferry:enc1:` followed by the standard base64 of an envelope
//! whose stage is `error`.
//!
//! **Account secrets** (`admin_users.totp_secret`, a `TEXT` column) are sealed the same way
//! as error texts, with associated data of their own (`"ferry-accounts-v1"`, table, column,
//! the row's user name, key id; [`AccountField`]), so a secret copied to another user's row,
//! or a message blob pasted into the column, fails authentication.
//!
//! Metadata stays in the clear because the store indexes and lists by it: channel and
//! connector names, statuses, times, `control_id` (MSH-10), `message_type` (MSH-9) and the
//! duplicate-detection key (MSH-3/MSH-4/MSH-10).
//!
//! **Indexed metadata** (`message_metadata`: a channel's `index` values, an MRN by default) is
//! searched by exact value, so it cannot be a randomized envelope. Its `value` column holds a
//! *blind index* instead: `HMAC-SHA256(K_idx, len(key) ‖ key ‖ len(value) ‖ value)` (lengths
//! as 4-byte big-endian), where `K_idx = HKDF-Expand(PRK = data key, info =
//! "ferry-store-blind-index-v1", L = 32)` — one HMAC block, `HMAC(data key, info ‖ 0x01)`,
//! since the data key already is uniformly random. Searching computes the same token from the
//! searched value under every key of the keyring. The file then holds no plaintext value; what
//! it does reveal is which messages share one (equality), inherent in any exact-match index.
//! The value itself is also kept, sealed (stage `index`, the key name as the connector), so
//! key rotation can compute the token under the new key.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use hmac::Mac as _;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::StoreError;
use crate::model::MessageId;

/// First bytes of every envelope.
pub(crate) const MAGIC: &[u8; 4] = b"\xFFFE1";
/// Prefix of an encrypted error text.
pub(crate) const TEXT_PREFIX: &str = "ferry:enc1:";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 64;
const AAD_LABEL: &[u8] = b"ferry-store-v1";
const ACCOUNTS_AAD_LABEL: &[u8] = b"ferry-accounts-v1";
/// HKDF `info` of the blind-index key.
const BLIND_INDEX_INFO: &[u8] = b"ferry-store-blind-index-v1";
/// The stage name binding a sealed metadata value (its connector is the metadata key).
pub(crate) const INDEX_STAGE: &str = "index";
/// A blind index token.
pub(crate) type BlindIndex = [u8; 32];

/// HMAC-SHA256 with the blind-index key already absorbed (cloned per value).
type IndexMac = hmac::Hmac<Sha256>;

/// The blind-index MAC of a data key (see the module documentation).
fn index_mac(key: &Key) -> Result<IndexMac, StoreError> {
    let unusable = |_| StoreError::Crypto("the blind-index key cannot be derived".into());
    let mut expand =
        <IndexMac as hmac::KeyInit>::new_from_slice(key.0.as_slice()).map_err(unusable)?;
    expand.update(BLIND_INDEX_INFO);
    expand.update(&[1]);
    let mut derived = Zeroizing::new([0u8; 32]);
    derived.copy_from_slice(&expand.finalize().into_bytes());
    <IndexMac as hmac::KeyInit>::new_from_slice(derived.as_slice()).map_err(unusable)
}

fn blind_index_with(mac: &IndexMac, key: &str, value: &str) -> BlindIndex {
    let mut mac = mac.clone();
    mac.update(&(key.len() as u32).to_be_bytes());
    mac.update(key.as_bytes());
    mac.update(&(value.len() as u32).to_be_bytes());
    mac.update(value.as_bytes());
    let mut token = [0u8; 32];
    token.copy_from_slice(&mac.finalize().into_bytes());
    token
}

/// A 256-bit data-encryption key. Wiped from memory when dropped; `Debug` prints nothing of
/// it.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    /// A key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, StoreError> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| {
            StoreError::Crypto(format!(
                "an AES-256 key is 32 bytes, this one is {}",
                bytes.len()
            ))
        })?;
        Ok(Key(Zeroizing::new(array)))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key([redacted])")
    }
}

/// Whether `id` is a usable key id: 1 to 64 of ASCII letters, digits, `-`, `_`, `.`.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The keys of a store: the current one, which encrypts everything written, and old ones that
/// still decrypt records written under them until rotation has re-encrypted those.
#[derive(Clone)]
pub struct Keyring {
    current_id: String,
    current: Aes256Gcm,
    keys: HashMap<String, Aes256Gcm>,
    /// The blind-index MAC of the current key, and of every key (search tries them all).
    current_index: IndexMac,
    index_keys: Vec<IndexMac>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut old: Vec<&String> = self
            .keys
            .keys()
            .filter(|k| **k != self.current_id)
            .collect();
        old.sort();
        f.debug_struct("Keyring")
            .field("current", &self.current_id)
            .field("old", &old)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring whose current key is `key`, named `id`.
    pub fn new(id: &str, key: Key) -> Result<Keyring, StoreError> {
        let cipher = cipher(id, &key)?;
        let mut keys = HashMap::new();
        keys.insert(id.to_owned(), cipher.clone());
        let index = index_mac(&key)?;
        Ok(Keyring {
            current_id: id.to_owned(),
            current: cipher,
            keys,
            current_index: index.clone(),
            index_keys: vec![index],
        })
    }

    /// Add an old key that still decrypts (never encrypts).
    pub fn with_old(mut self, id: &str, key: Key) -> Result<Keyring, StoreError> {
        if id == self.current_id {
            return Err(StoreError::Crypto(format!(
                "key id `{id}` is both the current key and an old key"
            )));
        }
        let cipher = cipher(id, &key)?;
        if self.keys.insert(id.to_owned(), cipher).is_none() {
            self.index_keys.push(index_mac(&key)?);
        }
        Ok(self)
    }

    /// The blind index of `value` under metadata `key`, with the current key: what is stored.
    pub(crate) fn blind_index(&self, key: &str, value: &str) -> BlindIndex {
        blind_index_with(&self.current_index, key, value)
    }

    /// The blind indexes of `value` under every key of the ring: what a search looks for
    /// (rows written under an old key match until rotation re-indexes them).
    pub(crate) fn blind_indexes(&self, key: &str, value: &str) -> Vec<BlindIndex> {
        self.index_keys
            .iter()
            .map(|mac| blind_index_with(mac, key, value))
            .collect()
    }

    /// The id of the key new records are encrypted under.
    pub fn current_id(&self) -> &str {
        &self.current_id
    }

    /// The envelope header (magic, key id) of the current key: a blob starting with it needs
    /// no rotation.
    pub(crate) fn current_header(&self) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.push(self.current_id.len() as u8);
        h.extend_from_slice(self.current_id.as_bytes());
        h
    }

    /// Encrypt `plain` for its place under the current key.
    pub(crate) fn seal(&self, place: &impl Bound, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Crypto(format!("no randomness for a nonce: {e}")))?;
        let header = self.current_header();
        let mut out = Vec::with_capacity(header.len() + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        let aad = place.aad(&self.current_id);
        let tag = self
            .current
            .encrypt_inout_detached(&Nonce::from(nonce), &aad, (&mut out[start..]).into())
            .map_err(|_| StoreError::Crypto(format!("cannot encrypt {place}")))?;
        out.extend_from_slice(tag.as_slice());
        Ok(out)
    }

    /// Encrypt a text (an error text, an account secret) for its place.
    pub(crate) fn seal_text(&self, place: &impl Bound, plain: &str) -> Result<String, StoreError> {
        let sealed = self.seal(place, plain.as_bytes())?;
        let mut out = String::from(TEXT_PREFIX);
        base64::engine::general_purpose::STANDARD.encode_string(sealed, &mut out);
        Ok(out)
    }
}

fn cipher(id: &str, key: &Key) -> Result<Aes256Gcm, StoreError> {
    if !valid_key_id(id) {
        return Err(StoreError::Crypto(format!(
            "invalid key id `{id}`: use 1 to {MAX_KEY_ID_LEN} letters, digits, `-`, `_` or `.`"
        )));
    }
    Aes256Gcm::new_from_slice(key.0.as_slice())
        .map_err(|_| StoreError::Crypto("an AES-256 key is 32 bytes".into()))
}

/// Where a sealed value is stored: what its associated data binds it to, and how errors name
/// it.
pub(crate) trait Bound: fmt::Display {
    /// The associated data of the value under key `key_id`.
    fn aad(&self, key_id: &str) -> Vec<u8>;
}

/// Each field length-prefixed (u32, big endian), so no two field lists encode alike.
fn length_prefixed(fields: &[&[u8]]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
    for f in fields {
        aad.extend_from_slice(&(f.len() as u32).to_be_bytes());
        aad.extend_from_slice(f);
    }
    aad
}

/// Where a blob of a message is stored: what its associated data binds it to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    pub channel: &'a str,
    pub message_id: MessageId,
    pub connector: &'a str,
    pub stage: &'a str,
}

impl Bound for Place<'_> {
    fn aad(&self, key_id: &str) -> Vec<u8> {
        length_prefixed(&[
            AAD_LABEL,
            self.channel.as_bytes(),
            &self.message_id.to_be_bytes(),
            self.connector.as_bytes(),
            self.stage.as_bytes(),
            key_id.as_bytes(),
        ])
    }
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} content of connector `{}` of message {} in channel `{}`",
            self.stage, self.connector, self.message_id, self.channel
        )
    }
}

/// Where an account secret is stored: a column of one row of an account table, the row named
/// by its unique, never-changing key (the user name).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccountField<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: &'a str,
}

impl Bound for AccountField<'_> {
    fn aad(&self, key_id: &str) -> Vec<u8> {
        length_prefixed(&[
            ACCOUNTS_AAD_LABEL,
            self.table.as_bytes(),
            self.column.as_bytes(),
            self.row.as_bytes(),
            key_id.as_bytes(),
        ])
    }
}

impl fmt::Display for AccountField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} of `{}` in {}", self.column, self.row, self.table)
    }
}

/// What a stored blob is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sealed<'a> {
    /// Written before encryption was enabled.
    Plain,
    /// An envelope under this key id.
    Envelope(&'a str),
}

/// Classify a stored blob by its header.
pub(crate) fn classify<'a>(blob: &'a [u8], place: &impl Bound) -> Result<Sealed<'a>, StoreError> {
    let Some(rest) = blob.strip_prefix(MAGIC.as_slice()) else {
        return Ok(Sealed::Plain);
    };
    let truncated = || StoreError::Crypto(format!("{place} is a truncated envelope"));
    let (&len, rest) = rest.split_first().ok_or_else(truncated)?;
    let id = rest.get(..len as usize).ok_or_else(truncated)?;
    let id = std::str::from_utf8(id)
        .ok()
        .filter(|id| valid_key_id(id))
        .ok_or_else(|| StoreError::Crypto(format!("{place} has a malformed key id")))?;
    Ok(Sealed::Envelope(id))
}

/// Decrypt (or pass through legacy plaintext of) a stored blob. `keyring` is `None` when the
/// store runs without encryption: then an envelope is an error naming its key id.
pub(crate) fn open(
    keyring: Option<&Keyring>,
    place: &impl Bound,
    blob: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    let id = match classify(&blob, place)? {
        Sealed::Plain => return Ok(blob),
        Sealed::Envelope(id) => id,
    };
    let Some(keyring) = keyring else {
        return Err(StoreError::Crypto(format!(
            "{place} is encrypted under key `{id}`, but the store was opened without encryption \
             keys ([store] encryption)"
        )));
    };
    let cipher = keyring.keys.get(id).ok_or_else(|| {
        StoreError::Crypto(format!(
            "{place} is encrypted under key `{id}`, which is not configured (add it to [store] \
             encryption.old_keys until `ferry keys rotate` has finished)"
        ))
    })?;
    let body = MAGIC.len() + 1 + id.len();
    if blob.len() < body + NONCE_LEN + TAG_LEN {
        return Err(StoreError::Crypto(format!(
            "{place} is a truncated envelope"
        )));
    }
    let aad = place.aad(id);
    let nonce = Nonce::try_from(&blob[body..body + NONCE_LEN])
        .map_err(|_| StoreError::Crypto(format!("{place} is a truncated envelope")))?;
    let tag_at = blob.len() - TAG_LEN;
    let tag = Tag::try_from(&blob[tag_at..])
        .map_err(|_| StoreError::Crypto(format!("{place} is a truncated envelope")))?;
    let mut plain = blob[body + NONCE_LEN..tag_at].to_vec();
    cipher
        .decrypt_inout_detached(&nonce, &aad, plain.as_mut_slice().into(), &tag)
        .map_err(|_| {
            StoreError::Crypto(format!(
                "{place} fails authentication under key `{id}`: the key is wrong, or the \
                 record was altered or moved from another row"
            ))
        })?;
    Ok(plain)
}

/// [`open`] for an error text.
pub(crate) fn open_text(
    keyring: Option<&Keyring>,
    place: &impl Bound,
    text: String,
) -> Result<String, StoreError> {
    let Some(encoded) = text.strip_prefix(TEXT_PREFIX) else {
        return Ok(text);
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| StoreError::Crypto(format!("{place} is a malformed encrypted text")))?;
    let plain = open(keyring, place, blob)?;
    String::from_utf8(plain)
        .map_err(|_| StoreError::Crypto(format!("{place} decrypts to invalid UTF-8")))
}

/// Whether an error text is sealed under the key whose envelope header is `header`.
pub(crate) fn text_has_header(text: &str, header: &[u8]) -> bool {
    text.strip_prefix(TEXT_PREFIX)
        .and_then(|e| base64::engine::general_purpose::STANDARD.decode(e).ok())
        .is_some_and(|blob| blob.starts_with(header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(id: MessageId) -> Place<'static> {
        Place {
            channel: "adt",
            message_id: id,
            connector: "source",
            stage: "raw",
        }
    }

    fn ring() -> Keyring {
        Keyring::new("k1", Key::from_bytes(&[7u8; 32]).expect("key")).expect("ring")
    }

    #[test]
    fn round_trip_and_binding() {
        let ring = ring();
        let sealed = ring.seal(&place(1), b"MSH|^~\\&|DOE^JANE").expect("seal");
        assert!(sealed.starts_with(MAGIC));
        assert!(!sealed.windows(8).any(|w| w == b"DOE^JANE"));
        assert_eq!(
            open(Some(&ring), &place(1), sealed.clone()).expect("open"),
            b"MSH|^~\\&|DOE^JANE"
        );
        let moved = open(Some(&ring), &place(2), sealed.clone()).expect_err("moved");
        assert!(
            moved.to_string().contains("fails authentication"),
            "{moved}"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 20;
        tampered[last] ^= 1;
        assert!(open(Some(&ring), &place(1), tampered).is_err());
        let no_keys = open(None, &place(1), sealed).expect_err("no keys");
        assert!(no_keys.to_string().contains("`k1`"), "{no_keys}");
        assert_eq!(
            open(Some(&ring), &place(1), b"MSH|plain".to_vec()).expect("plain"),
            b"MSH|plain"
        );
    }

    #[test]
    fn message_associated_data_keeps_its_format() {
        // Stores written before `Bound` existed must still decrypt: the layout is pinned.
        let mut expected = Vec::new();
        for f in [
            &b"ferry-store-v1"[..],
            b"adt",
            &7i64.to_be_bytes(),
            b"source",
            b"raw",
            b"k1",
        ] {
            expected.extend_from_slice(&(f.len() as u32).to_be_bytes());
            expected.extend_from_slice(f);
        }
        assert_eq!(place(7).aad("k1"), expected);
    }

    #[test]
    fn account_secrets_are_bound_to_their_row() {
        let ring = ring();
        let field = |row| AccountField {
            table: "admin_users",
            column: "totp_secret",
            row,
        };
        let sealed = ring
            .seal_text(&field("alice"), "JBSWY3DPEHPK3PXP")
            .expect("seal");
        assert!(sealed.starts_with(TEXT_PREFIX) && !sealed.contains("JBSWY3DP"));
        assert_eq!(
            open_text(Some(&ring), &field("alice"), sealed.clone()).expect("open"),
            "JBSWY3DPEHPK3PXP"
        );
        let moved = open_text(Some(&ring), &field("mallory"), sealed).expect_err("moved");
        assert!(moved.to_string().contains("`mallory`"), "{moved}");
        // A message blob pasted into the column does not open as a secret either.
        let blob = ring.seal(&place(1), b"JBSWY3DPEHPK3PXP").expect("seal");
        let mut text = String::from(TEXT_PREFIX);
        base64::engine::general_purpose::STANDARD.encode_string(blob, &mut text);
        assert!(open_text(Some(&ring), &field("alice"), text).is_err());
    }

    #[test]
    fn blind_indexes_are_keyed_and_separate_keys_from_values() {
        let ring = ring();
        let token = ring.blind_index("mrn", "12345");
        assert_eq!(token, ring.blind_index("mrn", "12345"), "deterministic");
        assert_ne!(token, ring.blind_index("mrn", "12346"));
        assert_ne!(
            token,
            ring.blind_index("visit", "12345"),
            "bound to the key name"
        );
        assert_ne!(
            ring.blind_index("ab", "c"),
            ring.blind_index("a", "bc"),
            "length-prefixed"
        );
        let other = Keyring::new("k2", Key::from_bytes(&[8u8; 32]).expect("key")).expect("ring");
        assert_ne!(token, other.blind_index("mrn", "12345"), "keyed");
        let both = other.with_old("k1", Key::from_bytes(&[7u8; 32]).expect("key"));
        let both = both.expect("ring").blind_indexes("mrn", "12345");
        assert_eq!(both.len(), 2);
        assert!(
            both.contains(&token),
            "an old key's tokens are still searched"
        );
        assert!(!token.windows(5).any(|w| w == b"12345"));
    }

    #[test]
    fn debug_is_redacted() {
        let key = Key::from_bytes(&[0x41u8; 32]).expect("key");
        assert_eq!(format!("{key:?}"), "Key([redacted])");
        assert!(!format!("{:?}", ring()).contains("7, 7"));
    }
}
