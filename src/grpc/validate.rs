//! Request validation: every rule a precise field violation, checked before the gateway is
//! called (design §3, api-notes limits).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// How many field violations are listed; the rest are only counted. Without a cap, a request
/// with thousands of bad entries (e.g. `types`) makes trailers larger than HTTP/2 allows, and
/// the client sees a protocol error instead of INVALID_ARGUMENT.
pub const MAX_LISTED_VIOLATIONS: usize = 10;

/// Collects field violations. The gRPC layer turns them into one INVALID_ARGUMENT
/// (`Violations::check`, in `status`); the agents file into one line of text
/// ([`Violations::into_result`]).
#[derive(Default, Debug)]
pub struct Violations {
    pub(super) listed: Vec<(String, String)>,
    total: usize,
}

impl Violations {
    /// Records that `field` is invalid, and why (kept for the first [`MAX_LISTED_VIOLATIONS`]).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED_VIOLATIONS {
            self.listed.push((field.into(), description.into()));
        }
    }

    /// `Ok` when nothing was recorded, else the violations as one line.
    pub fn into_result(self) -> Result<(), String> {
        self.message().map_or(Ok(()), Err)
    }

    /// One line naming the listed violations and counting the rest; `None` when there are none.
    pub(super) fn message(&self) -> Option<String> {
        if self.total == 0 {
            return None;
        }
        let mut message = self
            .listed
            .iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect::<Vec<_>>()
            .join("; ");
        let unlisted = self.total - self.listed.len();
        if unlisted > 0 {
            message.push_str(&format!(
                "; and {unlisted} more violation(s) not listed ({} in all)",
                self.total
            ));
        }
        Some(message)
    }
}

/// Limits that depend on the gateway's version or the operator's policy.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Lowest agent id accepted (101 in every documented version).
    pub agent_id_min: u64,
    /// Highest agent id accepted (59999 before 2025-11, 999999 after; api-notes §8).
    pub agent_id_max: u64,
    /// Voice paths callers may play; `None` allows every path.
    pub voice_paths: Option<VoicePathPolicy>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            agent_id_min: 101,
            agent_id_max: 999_999,
            voice_paths: None,
        }
    }
}

/// The operator's allow-list of playable paths (the gateway plays any path it is given).
#[derive(Debug, Clone)]
pub struct VoicePathPolicy {
    patterns: Vec<String>,
    prefixes: Vec<String>,
    globs: GlobSet,
}

impl VoicePathPolicy {
    /// Builds the policy from `--voice-path-allow` entries: a glob (`*` does not cross `/`,
    /// a whole `**` component does) or, without glob characters, a plain string prefix
    /// (`/prompts/` allows everything below that directory).
    pub fn new(patterns: &[String]) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        let mut prefixes = Vec::new();
        for p in patterns {
            if p.contains(['*', '?', '[', '{']) {
                builder.add(GlobBuilder::new(p).literal_separator(true).build()?);
            } else {
                prefixes.push(p.clone());
            }
        }
        Ok(Self {
            patterns: patterns.to_vec(),
            prefixes,
            globs: builder.build()?,
        })
    }

    fn allows(&self, path: &str) -> bool {
        let traversal = path.split(['/', '\\']).any(|seg| seg == "..");
        !traversal
            && (self.prefixes.iter().any(|p| path.starts_with(p.as_str()))
                || self.globs.is_match(path))
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

impl Limits {
    /// `agent_id`: decimal digits without a leading zero, within the configured range.
    pub fn agent_id(&self, v: &mut Violations, field: &str, value: &str) {
        if value.is_empty() {
            v.add(field, "must be set");
        } else if !value.bytes().all(|b| b.is_ascii_digit()) {
            v.add(field, "must be decimal digits only");
        } else if value.starts_with('0') {
            v.add(field, "must not start with 0");
        } else {
            let n = if value.len() > 19 {
                None
            } else {
                value.parse::<u64>().ok()
            };
            if !n.is_some_and(|n| (self.agent_id_min..=self.agent_id_max).contains(&n)) {
                v.add(
                    field,
                    format!(
                        "must be between {} and {}",
                        self.agent_id_min, self.agent_id_max
                    ),
                );
            }
        }
    }

    /// `voice_path`: 1–100 characters (Unicode scalar values), no control characters, and
    /// allowed by the operator's policy.
    pub fn voice_path(&self, v: &mut Violations, field: &str, value: &str) {
        let chars = value.chars().count();
        if chars == 0 {
            v.add(field, "must be set");
        } else if chars > 100 {
            v.add(
                field,
                format!("must be at most 100 characters (got {chars})"),
            );
        } else if has_control(value) {
            v.add(field, "must not contain control characters");
        } else if value.trim().is_empty() {
            v.add(field, "must not be blank");
        } else if let Some(policy) = &self.voice_paths {
            if !policy.allows(value) {
                v.add(
                    field,
                    format!(
                        "is not allowed by this bridge's --voice-path-allow ({})",
                        policy.patterns.join(", ")
                    ),
                );
            }
        }
    }
}

/// A number the gateway receives as a string of at most five digits (`volumechange`…).
pub fn five_digits(v: &mut Violations, field: &str, value: Option<u32>) {
    if value.is_some_and(|n| n > 99_999) {
        v.add(field, "must be at most 99999");
    }
}

/// Seconds to skip forward or back: 0–2147483647 (api-notes §4.5).
pub fn jump_seconds(v: &mut Violations, field: &str, value: u32) {
    if value > i32::MAX as u32 {
        v.add(field, "must be at most 2147483647");
    }
}

/// `start_position_seconds`: a non-negative offset.
pub fn start_position(v: &mut Violations, field: &str, value: Option<i64>) {
    if value.is_some_and(|n| n < 0) {
        v.add(field, "must not be negative");
    }
}

/// `times`: at least 1 (the gateway treats other values as 1; refusing 0 surfaces the mistake).
pub fn times(v: &mut Violations, field: &str, value: Option<u32>) {
    if let Some(n) = value {
        if n == 0 || n > 99_999 {
            v.add(field, "must be between 1 and 99999");
        }
    }
}

/// `location_id`: -1 (vendor examples' "any") or a node id 0–65535.
pub fn location_id(v: &mut Violations, field: &str, value: Option<i32>) {
    if value.is_some_and(|n| !(-1..=65_535).contains(&n)) {
        v.add(field, "must be between -1 and 65535");
    }
}

/// `password`: at most 32 characters (may be empty, as in the vendor's examples), no controls.
pub fn password(v: &mut Violations, field: &str, value: &str) {
    if value.chars().count() > 32 {
        v.add(field, "must be at most 32 characters");
    } else if has_control(value) {
        v.add(field, "must not contain control characters");
    }
}

/// `phone_number`: 1–24 decimal digits (the softphone number the gateway calls).
pub fn phone_number(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "must be set");
    } else if !value.bytes().all(|b| b.is_ascii_digit()) {
        v.add(field, "must be decimal digits only");
    } else if value.len() > 24 {
        v.add(field, "must be at most 24 digits");
    }
}

