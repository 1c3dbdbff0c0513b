//! Client-side encryption: every object, manifest and record is an age file
//! (<https://age-encryption.org/v1>) to X25519 recipients, so the hosts that take
//! backups hold no key that decrypts them, and `age -d -i key.txt` reads any
//! object without Ferry.
//!
//! - **Writers** hold a [`Sealer`]: the recipients' public keys and a *name key*.
//!   Objects are named by a keyed hash of their content ([`Sealer::object_key`]),
//!   so identical content is still stored once across backups while nobody with
//!   bucket access can test whether a known file is stored (a plain SHA-256 name
//!   would let them). Losing the name key only changes the names of new objects:
//!   the next backup uploads everything again, and nothing already stored is lost.
//! - **Readers** (restore, deep verification, key rotation) hold an [`Opener`]:
//!   the X25519 identities from an identity file.
//! - **The store remembers** that it is encrypted ([`StoreMarker`] at
//!   [`MARKER_KEY`]): a writer configured without encryption refuses to write into
//!   it (see [`check_store`]), so a misconfigured host fails closed instead of
//!   uploading plaintext.
//!
//! Nothing here logs or prints a key; errors name the file or variable a key came
//! from, never its contents.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::OBJECTS_PREFIX;
use crate::retry::RetryPolicy;
use crate::{ObjectStore, StorageError, get_bytes};

/// An age X25519 recipient (a public key, `age1…`).
pub use age::x25519::Recipient;

/// How every age file begins.
const AGE_INTRO: &[u8] = b"age-encryption.org/v1\n";

/// The record at the store's root that says the store is encrypted.
pub const MARKER_KEY: &str = "ferry-store.json";

/// What a key problem is, naming where the key came from.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A recipient is not an X25519 age public key.
    #[error(
        "{origin}: {value:?} is not an age X25519 recipient ({why}); recipients look like age1… (`age-keygen -y key.txt` prints one)"
    )]
    BadRecipient {
        /// Where it was configured (`encryption.recipients[1]`, a file and line).
        origin: String,
        /// The value, a public key (never a secret).
        value: String,
        /// The parser's reason.
        why: &'static str,
    },
    /// Encryption is on but no recipient is configured.
    #[error(
        "encryption is on but no recipient is configured: set encryption.recipients or encryption.recipients_file"
    )]
    NoRecipients,
    /// No name key is configured.
    #[error(
        "encryption is on but no name key is configured: set encryption.name_key_file or encryption.name_key_env to a secret of at least 32 characters (`head -c 32 /dev/urandom | base64 > name.key`)"
    )]
    NoNameKey,
    /// The name key is too short to be a key.
    #[error(
        "the name key from {origin} has {len} characters; it needs at least 32 (`head -c 32 /dev/urandom | base64`)"
    )]
    ShortNameKey {
        /// The file or variable.
        origin: String,
        /// Its length.
        len: usize,
    },
    /// An identity file holds no identity, or a malformed one.
    #[error(
        "{origin}: {why}; an identity file holds AGE-SECRET-KEY-1… lines, as `age-keygen -o key.txt` writes"
    )]
    BadIdentity {
        /// The file and line.
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// A key file or variable cannot be read.
    #[error("cannot read {origin}: {why}")]
    Unreadable {
        /// The file or variable.
        origin: String,
        /// Why.
        why: String,
    },
}

/// Why an encrypted object cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// None of the identities is a recipient of the object.
    #[error(
        "{what} is encrypted to other recipients: none of the identities in {identities} can decrypt it; pass the identity of one of the recipients the backup was taken with"
    )]
    NoMatchingKey {
        /// The object or manifest.
        what: String,
        /// The identity file(s).
        identities: String,
    },
    /// The bytes are not an age file, or are damaged.
    #[error("{what} cannot be decrypted: {why}")]
    Damaged {
        /// The object or manifest.
        what: String,
        /// What age said.
        why: String,
    },
}

/// The writers' keys: the recipients every object is encrypted to, and the name key.
pub struct Sealer {
    recipients: Vec<age::x25519::Recipient>,
    name_key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the name key.
        f.debug_struct("Sealer")
            .field("recipients", &self.recipients.len())
            .finish_non_exhaustive()
    }
}

