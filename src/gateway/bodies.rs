//! JSON request bodies, with the vendor's exact field spellings (`phonenum`, `startpostion`…).
//!
//! Optional fields the caller did not set are omitted, so the gateway applies its own defaults
//! (which differ between versions, e.g. `releasephone` for login vs forcelogin).

use bytes::Bytes;
use serde::Serialize;

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
        });
        assert_eq!(
            &s[..],
            br#"{"password":"","phonenum":"88001","autoenteridle":false,"status":4}"#
        );
    }
}
