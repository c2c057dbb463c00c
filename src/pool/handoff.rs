//! The Guid hand-off: `holders/{agent}` carries the owner's current gateway session (its Guid
//! and cookies), sealed, so that an instance taking the agent over after its holder crashed or
//! froze can end that session the only way that cannot kick anybody else: a `logout` with the
//! session's own Guid (see `crate::session`'s ending rule).
//!
//! Sealing is AES-256-GCM (`ring`) under the pool key (`--pool-key-file`: 32 bytes as 64 hex
//! digits, the same file for every replica, from a Kubernetes Secret). A second, previous key
//! (`--pool-key-previous-file`) opens records during a key rotation; records are always sealed
//! with the current one. The agent id is the associated data, so a record copied to another
//! agent's key does not open. A record that does not open counts as no record: the next owner
//! then waits for the gateway's idle sign-out instead (slower, never unsafe). etcd readers
//! without the key learn nothing but the record's size.
//!
//! Record layout: `1` (version) ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte tag, the plain
//! text being a small JSON object `{"i": instance, "g": guid, "c": cookies, "t": unix ms}`.

use crate::secret::Guid;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

const VERSION: u8 = 1;

/// The session an owner holds, as handed to whoever takes the agent over.
#[derive(Clone)]
pub struct HandOff {
    /// The instance that wrote it.
    pub instance: String,
    /// The session's Guid when written.
    pub guid: Guid,
    /// The session's `Cookie` header text (load-balancer stickiness), if any.
    pub cookies: Option<Zeroizing<String>>,
    /// When it was written (Unix ms, the writer's clock): how current the Guid may be.
    pub written_at_ms: u64,
}

impl std::fmt::Debug for HandOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOff")
            .field("instance", &self.instance)
            .field("written_at_ms", &self.written_at_ms)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Plain<'a> {
    i: &'a str,
    g: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    c: Option<&'a str>,
    t: u64,
}

/// Why a pool key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{flag} {path}: cannot read it: {source}")]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not 64 hexadecimal digits.
    #[error("{flag} {path}: expected 32 bytes written as 64 hexadecimal digits (make one with `openssl rand -hex 32`)")]
    Format {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: String,
    },
}

/// The pool's keys: one that seals, and the ones that open (current first, then previous).
pub struct Keyring {
    keys: Vec<LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(<{} redacted>)", self.keys.len())
    }
}

impl Keyring {
    /// Reads the current key and, during a rotation, the previous one.
    pub fn from_files(current: &Path, previous: Option<&Path>) -> Result<Keyring, KeyError> {
        let mut keys = vec![read_key(current, "--pool-key-file")?];
        if let Some(previous) = previous {
            keys.push(read_key(previous, "--pool-key-previous-file")?);
        }
        Ok(Keyring {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// A keyring from raw 32-byte keys (current first).
    pub fn from_keys(keys: &[[u8; 32]]) -> Keyring {
        Keyring {
            keys: keys.iter().map(less_safe).collect(),
            random: SystemRandom::new(),
        }
    }

    /// Seals `hand_off` for `agent`'s holder record.
    pub fn seal(&self, agent: &str, hand_off: &HandOff) -> Vec<u8> {
        let plain = Plain {
            i: &hand_off.instance,
            g: hand_off.guid.expose(),
            c: hand_off.cookies.as_deref().map(String::as_str),
            t: hand_off.written_at_ms,
        };
        let mut text = Zeroizing::new(serde_json::to_vec(&plain).unwrap_or_default());
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG does not fail on the platforms the bridge runs on; if it ever did,
        // a zero nonce would repeat, so the record is left empty (no record) instead.
        if self.random.fill(&mut nonce).is_err() {
            return Vec::new();
        }
        let key = &self.keys[0];
        let mut out = Vec::with_capacity(1 + NONCE_LEN + text.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(agent.as_bytes()),
                &mut *text,
            )
            .is_err()
        {
            return Vec::new();
        }
        out.extend_from_slice(&text);
        out
    }

    /// Opens `agent`'s holder record: `None` if it is not one sealed for this agent under one
    /// of the keys.
    pub fn open(&self, agent: &str, record: &[u8]) -> Option<HandOff> {
        let (&version, rest) = record.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.keys.iter().find_map(|key| {
            let mut buf = Zeroizing::new(sealed.to_vec());
            let text = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(agent.as_bytes()),
                    &mut buf,
                )
                .ok()?;
            let plain: Plain = serde_json::from_slice(text).ok()?;
            Some(HandOff {
                instance: plain.i.to_owned(),
                guid: Guid::new(plain.g),
                cookies: plain.c.map(|c| Zeroizing::new(c.to_owned())),
                written_at_ms: plain.t,
            })
        })
    }
}

/// Now, in Unix ms (the hand-off's `written_at_ms`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn less_safe(key: &[u8; 32]) -> LessSafeKey {
    // AES-256 takes any 32 bytes.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

fn read_key(path: &Path, flag: &'static str) -> Result<LessSafeKey, KeyError> {
    let shown = path.display().to_string();
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            flag,
            path: shown.clone(),
            source,
        })?,
    );
    let hex = text.trim();
    let format = || KeyError::Format {
        flag,
        path: shown.clone(),
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format());
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format())?;
    }
    Ok(less_safe(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand_off() -> HandOff {
        HandOff {
            instance: "bridge-a".into(),
            guid: Guid::new("0123-secret-guid"),
            cookies: Some(Zeroizing::new("ccgwsticky=n1".into())),
            written_at_ms: 42,
        }
    }

    #[test]
    fn a_sealed_record_opens_for_its_agent_only_and_hides_the_guid() {
        let ring = Keyring::from_keys(&[[7; 32]]);
        let record = ring.seal("101", &hand_off());
        assert!(!String::from_utf8_lossy(&record).contains("secret"));
        let opened = ring.open("101", &record).expect("opens");
        assert_eq!(opened.guid.expose(), "0123-secret-guid");
        assert_eq!(opened.instance, "bridge-a");
        assert_eq!(
            opened.cookies.as_deref().map(String::as_str),
            Some("ccgwsticky=n1")
        );
        assert_eq!(opened.written_at_ms, 42);
        assert!(ring.open("102", &record).is_none(), "bound to its agent");
        assert!(!format!("{opened:?}").contains("secret"));
    }

    #[test]
    fn a_record_under_another_key_or_tampered_with_counts_as_none() {
        let old = Keyring::from_keys(&[[1; 32]]);
        let record = old.seal("101", &hand_off());
        assert!(Keyring::from_keys(&[[2; 32]])
            .open("101", &record)
            .is_none());
        let rotated = Keyring::from_keys(&[[2; 32], [1; 32]]);
        assert!(
            rotated.open("101", &record).is_some(),
            "the previous key opens"
        );
        let mut bad = record.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(old.open("101", &bad).is_none());
        assert!(
            old.open("101", b"bridge-a").is_none(),
            "an old plain record"
        );
        assert!(old.open("101", b"").is_none());
    }

    #[test]
    fn key_files_are_64_hex_digits() {
        let dir = std::env::temp_dir().join(format!("ccgw-key-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        let bad = dir.join("bad");
        std::fs::write(&bad, "not a key").unwrap();
        assert!(Keyring::from_files(&good, None).is_ok());
        let e = Keyring::from_files(&bad, None).unwrap_err().to_string();
        assert!(
            e.contains("--pool-key-file") && e.contains("openssl rand -hex 32"),
            "{e}"
        );
        let e = Keyring::from_files(&good, Some(&dir.join("missing"))).unwrap_err();
        assert!(e.to_string().contains("--pool-key-previous-file"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