/// Parses recipients, each with the place it came from (for the error).
pub fn parse_recipients<'a>(
    values: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<Vec<age::x25519::Recipient>, KeyError> {
    let mut out = Vec::new();
    for (origin, value) in values {
        let value = value.trim();
        let recipient =
            age::x25519::Recipient::from_str(value).map_err(|why| KeyError::BadRecipient {
                origin,
                value: value.to_string(),
                why,
            })?;
        out.push(recipient);
    }
    Ok(out)
}

/// The recipients of a recipients file: one `age1…` per line; blank lines and `#`
/// comments are skipped, as in age's own recipients files.
pub fn recipients_file(path: &Path) -> Result<Vec<age::x25519::Recipient>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable {
        origin: path.display().to_string(),
        why: e.to_string(),
    })?;
    parse_recipients(
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(n, l)| (format!("{} line {}", path.display(), n + 1), l)),
    )
}

/// The name key from its secret text: at least 32 characters, hashed to 32 bytes
/// (so any encoding of a random secret works).
pub fn name_key(secret: &str, origin: &str) -> Result<[u8; 32], KeyError> {
    let secret = secret.trim();
    if secret.chars().count() < 32 {
        return Err(KeyError::ShortNameKey {
            origin: origin.to_string(),
            len: secret.chars().count(),
        });
    }
    let mut h = Sha256::new();
    h.update(b"ferry name key v1\0");
    h.update(secret.as_bytes());
    Ok(h.finalize().into())
}

impl Sealer {
    /// A sealer for `recipients` with `name_key`.
    pub fn new(
        recipients: Vec<age::x25519::Recipient>,
        name_key: [u8; 32],
    ) -> Result<Sealer, KeyError> {
        if recipients.is_empty() {
            return Err(KeyError::NoRecipients);
        }
        Ok(Sealer {
            recipients,
            name_key,
        })
    }

    /// How many recipients objects are encrypted to.
    pub fn recipients(&self) -> usize {
        self.recipients.len()
    }

    /// The name of content whose (compressed) bytes have SHA-256 `sha256`: the
    /// HMAC-SHA256 of that digest under the name key, in hex.
    pub fn object_name(&self, sha256: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.name_key).expect("HMAC takes any key length");
        mac.update(b"ferry object v1\0");
        mac.update(sha256.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The object key of that content: `objects/<keyed hash>`.
    pub fn object_key(&self, sha256: &str) -> String {
        format!("{OBJECTS_PREFIX}{}", self.object_name(sha256))
    }

    /// A writer that encrypts into `output`; [`age::stream::StreamWriter::finish`]
    /// must be called, or the file is truncated (and fails to decrypt, never
    /// decrypts short).
    pub fn writer<W: Write>(&self, output: W) -> std::io::Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(std::io::Error::other)?;
        encryptor.wrap_output(output)
    }

    /// `bytes` encrypted (a manifest, a small record).
    pub fn seal(&self, bytes: &[u8]) -> Vec<u8> {
        seal_to(&self.recipients, bytes)
    }

    /// A sealer of records for `recipients` with no name key: for rewriting
    /// manifests (`ferry keys rewrap`), which names no new object.
    pub fn for_records(recipients: Vec<age::x25519::Recipient>) -> Result<Sealer, KeyError> {
        Sealer::new(recipients, [0u8; 32])
    }
}

/// `bytes` encrypted to `recipients` (at least one).
fn seal_to(recipients: &[age::x25519::Recipient], bytes: &[u8]) -> Vec<u8> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .expect("at least one X25519 recipient");
    let mut out = Vec::with_capacity(bytes.len() + 256);
    let mut w = encryptor.wrap_output(&mut out).expect("writing to memory");
    w.write_all(bytes).expect("writing to memory");
    w.finish().expect("writing to memory");
    out
}

