//! The life of signing keys, as pure rules: `next` (published, not signing)
//! → `active` (signing) → `retired` (published, verifying only) → gone.
//!
//! A key is published at least [`PUBLISH_LEAD_MS`] before it signs (unless
//! an operator rotates `--now`), and stays published until every token it
//! signed has expired, so a verifier that caches the JWKS for its `max-age`
//! never meets an unknown `kid`. Exactly one key signs; there is always one
//! once the ring has been looked after. The store applies what these
//! functions decide inside one locked transaction, so however many instances
//! look after the ring at once, each change happens once.

use crate::error::{Error, Result};

/// How long a new key is published before it signs.
pub const PUBLISH_LEAD_MS: i64 = 600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Next,
    Active,
    Retired,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "next" => Some(Self::Next),
            "active" => Some(Self::Active),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

/// A key as the rules see it (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: KeyState,
    pub created_at: i64,
    /// A next key signs from then on; an active or retired key signed from then.
    pub activates_at: i64,
    /// When it stopped signing.
    pub retired_at: Option<i64>,
}

/// How the ring is looked after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPolicy {
    /// A new key this often (`auth.key_rotation_days`); `None`: only by hand.
    pub rotate_every_ms: Option<i64>,
    /// How long a retired key stays published: the longest a token it
    /// signed may still be accepted (access token lifetime plus leeway).
    pub keep_retired_ms: i64,
}

/// What the operator, or the periodic upkeep, asks of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOp {
    /// Whatever is due: a first key, a next key ahead of the rotation, the
    /// promotion of a next key whose time has come, retired keys to forget.
    Upkeep,
    /// Publish a new next key (replacing a next key that never signed); with
    /// `now`, make a key sign at once: the pending next key, else a new one.
    Rotate { now: bool },
    /// Remove a key from the ring; an active one is replaced first.
    Revoke { kid: String },
}

/// The key `op` brought forward, in the ring as it is after it: the new
/// next key of a rotation, the key signing after a rotation `now`; none for
/// the others.
pub fn announced<'a>(ring: &'a [KeyInfo], op: &KeyOp) -> Option<&'a KeyInfo> {
    let wanted = match op {
        KeyOp::Rotate { now: true } => KeyState::Active,
        KeyOp::Rotate { now: false } => KeyState::Next,
        KeyOp::Upkeep | KeyOp::Revoke { .. } => return None,
    };
    ring.iter().find(|k| k.state == wanted)
}

/// One change to the ring, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new key, with the fresh key material the caller prepared for `kid`.
    Create {
        kid: String,
        state: KeyState,
        activates_at: i64,
    },
    /// `kid` signs from now on; the key that signed until now is retired.
    Promote { kid: String },
    /// `kid` is gone.
    Delete { kid: String },
}

impl KeyOp {
    /// What to do to `keys` at `now` for a ring of `alg` keys; `fresh` is the
    /// kid to give a key this plan creates (at most one is created).
    /// `NotFound` for revoking an unknown kid. Keys of another algorithm
    /// (left from before `signing_algorithm` changed) never sign again: a
    /// waiting one goes, an active one is retired when one of `alg` signs.
    pub fn plan(
        &self,
        keys: &[KeyInfo],
        now: i64,
        policy: RingPolicy,
        fresh: &str,
        alg: &str,
    ) -> Result<Vec<Change>> {
        let ours = |k: &&KeyInfo| k.alg == alg;
        let active = keys
            .iter()
            .filter(ours)
            .find(|k| k.state == KeyState::Active);
        let next = keys.iter().filter(ours).find(|k| k.state == KeyState::Next);
        let create = |state, activates_at| Change::Create {
            kid: fresh.to_owned(),
            state,
            activates_at,
        };
        let sign_at_once = || match next {
            Some(next) => Change::Promote {
                kid: next.kid.clone(),
            },
            None => create(KeyState::Active, now),
        };
        let mut changes: Vec<Change> = keys
            .iter()
            .filter(|k| k.alg != alg && k.state == KeyState::Next)
            .map(|k| Change::Delete { kid: k.kid.clone() })
            .collect();
        match self {
            Self::Upkeep => {
                match (active, next) {
                    // Signing must never stop: a first key, or the waiting one at once.
                    (None, _) => changes.push(sign_at_once()),
                    (Some(_), Some(next)) if next.activates_at <= now => {
                        changes.push(Change::Promote {
                            kid: next.kid.clone(),
                        });
                    }
                    (Some(active), None) => {
                        if let Some(every) = policy.rotate_every_ms {
                            let due = active.activates_at.saturating_add(every);
                            if now >= due.saturating_sub(PUBLISH_LEAD_MS) {
                                let at = due.max(now.saturating_add(PUBLISH_LEAD_MS));
                                changes.push(create(KeyState::Next, at));
                            }
                        }
                    }
                    (Some(_), Some(_)) => {}
                }
                changes.extend(
                    keys.iter()
                        .filter(|k| {
                            k.state == KeyState::Retired
                                && k.retired_at.is_some_and(|at| {
                                    at.saturating_add(policy.keep_retired_ms) <= now
                                })
                        })
                        .map(|k| Change::Delete { kid: k.kid.clone() }),
                );
            }
            Self::Rotate { now: false } => {
                if let Some(next) = next {
                    changes.push(Change::Delete {
                        kid: next.kid.clone(),
                    });
                }
                changes.push(create(KeyState::Next, now.saturating_add(PUBLISH_LEAD_MS)));
            }
            Self::Rotate { now: true } => changes.push(sign_at_once()),
            Self::Revoke { kid } => {
                let key = keys.iter().find(|k| &k.kid == kid).ok_or(Error::NotFound)?;
                if key.state == KeyState::Active {
                    changes.push(sign_at_once());
                }
                changes.push(Change::Delete { kid: kid.clone() });
            }
        }
        Ok(changes)
    }
}

