//! The internal number ↔ employee map, built from `user.get`.
//!
//! We resolve extensions to `USER_ID` ourselves instead of sending `USER_PHONE_INNER`, because
//! Bitrix24's own index may have lost leading zeros (bitrix24-api.md §6.3).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::api::User;

/// A snapshot of who has which internal number. Rebuilt whole on every refresh.
#[derive(Debug, Clone)]
pub struct Directory {
    /// Digits-only `UF_PHONE_INNER` → user.
    by_inner: HashMap<String, u64>,
    /// The same with leading zeros stripped; `None` when two users collide there, so the
    /// fallback never guesses.
    by_stripped: HashMap<String, Option<u64>>,
    /// User → digits-only `UF_PHONE_INNER`, ordered by user id for stable listings.
    by_user: BTreeMap<u64, String>,
    loaded_at: Instant,
}

impl Directory {
    /// Map every *active* user whose `UF_PHONE_INNER` has digits. Bitrix24 stores the
    /// digits-only value (1–4 digits, §6.3), so non-digits are dropped here too.
    pub fn from_users(users: Vec<User>, loaded_at: Instant) -> Self {
        let mut dir = Directory {
            by_inner: HashMap::new(),
            by_stripped: HashMap::new(),
            by_user: BTreeMap::new(),
            loaded_at,
        };
        for user in users.into_iter().filter(|u| u.active) {
            let Some(inner) = user.inner.as_deref().map(digits).filter(|d| !d.is_empty()) else {
                continue;
            };
            if let Some(other) = dir.by_inner.get(&inner) {
                // Bitrix24 refuses duplicate extensions on save (§6.3), so this means the
                // data changed under us; keep the first and say so.
                log::warn!(
                    "bitrix24: internal number {inner} belongs to users {other} and {}; using {other}",
                    user.id
                );
                continue;
            }
            dir.by_stripped
                .entry(strip_zeros(&inner).to_string())
                .and_modify(|v| *v = None)
                .or_insert(Some(user.id));
            dir.by_inner.insert(inner.clone(), user.id);
            dir.by_user.insert(user.id, inner);
        }
        dir
    }

    /// The user with internal number `inner`: an exact digits match first, then a match with
    /// leading zeros ignored on both sides ("0101" ↔ "101", §6.3).
    pub fn user_for(&self, inner: &str) -> Option<u64> {
        let inner = digits(inner);
        if inner.is_empty() {
            return None;
        }
        if let Some(&id) = self.by_inner.get(&inner) {
            return Some(id);
        }
        self.by_stripped.get(strip_zeros(&inner)).copied().flatten()
    }

    /// The internal number of `user_id`, digits only, as Bitrix24 has it.
    pub fn inner_for(&self, user_id: u64) -> Option<&str> {
        self.by_user.get(&user_id).map(String::as_str)
    }

    /// All mapped internal numbers, in user-id order.
    pub fn inners(&self) -> impl Iterator<Item = &str> {
        self.by_user.values().map(String::as_str)
    }

    /// How many users are mapped.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// When the `user.get` that built this snapshot was made (for the cache age on /status).
    pub fn loaded_at(&self) -> Instant {
        self.loaded_at
    }
}

/// The one user directory of a running daemon: delivery, click-to-call, the webhook and
/// `/status` all read this one, and whoever loads `user.get` (the delivery thread, a
/// click-to-call that names an unknown user) publishes here, so they never disagree.
///
/// `None` until the first load succeeds. "Not loaded" is not "nobody": a step that needs an
/// internal number → user mapping waits for the first load instead of giving up (issue #16).
#[derive(Clone, Debug)]
pub struct SharedDirectory {
    current: Arc<RwLock<Option<Arc<Directory>>>>,
    /// "Load it again now" (an app install): the delivery thread listens. Bounded 1: a second
    /// request while one is pending is the same request.
    reload: (Sender<()>, Receiver<()>),
    /// "A new directory was published" (by any thread): wakes the delivery thread so the steps
    /// that waited for it go at once. Bounded 1 for the same reason.
    published: (Sender<()>, Receiver<()>),
}