/// The readers' keys: X25519 identities, and the files they came from (for errors).
pub struct Opener {
    identities: Vec<age::x25519::Identity>,
    origin: String,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// The identities of an age identity file (`AGE-SECRET-KEY-1…` lines; `#`
    /// comments and blank lines skipped).
    pub fn from_file(path: &Path) -> Result<Opener, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable {
            origin: path.display().to_string(),
            why: e.to_string(),
        })?;
        let mut identities = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity =
                age::x25519::Identity::from_str(line).map_err(|why| KeyError::BadIdentity {
                    origin: format!("{} line {}", path.display(), n + 1),
                    // Never the line itself: it is a secret key.
                    why: format!("not an age X25519 identity ({why})"),
                })?;
            identities.push(identity);
        }
        if identities.is_empty() {
            return Err(KeyError::BadIdentity {
                origin: path.display().to_string(),
                why: "no identity in the file".into(),
            });
        }
        Ok(Opener {
            identities,
            origin: path.display().to_string(),
        })
    }

    /// An opener of identities held in memory (tests, key generation).
    pub fn of(identities: Vec<age::x25519::Identity>, origin: &str) -> Opener {
        Opener {
            identities,
            origin: origin.to_string(),
        }
    }

    /// Where the identities came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The public keys of these identities.
    pub fn recipients(&self) -> Vec<age::x25519::Recipient> {
        self.identities.iter().map(|i| i.to_public()).collect()
    }

    /// A reader of the plaintext of the age file `input` (`what` names it in
    /// errors). Damage in the payload shows up as a read error.
    pub fn reader<R: Read>(
        &self,
        input: R,
        what: &str,
    ) -> Result<age::stream::StreamReader<R>, OpenError> {
        let decryptor = age::Decryptor::new(input).map_err(|e| self.error(what, e))?;
        decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| self.error(what, e))
    }

    /// The plaintext of the small age file `bytes`.
    pub fn open(&self, bytes: &[u8], what: &str) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::new();
        self.reader(bytes, what)?
            .read_to_end(&mut out)
            .map_err(|e| OpenError::Damaged {
                what: what.to_string(),
                why: e.to_string(),
            })?;
        Ok(out)
    }

    /// A new header for the age file that starts with `head` (which must hold its
    /// whole header): the file key, unwrapped with these identities, wrapped anew
    /// for `recipients`, under a new header MAC. The payload that follows the old
    /// header is unchanged (its key derives from the file key and its own nonce),
    /// so the new header followed by it is the same content for the new
    /// recipients. Returns the new header and the old header's length.
    pub fn rewrap(
        &self,
        head: &[u8],
        recipients: &[age::x25519::Recipient],
        what: &str,
    ) -> Result<(Vec<u8>, usize), OpenError> {
        use age::{Identity as _, Recipient as _};
        use age_core::secrecy::ExposeSecret as _;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let damaged = |why: &str| OpenError::Damaged {
            what: what.to_string(),
            why: why.to_string(),
        };
        let mut rest = head
            .strip_prefix(AGE_INTRO)
            .ok_or_else(|| damaged("not an age v1 file"))?;
        let mut stanzas = Vec::new();
        while rest.starts_with(b"-> ") {
            let (after, stanza) = age_core::format::read::age_stanza(rest)
                .map_err(|_| damaged("malformed recipient stanza in the header"))?;
            stanzas.push(age_core::format::Stanza::from(stanza));
            rest = after;
        }
        // "--- " and 43 characters of base64 MAC, then a newline.
        if rest.len() < 48 || !rest.starts_with(b"--- ") || rest[47] != b'\n' {
            return Err(damaged("the header has no MAC line"));
        }
        let through_dashes = head.len() - rest.len() + 3;
        let header_len = head.len() - rest.len() + 48;
        let file_key = self
            .identities
            .iter()
            .find_map(|i| i.unwrap_stanzas(&stanzas))
            .ok_or_else(|| OpenError::NoMatchingKey {
                what: what.to_string(),
                identities: self.origin.clone(),
            })?
            .map_err(|e| damaged(&e.to_string()))?;
        let mac_key = age_core::primitives::hkdf(&[], b"header", file_key.expose_secret());
        let old_mac = b64
            .decode(&rest[4..47])
            .map_err(|_| damaged("the header MAC is not base64"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&mac_key).expect("any key length");
        mac.update(&head[..through_dashes]);
        mac.verify_slice(&old_mac)
            .map_err(|_| damaged("the header MAC does not match"))?;

        let mut header = AGE_INTRO.to_vec();
        for recipient in recipients {
            let (wrapped, _) = recipient
                .wrap_file_key(&file_key)
                .map_err(|e| damaged(&e.to_string()))?;
            for stanza in wrapped {
                header.extend_from_slice(b"-> ");
                header.extend_from_slice(stanza.tag.as_bytes());
                for arg in &stanza.args {
                    header.push(b' ');
                    header.extend_from_slice(arg.as_bytes());
                }
                header.push(b'\n');
                // The body wrapped at 64 columns; the last line is always short,
                // empty when the body fills its lines exactly.
                let body = b64.encode(&stanza.body);
                let mut lines = body.as_bytes().chunks(64).peekable();
                let mut last_full = body.is_empty();
                while let Some(line) = lines.next() {
                    header.extend_from_slice(line);
                    header.push(b'\n');
                    last_full = line.len() == 64 && lines.peek().is_none();
                }
                if last_full {
                    header.push(b'\n');
                }
            }
        }
        header.extend_from_slice(b"---");
        let mut mac = Hmac::<Sha256>::new_from_slice(&mac_key).expect("any key length");
        mac.update(&header);
        header.push(b' ');
        header.extend_from_slice(b64.encode(mac.finalize().into_bytes()).as_bytes());
        header.push(b'\n');
        Ok((header, header_len))
    }

    fn error(&self, what: &str, e: age::DecryptError) -> OpenError {
        match e {
            age::DecryptError::NoMatchingKeys => OpenError::NoMatchingKey {
                what: what.to_string(),
                identities: self.origin.clone(),
            },
            other => OpenError::Damaged {
                what: what.to_string(),
                why: other.to_string(),
            },
        }
    }
}