/// Applies `changes` to `keys` in memory, as a store applies them in SQL:
/// what the ring looks like afterwards.
pub fn apply(keys: &mut Vec<KeyInfo>, changes: &[Change], alg: &str, now: i64) {
    for change in changes {
        match change {
            Change::Create {
                kid,
                state,
                activates_at,
            } => {
                if *state == KeyState::Active {
                    retire_active(keys, now);
                }
                keys.push(KeyInfo {
                    kid: kid.clone(),
                    alg: alg.to_owned(),
                    state: *state,
                    created_at: now,
                    activates_at: *activates_at,
                    retired_at: None,
                });
            }
            Change::Promote { kid } => {
                retire_active(keys, now);
                if let Some(key) = keys.iter_mut().find(|k| &k.kid == kid) {
                    key.state = KeyState::Active;
                    key.activates_at = now;
                }
            }
            Change::Delete { kid } => keys.retain(|k| &k.kid != kid),
        }
    }
}

fn retire_active(keys: &mut [KeyInfo], now: i64) {
    for key in keys.iter_mut().filter(|k| k.state == KeyState::Active) {
        key.state = KeyState::Retired;
        key.retired_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const POLICY: RingPolicy = RingPolicy {
        rotate_every_ms: Some(30 * DAY),
        keep_retired_ms: 905_000,
    };

    fn run(keys: &mut Vec<KeyInfo>, op: KeyOp, now: i64, fresh: &str) -> Vec<Change> {
        let changes = op.plan(keys, now, POLICY, fresh, "EdDSA").unwrap();
        apply(keys, &changes, "EdDSA", now);
        changes
    }

    fn state(keys: &[KeyInfo]) -> Vec<(&str, KeyState)> {
        let mut all: Vec<_> = keys.iter().map(|k| (k.kid.as_str(), k.state)).collect();
        all.sort_unstable_by_key(|(kid, _)| *kid);
        all
    }

    #[test]
    fn a_first_key_signs_at_once_and_rotation_publishes_ahead_then_promotes() {
        let mut keys = Vec::new();
        run(&mut keys, KeyOp::Upkeep, 0, "a");
        assert_eq!(state(&keys), [("a", KeyState::Active)]);
        // Nothing due for a while.
        assert!(run(&mut keys, KeyOp::Upkeep, 29 * DAY, "b").is_empty());
        // Ten minutes before the thirty days are up, the next key is published...
        let at = 30 * DAY - PUBLISH_LEAD_MS;
        run(&mut keys, KeyOp::Upkeep, at, "b");
        assert_eq!(
            state(&keys),
            [("a", KeyState::Active), ("b", KeyState::Next)]
        );
        assert_eq!(keys[1].activates_at, 30 * DAY);
        assert!(run(&mut keys, KeyOp::Upkeep, 30 * DAY - 1, "c").is_empty());
        // ...and it signs once its time has come; the old key only verifies.
        run(&mut keys, KeyOp::Upkeep, 30 * DAY, "c");
        assert_eq!(
            state(&keys),
            [("a", KeyState::Retired), ("b", KeyState::Active)]
        );
        // The retired key is kept until every token it signed has expired.
        assert!(run(&mut keys, KeyOp::Upkeep, 30 * DAY + 904_999, "c").is_empty());
        run(&mut keys, KeyOp::Upkeep, 30 * DAY + 905_000, "c");
        assert_eq!(state(&keys), [("b", KeyState::Active)]);
    }

    #[test]
    fn a_late_upkeep_still_publishes_ahead_of_signing() {
        let mut keys = Vec::new();
        run(&mut keys, KeyOp::Upkeep, 0, "a");
        // Nobody looked for forty days: the new key still waits ten minutes.
        run(&mut keys, KeyOp::Upkeep, 40 * DAY, "b");
        assert_eq!(keys[1].activates_at, 40 * DAY + PUBLISH_LEAD_MS);
    }

    #[test]
    fn manual_rotation_replaces_a_waiting_key_and_now_signs_at_once() {
        let mut keys = Vec::new();
        run(&mut keys, KeyOp::Upkeep, 0, "a");
        run(&mut keys, KeyOp::Rotate { now: false }, 1_000, "b");
        assert_eq!(keys[1].activates_at, 1_000 + PUBLISH_LEAD_MS);
        run(&mut keys, KeyOp::Rotate { now: false }, 2_000, "c");
        assert_eq!(
            state(&keys),
            [("a", KeyState::Active), ("c", KeyState::Next)],
            "the next key that never signed was replaced"
        );
        // --now promotes the waiting key...
        run(&mut keys, KeyOp::Rotate { now: true }, 3_000, "d");
        assert_eq!(
            state(&keys),
            [("a", KeyState::Retired), ("c", KeyState::Active)]
        );
        // ...or, with none waiting, makes a new one sign.
        run(&mut keys, KeyOp::Rotate { now: true }, 4_000, "d");
        assert_eq!(
            state(&keys),
            [
                ("a", KeyState::Retired),
                ("c", KeyState::Retired),
                ("d", KeyState::Active)
            ]
        );
    }

    #[test]
    fn revoking_the_signing_key_replaces_it_first_and_unknown_kids_are_not_found() {
        let mut keys = Vec::new();
        run(&mut keys, KeyOp::Upkeep, 0, "a");
        run(&mut keys, KeyOp::Revoke { kid: "a".into() }, 1_000, "b");
        assert_eq!(state(&keys), [("b", KeyState::Active)]);
        run(&mut keys, KeyOp::Rotate { now: false }, 2_000, "c");
        run(&mut keys, KeyOp::Revoke { kid: "c".into() }, 3_000, "d");
        assert_eq!(state(&keys), [("b", KeyState::Active)]);
        assert!(matches!(
            KeyOp::Revoke { kid: "zz".into() }.plan(&keys, 0, POLICY, "e", "EdDSA"),
            Err(Error::NotFound)
        ));
    }

    #[test]
    fn a_change_of_algorithm_gets_a_key_of_the_new_one_at_once() {
        let mut keys = Vec::new();
        run(&mut keys, KeyOp::Upkeep, 0, "ed");
        run(&mut keys, KeyOp::Rotate { now: false }, 1, "ed-next");
        let changes = KeyOp::Upkeep.plan(&keys, 2, POLICY, "ec", "ES256").unwrap();
        assert_eq!(
            changes,
            [
                Change::Delete {
                    kid: "ed-next".into()
                },
                Change::Create {
                    kid: "ec".into(),
                    state: KeyState::Active,
                    activates_at: 2
                }
            ]
        );
        apply(&mut keys, &changes, "ES256", 2);
        assert_eq!(
            state(&keys),
            [("ec", KeyState::Active), ("ed", KeyState::Retired)]
        );
    }

    #[test]
    fn without_a_rotation_period_only_operators_rotate() {
        let policy = RingPolicy {
            rotate_every_ms: None,
            ..POLICY
        };
        let mut keys = Vec::new();
        let first = KeyOp::Upkeep.plan(&keys, 0, policy, "a", "EdDSA").unwrap();
        apply(&mut keys, &first, "EdDSA", 0);
        assert_eq!(keys.len(), 1, "a first key exists whatever the period");
        assert!(
            KeyOp::Upkeep
                .plan(&keys, 400 * DAY, policy, "b", "EdDSA")
                .unwrap()
                .is_empty()
        );
    }
}
