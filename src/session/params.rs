//! What a sign-in needs, held (password zeroized on drop) for re-sign-in.

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
    pub fn body(&self) -> Bytes {
        let body = SignInBody {
            password: self.password.expose(),
            phonenum: &self.phone_number,
            autoanswer: self.auto_answer,
            autoenteridle: self.auto_enter_idle,
            releasephone: self.release_phone,
            agenttype: self.agent_type,
            status: self.status,
        };
        to_secret_bytes(&body)
    }

    /// Whether another sign-in request is for the same agent identity and settings, so that
    /// returning the held session does not hand it to a caller with other credentials.
    pub fn same_credentials(&self, other: &SignInParams) -> bool {
        let (a, b) = (
            self.password.expose().as_bytes(),
            other.password.expose().as_bytes(),
        );
        // Length is not secret here; compare the bytes without an early exit.
        a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
            && self.phone_number == other.phone_number
    }
}