/// A new identity as an age identity file's text, and its recipient.
pub fn generate_identity() -> (String, String) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let text = format!(
        "# created by ferry: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().to_rfc3339(),
        identity.to_string().expose_secret()
    );
    (text, recipient)
}

/// The record at [`MARKER_KEY`]: the store is encrypted, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMarker {
    /// Marker format.
    pub format: u32,
    /// Whether every new object must be encrypted (always `true` when present).
    pub encrypted: bool,
    /// When the first encrypted writer marked the store.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// What a store check found wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreCheckError {
    /// The store is encrypted and this process has no encryption configured.
    #[error(
        "{store} is an encrypted store ({MARKER_KEY} says so, since {since}) and this process has no [encryption] configured: it refuses to write plaintext into it. Set encryption.recipients (or recipients_file) and the name key as the other writers have them"
    )]
    PlaintextWriter {
        /// The store.
        store: String,
        /// Since when it is encrypted.
        since: String,
    },
    /// The marker cannot be read as one.
    #[error(
        "{store}: {MARKER_KEY} is unreadable ({why}); it says whether the store is encrypted, so nothing is written until it is fixed"
    )]
    Unreadable {
        /// The store.
        store: String,
        /// Why.
        why: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The store's marker, `None` when the store was never encrypted.
pub async fn read_marker(store: &dyn ObjectStore) -> Result<Option<StoreMarker>, StoreCheckError> {
    read_marker_with(store, &RetryPolicy::default()).await
}

async fn read_marker_with(
    store: &dyn ObjectStore,
    retry: &RetryPolicy,
) -> Result<Option<StoreMarker>, StoreCheckError> {
    match retry
        .run("read the store's encryption marker", || {
            get_bytes(store, MARKER_KEY)
        })
        .await
    {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreCheckError::Unreadable {
                    store: store.describe(),
                    why: e.to_string(),
                })
        }
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Checks a writer against the store before it writes anything: a writer without
/// encryption is refused by an encrypted store; a writer with encryption marks a
/// store that is not marked yet (from then on, plaintext writers are refused).
/// Store calls are retried by `retry`: a store that is briefly unavailable at
/// start-up delays the writer rather than stopping it.
pub async fn check_store(
    store: &dyn ObjectStore,
    sealer: Option<&Sealer>,
    retry: &RetryPolicy,
) -> Result<(), StoreCheckError> {
    let marker = read_marker_with(store, retry).await?;
    match (marker, sealer) {
        (Some(m), None) if m.encrypted => Err(StoreCheckError::PlaintextWriter {
            store: store.describe(),
            since: m.since.to_rfc3339(),
        }),
        (None, Some(_)) => {
            let marker = StoreMarker {
                format: 1,
                encrypted: true,
                since: chrono::Utc::now(),
            };
            let json = bytes::Bytes::from(
                serde_json::to_vec_pretty(&marker).expect("a marker serialises"),
            );
            retry
                .run("mark the store encrypted", || {
                    store.put_if_absent(MARKER_KEY, json.clone())
                })
                .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Where the encryption keys come from: `[encryption]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Public keys every new object is encrypted to (`age1…`).
    pub recipients: Vec<String>,
    /// A file of recipients, one per line (instead of, or as well as, `recipients`).
    pub recipients_file: Option<PathBuf>,
    /// The name key's file (a secret of at least 32 characters), on writers.
    pub name_key_file: Option<PathBuf>,
    /// The environment variable holding the name key, on writers.
    pub name_key_env: Option<String>,
    /// An identity file, on hosts that restore (never on the hosts that back up).
    pub identity_file: Option<PathBuf>,
}

impl EncryptionConfig {
    /// Whether backups are encrypted.
    pub fn enabled(&self) -> bool {
        !self.recipients.is_empty() || self.recipients_file.is_some()
    }

    /// The recipients, parsed; every problem names its key.
    pub fn parsed_recipients(&self) -> Result<Vec<age::x25519::Recipient>, KeyError> {
        let mut all = parse_recipients(
            self.recipients
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("encryption.recipients[{i}]"), r.as_str())),
        )?;
        if let Some(path) = &self.recipients_file {
            all.extend(recipients_file(path).map_err(|e| match e {
                KeyError::Unreadable { origin, why } => KeyError::Unreadable {
                    origin: format!("encryption.recipients_file {origin}"),
                    why,
                },
                other => other,
            })?);
        }
        Ok(all)
    }

    /// The writers' keys, `None` when encryption is off. Reads the name key.
    pub fn sealer(&self) -> Result<Option<Sealer>, KeyError> {
        if !self.enabled() {
            return Ok(None);
        }
        let recipients = self.parsed_recipients()?;
        let (secret, origin) = match (&self.name_key_file, &self.name_key_env) {
            (Some(path), _) => (
                std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable {
                    origin: format!("encryption.name_key_file {}", path.display()),
                    why: e.to_string(),
                })?,
                format!("encryption.name_key_file {}", path.display()),
            ),
            (None, Some(var)) => (
                std::env::var(var).map_err(|_| KeyError::Unreadable {
                    origin: format!("encryption.name_key_env {var}"),
                    why: "the variable is not set".into(),
                })?,
                format!("encryption.name_key_env {var}"),
            ),
            (None, None) => return Err(KeyError::NoNameKey),
        };
        let key = name_key(&secret, &origin)?;
        Sealer::new(recipients, key).map(Some)
    }

    /// The readers' keys: `--identity` when given, else `identity_file`.
    pub fn opener(&self, identity: Option<&Path>) -> Result<Option<Opener>, KeyError> {
        match identity.or(self.identity_file.as_deref()) {
            Some(path) => Opener::from_file(path).map(Some),
            None => Ok(None),
        }
    }
}

/// A read-only view of a store that decrypts every data object (`objects/…`) with
/// an [`Opener`] as it streams: what restore and deep verification read an
/// encrypted backup through, so the code that checks sizes and SHA-256 sums and
/// decompresses is the same for plain and encrypted backups. An encrypted backup
/// references only encrypted objects (their keyed names are never plain digests).
/// Writes are refused: nothing restores into the store.
#[derive(Debug, Clone)]
pub struct OpenedStore {
    inner: std::sync::Arc<dyn ObjectStore>,
    opener: std::sync::Arc<Opener>,
}

impl OpenedStore {
    /// `inner`, its objects decrypted with `opener`.
    pub fn new(inner: std::sync::Arc<dyn ObjectStore>, opener: std::sync::Arc<Opener>) -> Self {
        OpenedStore { inner, opener }
    }

    fn read_only(op: &'static str, key: &str) -> StorageError {
        StorageError::Backend {
            op,
            key: key.to_string(),
            message: "a decrypting view of the store is read-only".into(),
            retryable: false,
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for OpenedStore {
    async fn put(&self, key: &str, _body: crate::Body) -> Result<u64, StorageError> {
        Err(Self::read_only("put", key))
    }
    async fn put_if_absent(&self, key: &str, _bytes: bytes::Bytes) -> Result<bool, StorageError> {
        Err(Self::read_only("put", key))
    }
    async fn get(&self, key: &str) -> Result<crate::Body, StorageError> {
        use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
        let body = self.inner.get(key).await?;
        if !key.starts_with(OBJECTS_PREFIX) {
            return Ok(body);
        }
        let what = format!("object {key}");
        let input = futures::io::BufReader::with_capacity(256 * 1024, body.compat());
        let decryptor = age::Decryptor::new_async_buffered(input)
            .await
            .map_err(|e| self.opener.error(&what, e))
            .map_err(|e| opened(key, e))?;
        let reader = decryptor
            .decrypt_async(
                self.opener
                    .identities
                    .iter()
                    .map(|i| i as &dyn age::Identity),
            )
            .map_err(|e| self.opener.error(&what, e))
            .map_err(|e| opened(key, e))?;
        Ok(Box::new(reader.compat()))
    }
    async fn head(&self, key: &str) -> Result<Option<crate::ObjectMeta>, StorageError> {
        self.inner.head(key).await
    }
    fn list<'a>(&'a self, prefix: &'a str) -> crate::ListPages<'a> {
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        Err(Self::read_only("delete", key))
    }
    fn describe(&self) -> String {
        format!(
            "{} (decrypted with {})",
            self.inner.describe(),
            self.opener.origin
        )
    }
    async fn put_bytes(
        &self,
        key: &str,
        _bytes: bytes::Bytes,
        _md5: Option<[u8; 16]>,
    ) -> Result<(), StorageError> {
        Err(Self::read_only("put", key))
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<crate::Body, StorageError> {
        if key.starts_with(OBJECTS_PREFIX) {
            return Err(StorageError::Backend {
                op: "get",
                key: key.to_string(),
                message: "ranges of encrypted objects are not served; read the whole object".into(),
                retryable: false,
            });
        }
        self.inner.get_range(key, range).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        Err(Self::read_only(
            "delete",
            keys.first().map(String::as_str).unwrap_or(""),
        ))
    }
    async fn create_multipart(&self, key: &str) -> Result<String, StorageError> {
        Err(Self::read_only("put", key))
    }
    async fn upload_part(
        &self,
        key: &str,
        _upload_id: &str,
        _number: u32,
        _bytes: bytes::Bytes,
    ) -> Result<crate::PartReceipt, StorageError> {
        Err(Self::read_only("put", key))
    }
    async fn complete_multipart(
        &self,
        key: &str,
        _upload_id: &str,
        _parts: &[crate::PartReceipt],
    ) -> Result<(), StorageError> {
        Err(Self::read_only("put", key))
    }
    async fn abort_multipart(&self, key: &str, _upload_id: &str) -> Result<(), StorageError> {
        Err(Self::read_only("put", key))
    }
    async fn list_multipart(
        &self,
        prefix: &str,
    ) -> Result<Vec<crate::PendingUpload>, StorageError> {
        self.inner.list_multipart(prefix).await
    }
}

fn opened(key: &str, e: OpenError) -> StorageError {
    StorageError::Backend {
        op: "decrypt",
        key: key.to_string(),
        message: e.to_string(),
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> (Sealer, Opener) {
        let identity = age::x25519::Identity::generate();
        let sealer = Sealer::new(vec![identity.to_public()], [7u8; 32]).unwrap();
        (sealer, Opener::of(vec![identity], "test key"))
    }

    #[test]
    fn sealed_bytes_open_with_the_identity_and_not_with_another() {
        let (sealer, opener) = sealer();
        let sealed = sealer.seal(b"the orders table");
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        assert!(!sealed.windows(6).any(|w| w == b"orders"));
        assert_eq!(opener.open(&sealed, "m").unwrap(), b"the orders table");
        let (_, other) = super::tests::sealer();
        let err = other.open(&sealed, "manifest m").unwrap_err();
        assert!(matches!(err, OpenError::NoMatchingKey { .. }), "{err}");
        assert!(err.to_string().contains("manifest m"), "{err}");
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(opener.open(&damaged, "m").is_err());
    }

    #[test]
    fn names_are_keyed_stable_and_unlike_the_content_hash() {
        let (a, _) = sealer();
        let sha = hex::encode(Sha256::digest(b"x"));
        assert_eq!(a.object_name(&sha), a.object_name(&sha));
        assert_ne!(a.object_name(&sha), sha);
        let b = Sealer::new(a.recipients.clone(), [8u8; 32]).unwrap();
        assert_ne!(a.object_name(&sha), b.object_name(&sha));
        assert!(a.object_key(&sha).starts_with("objects/"));
    }

    #[test]
    fn bad_keys_are_named_and_secrets_are_not_printed() {
        let err = parse_recipients([("encryption.recipients[0]".to_string(), "age1nope")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("encryption.recipients[0]"), "{err}");
        assert!(err.contains("age1nope"), "{err}");
        let err = name_key("short", "encryption.name_key_env K")
            .unwrap_err()
            .to_string();
        assert!(err.contains("encryption.name_key_env K"), "{err}");
        assert!(!err.contains("short"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.txt");
        std::fs::write(&path, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
        let err = Opener::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("NOTAKEY"), "{err}");
        let config = EncryptionConfig {
            recipients: vec![sealer().1.recipients()[0].to_string()],
            ..Default::default()
        };
        assert!(matches!(config.sealer(), Err(KeyError::NoNameKey)));
    }

    #[test]
    fn a_rewrapped_file_opens_with_the_new_identity_only_and_keeps_its_payload() {
        let (sealer, old) = sealer();
        // Several chunks, so the payload is more than one STREAM chunk.
        let content: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let sealed = sealer.seal(&content);
        let new = age::x25519::Identity::generate();
        let also = age::x25519::Identity::generate();
        let (header, old_len) = old
            .rewrap(&sealed[..4096], &[new.to_public(), also.to_public()], "o")
            .unwrap();
        let mut rewrapped = header;
        rewrapped.extend_from_slice(&sealed[old_len..]);
        let opener = Opener::of(vec![new], "new");
        assert_eq!(opener.open(&rewrapped, "o").unwrap(), content);
        assert_eq!(
            Opener::of(vec![also], "also")
                .open(&rewrapped, "o")
                .unwrap(),
            content
        );
        assert!(matches!(
            old.open(&rewrapped, "o"),
            Err(OpenError::NoMatchingKey { .. })
        ));
        // A header whose MAC was tampered with is refused, not rewrapped.
        let mut bad = sealed.clone();
        let dashes = bad.windows(4).position(|w| w == b"--- ").unwrap();
        bad[dashes + 5] ^= 1;
        assert!(old.rewrap(&bad[..4096], &opener.recipients(), "o").is_err());
    }

    #[tokio::test]
    async fn an_encrypted_store_refuses_plaintext_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::FsStore::new(dir.path(), "").unwrap();
        check_store(&store, None, &RetryPolicy::default())
            .await
            .unwrap();
        let (sealer, _) = sealer();
        check_store(&store, Some(&sealer), &RetryPolicy::default())
            .await
            .unwrap();
        assert!(read_marker(&store).await.unwrap().unwrap().encrypted);
        let err = check_store(&store, None, &RetryPolicy::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreCheckError::PlaintextWriter { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(MARKER_KEY), "{err}");
        check_store(&store, Some(&sealer), &RetryPolicy::default())
            .await
            .unwrap();
    }
}