/// `agent_type`: 4 (PC + phone) or 11 (PC + video phone).
pub fn agent_type(v: &mut Violations, field: &str, value: Option<u32>) {
    if value.is_some_and(|n| n != 4 && n != 11) {
        v.add(field, "must be 4 (PC+phone) or 11 (PC+video phone)");
    }
}

/// `status`: 3 (busy), 4 (idle) or 5 (wrap-up).
pub fn status(v: &mut Violations, field: &str, value: Option<u32>) {
    if value.is_some_and(|n| !(3..=5).contains(&n)) {
        v.add(field, "must be 3 (busy), 4 (idle) or 5 (wrap-up)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fails(f: impl FnOnce(&mut Violations)) -> bool {
        let mut v = Violations::default();
        f(&mut v);
        v.check().is_err()
    }

    #[test]
    fn agent_ids() {
        let l = Limits::default();
        for bad in [
            "",
            "abc",
            "0101",
            "100",
            "1000000",
            "12a",
            "-5",
            "99999999999999999999999",
            " 101",
            "１０１",
        ] {
            assert!(fails(|v| l.agent_id(v, "agent_id", bad)), "{bad:?}");
        }
        for good in ["101", "49999", "999999"] {
            assert!(!fails(|v| l.agent_id(v, "agent_id", good)), "{good:?}");
        }
    }

    #[test]
    fn voice_paths_count_characters() {
        let l = Limits::default();
        assert!(!fails(|v| l.voice_path(v, "voice_path", &"é".repeat(100))));
        assert!(fails(|v| l.voice_path(v, "voice_path", &"a".repeat(101))));
        assert!(fails(|v| l.voice_path(v, "voice_path", "")));
        assert!(fails(|v| l.voice_path(v, "voice_path", "   ")));
        assert!(fails(|v| l.voice_path(v, "voice_path", "\u{3000}")));
        assert!(fails(|v| l.voice_path(v, "voice_path", "/a\r\nb")));
    }

    #[test]
    fn allow_list_policy() {
        let l = Limits {
            voice_paths: Some(
                VoicePathPolicy::new(&[
                    "/prompts/".into(),
                    "Y:/*/*.V3".into(),
                    "/a/**/*.wav".into(),
                ])
                .unwrap(),
            ),
            ..Limits::default()
        };
        for ok in [
            "/prompts/a.wav",
            "/prompts/x/y.wav",
            "Y:/6/1.V3",
            "/a/b/c/d.wav",
        ] {
            assert!(!fails(|v| l.voice_path(v, "voice_path", ok)), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "/prompts/../etc/passwd",
            "Y:/6/0/1.V3",
            "/promptsX.wav",
            "/a/b/c/d.mp3",
        ] {
            assert!(fails(|v| l.voice_path(v, "voice_path", bad)), "{bad}");
        }
    }

    #[test]
    fn numbers() {
        assert!(fails(|v| five_digits(v, "volume", Some(100_000))));
        assert!(!fails(|v| five_digits(v, "volume", Some(99_999))));
        assert!(fails(|v| jump_seconds(v, "seconds", u32::MAX)));
        assert!(fails(|v| start_position(v, "s", Some(-1))));
        assert!(fails(|v| times(v, "times", Some(0))));
        assert!(fails(|v| location_id(v, "l", Some(-2))));
        assert!(fails(|v| location_id(v, "l", Some(65_536))));
        assert!(!fails(|v| location_id(v, "l", Some(-1))));
        assert!(fails(|v| password(v, "p", &"x".repeat(33))));
        assert!(fails(|v| phone_number(v, "p", "12-34")));
        assert!(fails(|v| agent_type(v, "a", Some(5))));
        assert!(fails(|v| status(v, "s", Some(6))));
    }
}
