//! What a sign-in needs, held (password zeroized on drop) for re-sign-in.

use crate::events::ServiceToken;
use crate::gateway::bodies::{to_secret_bytes, SignInBody};
use crate::secret::Password;
use bytes::Bytes;

/// Credentials and gateway options of one agent's sign-in.
#[derive(Clone, Debug)]
pub struct SignInParams {
    /// CTI password; never logged (its `Debug` is redacted).
    pub password: Password,
    /// Softphone number (`phonenum`).
    pub phone_number: String,
    /// Take the agent over from another client (`forcelogin`).
    pub force: bool,
    /// `autoanswer`
    pub auto_answer: Option<bool>,
    /// `autoenteridle`
    pub auto_enter_idle: Option<bool>,
    /// `releasephone`
    pub release_phone: Option<bool>,
    /// `agenttype`
    pub agent_type: Option<u32>,
    /// `status`
    pub status: Option<u32>,
}

impl SignInParams {
    /// A plain sign-in (no `force`) with the gateway's defaults for every option.
    pub fn new(password: Password, phone_number: String) -> Self {
        Self {
            password,
            phone_number,
            force: false,
            auto_answer: None,
            auto_enter_idle: None,
            release_phone: None,
            agent_type: None,
            status: None,
        }
    }

    /// The JSON body for `login`/`forcelogin`. It holds the password in clear, so its buffer
    /// is wiped when the last reference to it (the HTTP client's, after sending) is dropped.
    /// `push`: the callback URL and the session's token, which select push mode for the
    /// session (both or neither).
    pub fn body(&self, push: Option<(&str, &ServiceToken)>) -> Bytes {
        let body = SignInBody {
            password: self.password.expose(),
            phonenum: &self.phone_number,
            autoanswer: self.auto_answer,
            autoenteridle: self.auto_enter_idle,
            releasephone: self.release_phone,
            agenttype: self.agent_type,
            status: self.status,
            call_back_uri: push.map(|(url, _)| url),
            service_token: push.map(|(_, token)| token.expose()),
        };
        to_secret_bytes(&body)
    }
}

/// A salted hash of the credentials a session was signed in with (password and phone number):
/// what a later SignIn is compared with before it gets the held session, kept also when the
/// password itself is not (`--no-resign-in`).
#[derive(Clone)]
pub(crate) struct CredentialsHash {
    salt: [u8; 16],
    digest: Vec<u8>,
}

impl CredentialsHash {
    /// The hash of `params`' credentials under a fresh salt.
    pub(crate) fn of(params: &SignInParams) -> Self {
        let salt = crate::crypto::random_salt();
        let digest = Self::digest(&salt, params);
        Self { salt, digest }
    }

    /// Whether `params` carries the same credentials (compared without an early exit).
    pub(crate) fn matches(&self, params: &SignInParams) -> bool {
        let other = Self::digest(&self.salt, params);
        other.len() == self.digest.len()
            && other
                .iter()
                .zip(&self.digest)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }

    fn digest(salt: &[u8], params: &SignInParams) -> Vec<u8> {
        crate::crypto::salted_sha256(
            salt,
            &[
                params.password.expose().as_bytes(),
                params.phone_number.as_bytes(),
            ],
        )
    }
}