impl SharedDirectory {
    /// Nothing loaded yet: the daemon at start.
    pub fn not_loaded() -> SharedDirectory {
        SharedDirectory {
            current: Arc::new(RwLock::new(None)),
            reload: bounded(1),
            published: bounded(1),
        }
    }

    /// Already loaded with `dir` (replay and tests, which load before they deliver).
    pub fn loaded(dir: Directory) -> SharedDirectory {
        let shared = SharedDirectory::not_loaded();
        shared.publish(dir);
        shared
    }

    /// The current snapshot; `None` until the first load succeeded.
    pub fn get(&self) -> Option<Arc<Directory>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Replace the snapshot for every reader and wake whoever waits for it.
    pub fn publish(&self, dir: Directory) -> Arc<Directory> {
        let dir = Arc::new(dir);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(dir.clone());
        let _ = self.published.0.try_send(());
        dir
    }

    /// Ask the loader to load `user.get` again now rather than at the next refresh.
    pub fn request_reload(&self) {
        let _ = self.reload.0.try_send(());
    }

    /// Reload requests, for the loader (the delivery thread).
    pub fn reload_requests(&self) -> &Receiver<()> {
        &self.reload.1
    }

    /// Publications, for the delivery thread.
    pub fn publications(&self) -> &Receiver<()> {
        &self.published.1
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// "0101" → "101"; "0" and "00" stay "0" so an all-zero extension still has a key.
fn strip_zeros(s: &str) -> &str {
    let t = s.trim_start_matches('0');
    if t.is_empty() && !s.is_empty() {
        "0"
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64, inner: Option<&str>, active: bool) -> User {
        User {
            id,
            inner: inner.map(str::to_string),
            active,
            name: format!("User {id}"),
        }
    }

    fn dir(users: Vec<User>) -> Directory {
        Directory::from_users(users, Instant::now())
    }

    #[test]
    fn maps_active_users_with_an_inner_number() {
        let d = dir(vec![
            user(19, Some("219"), true),
            user(20, Some("220"), true),
            user(13, Some("213"), false),
            user(7, None, true),
            user(8, Some(""), true),
        ]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.user_for("219"), Some(19));
        assert_eq!(d.user_for("220"), Some(20));
        assert_eq!(d.user_for("213"), None, "inactive users are not mapped");
        assert_eq!(d.inner_for(19), Some("219"));
        assert_eq!(d.inner_for(7), None);
        assert_eq!(d.inners().collect::<Vec<_>>(), vec!["219", "220"]);
    }

    #[test]
    fn digits_only_and_leading_zeros() {
        let d = dir(vec![
            user(1, Some("0101"), true),
            user(2, Some("102"), true),
            user(3, Some(" 1-03 "), true),
        ]);
        assert_eq!(d.user_for("0101"), Some(1));
        assert_eq!(
            d.user_for("101"),
            Some(1),
            "Bitrix may have dropped the zero"
        );
        assert_eq!(
            d.user_for("0102"),
            Some(2),
            "or the PBX has one Bitrix lacks"
        );
        assert_eq!(d.user_for("103"), Some(3));
        assert_eq!(d.inner_for(3), Some("103"));
        assert_eq!(d.user_for(""), None);
        assert_eq!(d.user_for("999"), None);
    }

    #[test]
    fn exact_match_beats_the_zero_fallback_and_collisions_do_not_guess() {
        let d = dir(vec![
            user(1, Some("0101"), true),
            user(2, Some("101"), true),
        ]);
        assert_eq!(d.user_for("0101"), Some(1));
        assert_eq!(d.user_for("101"), Some(2));
        assert_eq!(
            d.user_for("00101"),
            None,
            "ambiguous without an exact match"
        );
    }

    #[test]
    fn duplicate_inner_keeps_the_first() {
        let d = dir(vec![user(1, Some("219"), true), user(2, Some("219"), true)]);
        assert_eq!(d.user_for("219"), Some(1));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn zero_extension() {
        let d = dir(vec![user(5, Some("0"), true)]);
        assert_eq!(d.user_for("0"), Some(5));
        assert_eq!(d.user_for("00"), Some(5));
    }
}
