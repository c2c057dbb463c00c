//! JSON request bodies, with the vendor's exact field spellings (`phonenum`, `startpostion`…).
//!
//! Optional fields the caller did not set are omitted, so the gateway applies its own defaults
//! (which differ between versions, e.g. `releasephone` for login vs forcelogin).

use bytes::Bytes;
use serde::Serialize;
use zeroize::Zeroizing;

/// Body of `login` / `forcelogin` (api-notes §1.1).
#[derive(Serialize)]
pub struct SignInBody<'a> {
    /// CTI password (clear text; the caller holds it zeroized).
    pub password: &'a str,
    /// Softphone number.
    pub phonenum: &'a str,
    /// Answer calls automatically.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoanswer: Option<bool>,
    /// Enter idle automatically after a call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoenteridle: Option<bool>,
    /// Hang up after each call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub releasephone: Option<bool>,
    /// 4 = PC+phone, 11 = PC+phone video.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agenttype: Option<u32>,
    /// State after sign-in: 3 busy, 4 idle, 5 wrap-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// Push mode: where the gateway POSTs the agent's events (≤ 200 characters). Push mode is
    /// selected only when this and `serviceToken` are both sent (api-notes §1.1).
    #[serde(rename = "callBackUri", skip_serializing_if = "Option::is_none")]
    pub call_back_uri: Option<&'a str>,
    /// Push mode: the token the gateway presents on every callback (≤ 50 alphanumerics).
    #[serde(rename = "serviceToken", skip_serializing_if = "Option::is_none")]
    pub service_token: Option<&'a str>,
}

/// Body of `beginPlay` (api-notes §4.1).
#[derive(Serialize, Default)]
pub struct PlayBody<'a> {
    /// File path on the media server.
    pub voicepath: &'a str,
    /// Start offset in seconds (the vendor's spelling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startpostion: Option<i64>,
    /// Volume; a string of up to five digits on the wire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumechange: Option<String>,
    /// Speed; a string of up to five digits on the wire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedchange: Option<String>,
    /// Play count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Distributed call-center node.
    #[serde(rename = "locationId", skip_serializing_if = "Option::is_none")]
    pub location_id: Option<i32>,
}

/// Serializes a body; these types cannot fail to serialize.
pub fn to_bytes<T: Serialize>(body: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

/// Serializes a body that holds a secret (the sign-in password) into a buffer of exactly its
/// size, wiped when the last reference to it (the HTTP client's, after sending) is dropped.
/// Exactly: a buffer that grows while being written reallocates and leaves a copy of what it
/// held so far in freed memory.
pub fn to_secret_bytes<T: Serialize>(body: &T) -> Bytes {
    Bytes::from_owner(ZeroizingBuf(secret_json(body)))
}

fn secret_json<T: Serialize>(body: &T) -> Zeroizing<Vec<u8>> {
    let mut size = ByteCount(0);
    // Serializing these plain fields cannot fail.
    let _ = serde_json::to_writer(&mut size, body);
    let mut buf = Zeroizing::new(Vec::with_capacity(size.0));
    let _ = serde_json::to_writer(&mut *buf, body);
    buf
}

/// A writer that only counts, to size a secret's buffer before writing it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A byte buffer wiped on drop, as an owner `Bytes` can share.
struct ZeroizingBuf(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_are_not_sent() {
        let b = to_bytes(&PlayBody {
            voicepath: "/a.wav",
            volumechange: Some("20".into()),
            ..Default::default()
        });
        assert_eq!(&b[..], br#"{"voicepath":"/a.wav","volumechange":"20"}"#);
        let s = to_bytes(&SignInBody {
            password: "",
            phonenum: "88001",
            autoanswer: None,
            autoenteridle: Some(false),
            releasephone: None,
            agenttype: None,
            status: Some(4),
            call_back_uri: None,
            service_token: None,
        });
        assert_eq!(
            &s[..],
            br#"{"password":"","phonenum":"88001","autoenteridle":false,"status":4}"#
        );
    }

    #[test]
    fn a_secret_body_is_written_into_a_buffer_of_exactly_its_size() {
        // Longer than any first guess at a capacity: nothing may be reallocated.
        let body = SignInBody {
            password: &"p".repeat(32),
            phonenum: &"8".repeat(24),
            autoanswer: Some(false),
            autoenteridle: Some(false),
            releasephone: Some(false),
            agenttype: Some(11),
            status: Some(5),
            call_back_uri: Some("https://10.1.2.3:9443/ccgw/callback"),
            service_token: Some("A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"),
        };
        let buf = secret_json(&body);
        assert!(buf.len() > 128, "{}", buf.len());
        assert_eq!(buf.capacity(), buf.len());
        assert_eq!(&to_secret_bytes(&body)[..], &buf[..]);
    }
}
