//! The pool's records as this instance last saw them: filled by one paged read at a known
//! revision, then kept current by one watch from the next revision (a watch that breaks, or
//! a new lease, means a new read: resuming a watch cannot tell whether it missed a batch). A reconcile reads this
//! mirror, not etcd, so no request and no answer grows with the pool (issue 23 points 1 and
//! 2: the one-transaction read of every member, owner and holder key broke tonic's 4 MiB
//! decode limit near 27,000 agents, and ran again on every revision on every instance).
//!
//! Backend-neutral on purpose: the etcd backend feeds it keys relative to the pool's prefix,
//! and its rules (what a key means, which revision wins) are tested here without a server.

use super::Probe;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A passed probe's record value (anything else reads as failed).
pub(super) const PROBE_OK: &str = "ok";

/// The kinds of record a reconcile reads (`{prefix}{kind}/…`). Catalogs are read on demand and
/// cached by digest; names concern joining only.
pub(super) const MIRRORED: [&str; 4] = ["members", "owners", "holders", "probes"];

/// Members, owners and holder keys at [`Mirror::revision`].
///
/// Owners and holders are shared with the views handed out (`Arc`): a view costs no copy of
/// 30,000 entries, and a change after it copies the map once (`Arc::make_mut`).
#[derive(Debug, Default)]
pub(super) struct Mirror {
    revision: i64,
    /// Member → its catalog digest, sorted so every view lists members in one order.
    members: BTreeMap<String, String>,
    owners: Arc<HashMap<String, String>>,
    holders: Arc<HashSet<String>>,
    /// Instance → its last published gateway probe (`probes/{instance}`: `ok` or `failing`).
    probes: HashMap<String, Probe>,
    /// Keys this instance changed itself, with the revision of its change: the mirror shows
    /// the change at once (a reconcile right after an acquire must not take its own agent for
    /// one that vanished), and the watch's older events for the key, still on their way, are
    /// ignored until the watch reaches that revision.
    written: HashMap<String, i64>,
}

impl Mirror {
    /// An empty mirror of the state at `revision` (the paged read's), to fill with [`Self::put`].
    pub(super) fn at(revision: i64) -> Self {
        Self {
            revision,
            ..Self::default()
        }
    }

    /// The etcd revision of the read that filled this mirror: its watch starts after it.
    pub(super) fn revision(&self) -> i64 {
        self.revision
    }

    /// A watch event: `key` holds `value` (`None`: deleted) since `revision`. Whether a
    /// reconcile should look: probes are rewritten every tick by every instance and are read
    /// only by the next regular pass, so they wake nobody.
    pub(super) fn changed(&mut self, key: &str, value: Option<&[u8]>, revision: i64) -> bool {
        if let Some(&floor) = self.written.get(key) {
            if revision < floor {
                return false;
            }
            self.written.remove(key);
        }
        match value {
            Some(value) => self.put(key, value, revision),
            None => self.delete(key),
        }
        !key.starts_with("probes/")
    }

    /// This instance's own change of `key` (`None`: deleted), done at `revision`.
    pub(super) fn wrote(&mut self, key: &str, value: Option<&[u8]>, revision: i64) {
        self.written.insert(key.to_owned(), revision);
        match value {
            Some(value) => self.put(key, value, revision),
            None => self.delete(key),
        }
    }

    /// A key (relative to the pool's prefix) holds `value` since `revision`. Keys of other
    /// kinds, and values that are not UTF-8 where text is expected, are ignored (as a direct
    /// read ignored them).
    pub(super) fn put(&mut self, key: &str, value: &[u8], revision: i64) {
        if let Some(agent) = key.strip_prefix("holders/") {
            if !self.holders.contains(agent) {
                Arc::make_mut(&mut self.holders).insert(agent.to_owned());
            }
            return;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return;
        };
        if let Some(member) = key.strip_prefix("members/") {
            self.members.insert(member.to_owned(), value.to_owned());
        } else if let Some(instance) = key.strip_prefix("probes/") {
            let ok = value == PROBE_OK;
            self.probes
                .insert(instance.to_owned(), Probe { ok, revision });
        } else if let Some(agent) = key.strip_prefix("owners/") {
            if self.owners.get(agent).map(String::as_str) != Some(value) {
                Arc::make_mut(&mut self.owners).insert(agent.to_owned(), value.to_owned());
            }
        }
    }

    /// A key (relative to the pool's prefix) was deleted (or its lease ended).
    pub(super) fn delete(&mut self, key: &str) {
        if let Some(agent) = key.strip_prefix("holders/") {
            if self.holders.contains(agent) {
                Arc::make_mut(&mut self.holders).remove(agent);
            }
        } else if let Some(member) = key.strip_prefix("members/") {
            self.members.remove(member);
        } else if let Some(instance) = key.strip_prefix("probes/") {
            self.probes.remove(instance);
        } else if let Some(agent) = key.strip_prefix("owners/") {
            if self.owners.contains_key(agent) {
                Arc::make_mut(&mut self.owners).remove(agent);
            }
        }
    }

