//! Choosing an endpoint: pure functions over the endpoints' state, property-tested.

use crate::config::services::Balance;

/// What balancing sees of one endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    /// Its base URL (the key of `user_hash`).
    pub base: &'a str,
    /// In rotation (healthy, not suspect).
    pub up: bool,
    /// Requests in flight to it.
    pub in_flight: usize,
}

/// The endpoint for the next request, among those up and not `excluded` (the one that just
/// failed); `None` when there is none. `turn` rotates round-robin and breaks ties.
pub(crate) fn pick(
    balance: Balance,
    endpoints: &[View<'_>],
    turn: usize,
    user: &str,
    excluded: Option<usize>,
) -> Option<usize> {
    let up: Vec<usize> = (0..endpoints.len())
        .filter(|&i| endpoints[i].up && Some(i) != excluded)
        .collect();
    if up.is_empty() {
        return None;
    }
    Some(match balance {
        Balance::RoundRobin => up[turn % up.len()],
        Balance::LeastRequests => {
            let start = turn % up.len();
            (0..up.len())
                .map(|k| up[(start + k) % up.len()])
                .min_by_key(|&i| endpoints[i].in_flight)
                .expect("not empty")
        }
        // Rendezvous hashing: the endpoint with the highest hash of (user, endpoint). A user keeps
        // its endpoint while it is up; when it goes, only its users move.
        Balance::UserHash => *up
            .iter()
            .max_by_key(|&&i| fnv1a(user.as_bytes(), endpoints[i].base.as_bytes()))
            .expect("not empty"),
    })
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in a.iter().chain([0xffu8].iter()).chain(b.iter()) {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASES: [&str; 4] = ["http://a:1", "http://b:1", "http://c:1", "http://d:1"];

    fn views(up: &[bool], load: &[usize]) -> Vec<View<'static>> {
        (0..up.len())
            .map(|i| View {
                base: BASES[i],
                up: up[i],
                in_flight: load[i],
            })
            .collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let v = views(&[true, true, true], &[0, 0, 0]);
        let got: Vec<_> = (0..6)
            .map(|t| pick(Balance::RoundRobin, &v, t, "u", None))
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn least_requests_takes_the_least_loaded() {
        let v = views(&[true, true, true], &[5, 1, 3]);
        assert_eq!(pick(Balance::LeastRequests, &v, 0, "u", None), Some(1));
        assert_eq!(pick(Balance::LeastRequests, &v, 7, "u", Some(1)), Some(2));
    }

    #[test]
    fn user_hash_moves_only_the_users_of_an_endpoint_that_goes_down() {
        let all = views(&[true, true, true, true], &[0; 4]);
        let users: Vec<String> = (0..200).map(|i| format!("user{i}")).collect();
        let before: Vec<_> = users
            .iter()
            .map(|u| pick(Balance::UserHash, &all, 0, u, None))
            .collect();
        for i in 0..4 {
            assert!(before.contains(&Some(i)), "every endpoint gets users");
        }
        let three = views(&[true, false, true, true], &[0; 4]);
        for (u, b) in users.iter().zip(&before) {
            let after = pick(Balance::UserHash, &three, 0, u, None);
            if *b != Some(1) {
                assert_eq!(after, *b, "{u} kept its endpoint");
            }
        }
    }

    proptest! {
        #[test]
        fn only_an_endpoint_that_is_up_and_not_excluded_is_picked(
            up in proptest::collection::vec(any::<bool>(), 1..4),
            turn in 0usize..100,
            excluded in proptest::option::of(0usize..4),
            user in "[a-z]{1,8}",
        ) {
            let load = vec![0; up.len()];
            let v = views(&up, &load);
            for b in [Balance::RoundRobin, Balance::LeastRequests, Balance::UserHash] {
                match pick(b, &v, turn, &user, excluded) {
                    Some(i) => prop_assert!(up[i] && Some(i) != excluded),
                    None => prop_assert!((0..up.len()).all(|i| !up[i] || Some(i) == excluded)),
                }
            }
        }
    }
}
