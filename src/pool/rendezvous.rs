//! Which live instance should hold an agent: rendezvous (highest-random-weight) hashing.
//!
//! Every instance computes the same answer from the same member list, spreads agents evenly on
//! average (about n/m of n agents per member, give or take √(n/m): a hash, not a deal), and
//! when a member joins or leaves only the agents whose top choice changes move (≈ 1/n).
//! The hash is spelled out here (FNV-1a, then a SplitMix64 finaliser) rather than taken from
//! `std`, whose hasher may change between Rust releases: during a rolling update two bridge
//! versions must agree.

/// The member that should hold `agent`, or `None` without members.
pub fn choose<'a>(members: &'a [String], agent: &str) -> Option<&'a str> {
    choose_among(members.iter().map(String::as_str), agent)
}

/// As [`choose`], over the members that can hold `agent` (those whose agents file lists it).
pub fn choose_among<'a>(members: impl Iterator<Item = &'a str>, agent: &str) -> Option<&'a str> {
    members.max_by_key(|m| (weight(m, agent), *m))
}

fn weight(member: &str, agent: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0xff]).chain(agent.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("bridge-{i}")).collect()
    }

    #[test]
    fn spreads_evenly_and_moves_only_what_it_must() {
        let agents: Vec<String> = (1000..4000).map(|a| a.to_string()).collect();
        let three = names(3);
        let mut counts = [0usize; 3];
        for a in &agents {
            let m = choose(&three, a).unwrap();
            counts[three.iter().position(|x| x == m).unwrap()] += 1;
        }
        // 3000 agents over 3 members: each gets a third, give or take 10 %.
        assert!(
            counts.iter().all(|&c| (900..=1100).contains(&c)),
            "{counts:?}"
        );
        // A fourth member takes agents only from the others, never swaps them among them.
        let four = names(4);
        for a in &agents {
            let before = choose(&three, a).unwrap();
            let after = choose(&four, a).unwrap();
            assert!(
                after == before || after == "bridge-3",
                "{a}: {before} -> {after}"
            );
        }
    }

    #[test]
    fn independent_of_member_order() {
        let mut members = names(5);
        let first: Vec<_> = (0..100)
            .map(|a| choose(&members, &a.to_string()).unwrap().to_owned())
            .collect();
        members.reverse();
        let second: Vec<_> = (0..100)
            .map(|a| choose(&members, &a.to_string()).unwrap().to_owned())
            .collect();
        assert_eq!(first, second);
        assert_eq!(choose(&[], "1001"), None);
    }
}