    /// Members and their catalog digests, in name order.
    pub(super) fn members(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members.iter().map(|(m, d)| (m.as_str(), d.as_str()))
    }

    /// Agent → owning instance, shared.
    pub(super) fn owners(&self) -> Arc<HashMap<String, String>> {
        self.owners.clone()
    }

    /// Each instance's last published probe.
    pub(super) fn probes(&self) -> &HashMap<String, Probe> {
        &self.probes
    }

    /// Agents with a holder record, shared.
    pub(super) fn holders(&self) -> Arc<HashSet<String>> {
        self.holders.clone()
    }

    /// The number of records mirrored (for the log line after a full read).
    pub(super) fn len(&self) -> usize {
        self.members.len() + self.owners.len() + self.holders.len()
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
pub(super) fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

/// The key a paged read resumes from after `last`: the smallest key greater than it.
pub(super) fn after(last: &[u8]) -> Vec<u8> {
    let mut next = last.to_vec();
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_and_deletes_follow_the_keys_kinds() {
        let mut m = Mirror::at(7);
        m.put("members/b", b"d2", 1);
        m.put("members/a", b"d1", 1);
        m.put("owners/1001", b"a", 1);
        m.put("holders/1001", b"\x00sealed\xff", 1);
        m.put("catalogs/d1", b"1001\n1002", 1);
        m.put("names/a", b"a", 1);
        m.put("owners/1002", b"\xff\xfe", 1);
        assert_eq!(
            m.members().collect::<Vec<_>>(),
            [("a", "d1"), ("b", "d2")],
            "members in name order, with their digests"
        );
        assert_eq!(m.owners().get("1001").map(String::as_str), Some("a"));
        assert!(
            !m.owners().contains_key("1002"),
            "a non-UTF-8 owner is ignored"
        );
        assert!(
            m.holders().contains("1001"),
            "a holder key counts, whatever its value"
        );
        assert_eq!(m.len(), 4);

        m.delete("owners/1001");
        m.delete("holders/1001");
        m.delete("members/b");
        m.delete("catalogs/d1");
        assert!(m.owners().is_empty() && m.holders().is_empty());
        assert_eq!(m.members().collect::<Vec<_>>(), [("a", "d1")]);
    }

    #[test]
    fn probes_keep_their_revision_and_wake_no_reconcile() {
        let mut m = Mirror::at(1);
        assert!(!m.changed("probes/a", Some(PROBE_OK.as_bytes()), 5));
        assert!(!m.changed("probes/b", Some(b"failing"), 6));
        assert!(m.changed("owners/1001", Some(b"a"), 7));
        assert_eq!(
            m.probes()["a"],
            Probe {
                ok: true,
                revision: 5
            }
        );
        assert_eq!(
            m.probes()["b"],
            Probe {
                ok: false,
                revision: 6
            }
        );
        // The lease of `a` ended: its probe goes with it.
        assert!(!m.changed("probes/a", None, 8));
        assert!(!m.probes().contains_key("a"));
    }

    #[test]
    fn a_view_handed_out_keeps_its_state_while_the_mirror_moves_on() {
        let mut m = Mirror::at(1);
        m.put("owners/1001", b"a", 1);
        let seen = m.owners();
        m.put("owners/1001", b"b", 1);
        m.put("owners/1002", b"b", 1);
        assert_eq!(seen.get("1001").map(String::as_str), Some("a"));
        assert_eq!(seen.len(), 1);
        assert_eq!(m.owners().len(), 2);
        // An unchanged put copies nothing: the map is still the one handed out.
        let again = m.owners();
        m.put("owners/1002", b"b", 1);
        assert!(Arc::ptr_eq(&again, &m.owners()));
    }

    #[test]
    fn an_own_write_shows_at_once_and_older_events_for_its_key_do_not_undo_it() {
        let mut m = Mirror::at(1);
        m.wrote("owners/1001", Some(b"a"), 10);
        assert_eq!(m.owners().get("1001").map(String::as_str), Some("a"));
        // The delete of a previous owner's record (revision 8) arrives after the acquire.
        m.changed("owners/1001", None, 8);
        assert_eq!(m.owners().get("1001").map(String::as_str), Some("a"));
        // The acquire's own event, then a later release by a take-over's peer: applied.
        m.changed("owners/1001", Some(b"a"), 10);
        m.changed("owners/1001", None, 12);
        assert!(m.owners().is_empty());
        m.changed("owners/1001", Some(b"b"), 11);
        assert_eq!(
            m.owners().get("1001").map(String::as_str),
            Some("b"),
            "without an own write, events apply in the order the watch delivers them"
        );
    }

    #[test]
    fn range_ends_and_resume_keys_bound_a_prefix_exactly() {
        assert_eq!(range_end(b"/ccgw/owners/"), b"/ccgw/owners0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
        assert_eq!(after(b"k1"), b"k1\x00".to_vec());
        assert!(after(b"k1").as_slice() > b"k1".as_slice());
        assert!(after(b"k1").as_slice() < b"k10".as_slice());
    }
}
