//! API keys: generation, hashing and authentication of every request.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::Service;
use crate::{
    domain::{ApiKeyInfo, Caller, Role, Scope, Timestamp},
    error::{Error, Result},
};

const LIVE_PREFIX: &str = "live_";
const TEST_PREFIX: &str = "test_";

/// How many leading characters of a key are stored in clear, to list and revoke it by:
/// `live_` or `test_` and 7 hex digits (28 of its 160 random bits, too few to guess the rest).
pub const KEY_PREFIX_LEN: usize = 12;

/// How long another process may go on accepting a key after it was revoked: its cache of
/// keys recently found valid keeps an entry this long. The process that revokes forgets its
/// cache at once.
pub const REVOCATION_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// A new key: `live_` or `test_` and 160 random bits in hex.
pub fn generate_api_key(is_test: bool) -> String {
    let mut secret = [0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    let prefix = if is_test { TEST_PREFIX } else { LIVE_PREFIX };
    format!("{prefix}{}", hex::encode(secret))
}

/// The first characters of a key, stored to tell keys apart (never the key).
fn key_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX_LEN).collect()
}

/// Keys carry 160 random bits, so a plain SHA-256 cannot be brute-forced; only this is stored.
fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The API key in an `Authorization` value: HTTP Basic with the key as user name (Scale's
/// scheme, password ignored) or `Bearer KEY`.
pub fn credential_from_authorization(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(STANDARD.decode(rest).ok()?).ok()?;
        let user = decoded
            .split_once(':')
            .map_or(decoded.as_str(), |(user, _)| user);
        return (!user.is_empty()).then(|| user.to_owned());
    }
    None
}

/// The caller's scope, for what only an admin key may do: a worker key may read tasks and
/// work the queue, nothing else.
pub(super) fn require_admin(caller: Caller) -> Result<Scope> {
    match caller.role {
        Role::Admin => Ok(caller.scope),
        Role::Worker => Err(Error::worker_key()),
    }
}

impl Service {
    /// Resolves the `Authorization` header (or gRPC metadata) to the caller. `client` is the
    /// peer's address when the transport knows it: an address with too many failed attempts
    /// is refused before its key is even hashed, whatever the key (see `FailedAuthLimiter`).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Caller> {
        let Some(client) = client else {
            return self.resolve_key(authorization).await;
        };
        self.auth_failures.check(client, Instant::now())?;
        let outcome = self.resolve_key(authorization).await;
        // No credentials at all guess nothing and cost no lookup: not counted.
        if authorization.is_some() && matches!(outcome, Err(Error::Unauthenticated(_))) {
            self.auth_failures.record_failure(client, Instant::now());
        }
        outcome
    }

    async fn resolve_key(&self, authorization: Option<&str>) -> Result<Caller> {
        let key = authorization
            .and_then(credential_from_authorization)
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "Please provide a valid API key (HTTP Basic with the key as user name, or Bearer)."
                        .to_owned(),
                )
            })?;
        let unknown = || Error::Unauthenticated("The API key is not valid.".to_owned());
        if !key.starts_with(LIVE_PREFIX) && !key.starts_with(TEST_PREFIX) {
            return Err(unknown());
        }
        let hash = hash_api_key(&key);
        if let Some(caller) = self.known_keys.get(&hash) {
            return Ok(caller);
        }
        // Unknown and revoked keys alike are not found.
        let (caller, prefix_known) = self.store.find_api_key(&hash).await?.ok_or_else(unknown)?;
        if !prefix_known {
            // A key made before prefixes were kept: now that it is presented, keep its prefix
            // so `api-keys list` can show it and `revoke` can find it. Once per such key.
            if let Err(err) = self
                .store
                .set_api_key_prefix(&hash, &key_prefix(&key))
                .await
            {
                tracing::warn!(error = %err, "could not store an old key's prefix");
            }
        }
        // The prefix is part of the hashed key, so it always agrees with the stored world.
        self.known_keys.insert(hash, caller);
        Ok(caller)
    }

    /// Creates the account if needed and a new key for it; returns the key (shown once).
    pub async fn create_api_key(&self, account: &str, is_test: bool, role: Role) -> Result<String> {
        let account = account.trim();
        if account.is_empty() {
            return Err(Error::invalid("The account name must not be empty."));
        }
        let key = generate_api_key(is_test);
        self.store
            .create_api_key(
                account,
                &hash_api_key(&key),
                &key_prefix(&key),
                is_test,
                role,
            )
            .await?;
        Ok(key)
    }

    /// For `annotask api-keys list`: every key of the account, oldest first, revoked ones too.
    pub async fn list_api_keys(&self, account: &str) -> Result<Vec<ApiKeyInfo>> {
        let account_id = self.account_id_by_name(account).await?;
        self.store.list_api_keys(account_id).await
    }

    /// For `annotask api-keys revoke`: revokes the one active key of the account whose prefix
    /// starts with `prefix`. None, or several → an error, and nothing is revoked. When only
    /// revoked keys match, says so (revoking again changes nothing).
    pub async fn revoke_api_key(&self, account: &str, prefix: &str) -> Result<Revocation> {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            return Err(Error::invalid(
                "The prefix must not be empty: give the key's prefix as `annotask api-keys list` shows it.",
            ));
        }
        if prefix.chars().count() > KEY_PREFIX_LEN {
            return Err(Error::invalid(format!(
                "A prefix has at most {KEY_PREFIX_LEN} characters (e.g. live_1a2b3c4), as `annotask api-keys list` shows it; never pass a whole key."
            )));
        }
        let account = account.trim();
        let account_id = self.account_id_by_name(account).await?;
        let keys = self.store.list_api_keys(account_id).await?;
        let (active, revoked) = matching_keys(keys, prefix);
        match active.as_slice() {
            [key] => {
                let at = Timestamp::now();
                if self.store.revoke_api_key(key.id, at).await? {
                    // Immediately in this process; other processes within REVOCATION_DELAY.
                    self.known_keys.clear();
                    tracing::info!(account, key_prefix = ?key.prefix, "API key revoked");
                    return Ok(Revocation::Revoked(ApiKeyInfo {
                        revoked_at: Some(at),
                        ..key.clone()
                    }));
                }
                // Revoked by someone else a moment ago.
                let keys = self.store.list_api_keys(account_id).await?;
                Ok(Revocation::AlreadyRevoked(matching_keys(keys, prefix).1))
            }
            [] if revoked.is_empty() => Err(Error::NotFound(format!(
                "No key of account '{account}' starts with '{prefix}': see `annotask api-keys list --account {account}`. Nothing was revoked."
            ))),
            [] => Ok(Revocation::AlreadyRevoked(revoked)),
            several => Err(Error::invalid(format!(
                "The prefix '{prefix}' is ambiguous: {} active keys of account '{account}' start with it. Give more of the prefix, as `annotask api-keys list --account {account}` shows it. Nothing was revoked.",
                several.len()
            ))),
        }
    }

    async fn account_id_by_name(&self, account: &str) -> Result<i64> {
        let account = account.trim();
        self.store
            .find_account_id(account)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No account named '{account}'.")))
    }

    /// On an empty database, creates account `default` with a live admin key and returns the
    /// key; `None` when any account exists, also one another replica created a moment ago.
    pub async fn bootstrap_default_account(&self) -> Result<Option<String>> {
        let key = generate_api_key(false);
        let created = self
            .store
            .create_first_account(
                "default",
                &hash_api_key(&key),
                &key_prefix(&key),
                Role::Admin,
            )
            .await?;
        Ok(created.then_some(key))
    }
}

/// What `revoke_api_key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// This key is revoked now (its `revoked_at` set).
    Revoked(ApiKeyInfo),
    /// No active key matched; these keys with the prefix were revoked before.
    AlreadyRevoked(Vec<ApiKeyInfo>),
}

/// The keys whose stored prefix starts with `prefix`: (active, revoked). Keys without a
/// stored prefix never match.
fn matching_keys(keys: Vec<ApiKeyInfo>, prefix: &str) -> (Vec<ApiKeyInfo>, Vec<ApiKeyInfo>) {
    keys.into_iter()
        .filter(|key| {
            key.prefix
                .as_deref()
                .is_some_and(|stored| stored.starts_with(prefix))
        })
        .partition(|key| key.revoked_at.is_none())
}

/// Keys recently found valid, so a request does not pay a database round trip to
/// authenticate. An entry lives `REVOCATION_DELAY`: that bounds how long a key revoked by
/// another process (the CLI, another replica) is still accepted here; a revocation in this
/// process clears it at once. Re-reading a key every few seconds costs one indexed lookup.
pub(super) struct KnownKeys {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Caller, std::time::Instant)>>,
}

const KNOWN_KEY_TTL: std::time::Duration = REVOCATION_DELAY;
/// Unknown keys are never cached, so only real keys fill it; past this it starts again.
const KNOWN_KEYS_MAX: usize = 10_000;

impl Default for KnownKeys {
    fn default() -> Self {
        KnownKeys {
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl KnownKeys {
    fn get(&self, hash: &str) -> Option<Caller> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < KNOWN_KEY_TTL)
            .map(|(caller, _)| *caller)
    }

    fn insert(&self, hash: String, caller: Caller) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= KNOWN_KEYS_MAX {
            entries.clear();
        }
        entries.insert(hash, (caller, std::time::Instant::now()));
    }

    /// Forgets every key (after a revocation: the next request of each key reads it again).
    fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// Failed authentications per client address, as a token bucket: `per_minute` failures in a
/// burst, refilled at `per_minute` a minute. Only failures take tokens, so valid keys never use
/// the budget up; but once it is spent every request from the address is refused (429) before
/// its key is looked at, valid or not: a guess must never be checked, and telling a valid key
/// apart would need the very lookup being shed. The cost is that a client sharing an address
/// with a guesser (NAT) waits too, only while failures keep coming.
///
/// Failures arriving together may overdraw the bucket (each passed `check` before any was
/// recorded); the debt is kept, up to an hour's refill, so concurrency buys no extra guesses
/// over time.
pub(super) struct FailedAuthLimiter {
    /// 0: no limit.
    per_minute: u32,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_client: HashMap<IpAddr, Bucket>,
    last_prune: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Memory bound: about 64 bytes per tracked address, so at most a few MiB.
const TRACKED_CLIENTS_MAX: usize = 50_000;
/// Pruning scans every entry, so a flood from new addresses may trigger it at most this often.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// The most debt a burst of concurrent failures can run up, in minutes of refill.
const MAX_DEBT_MINUTES: f64 = 60.0;

impl FailedAuthLimiter {
    pub(super) fn new(per_minute: u32) -> Self {
        FailedAuthLimiter {
            per_minute,
            buckets: Mutex::new(Buckets::default()),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    fn refill_per_second(&self) -> f64 {
        self.capacity() / 60.0
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.refill_per_second()).min(self.capacity())
    }

    /// Refuses the address while it has no failure left to spend.
    pub(super) fn check(&self, client: IpAddr, now: Instant) -> Result<()> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bucket) = buckets.by_client.get(&client_key(client)) else {
            return Ok(());
        };
        let tokens = self.refilled(*bucket, now);
        if tokens >= 1.0 {
            return Ok(());
        }
        let wait = (1.0 - tokens) / self.refill_per_second();
        // Whole seconds, rounded up: a client that waits as told is let in.
        let retry_after_secs = wait.ceil().max(1.0) as u64;
        Err(Error::TooManyAuthFailures { retry_after_secs })
    }

    pub(super) fn record_failure(&self, client: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let key = client_key(client);
        if !buckets.by_client.contains_key(&key)
            && buckets.by_client.len() >= TRACKED_CLIENTS_MAX
            && !self.prune(&mut buckets, now)
        {
            // Full of addresses still refused: they stay refused; this one goes untracked.
            tracing::warn!(
                tracked = buckets.by_client.len(),
                "failed-authentication limiter full"
            );
            return;
        }
        let floor = -MAX_DEBT_MINUTES * self.capacity();
        let tokens = match buckets.by_client.get(&key) {
            Some(bucket) => self.refilled(*bucket, now),
            None => self.capacity(),
        };
        buckets.by_client.insert(
            key,
            Bucket {
                tokens: (tokens - 1.0).max(floor),
                at: now,
            },
        );
    }

    /// Forgets addresses that are not refused now (what they spent is forgiven); true when
    /// that made room. Runs at most once per `PRUNE_INTERVAL`.
    fn prune(&self, buckets: &mut Buckets, now: Instant) -> bool {
        if buckets
            .last_prune
            .is_some_and(|at| now.saturating_duration_since(at) < PRUNE_INTERVAL)
        {
            return false;
        }
        buckets.last_prune = Some(now);
        buckets
            .by_client
            .retain(|_, bucket| self.refilled(*bucket, now) < 1.0);
        buckets.by_client.len() < TRACKED_CLIENTS_MAX
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_client
            .len()
    }
}

/// One budget per IPv4 address, and per IPv6 /64: whoever holds one IPv6 address usually
/// holds its whole /64.
fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_refused_after_its_burst_of_failures_and_let_in_as_it_refills() {
        let limiter = FailedAuthLimiter::new(20);
        let start = Instant::now();
        for attempt in 0..20 {
            assert!(limiter.check(ip("10.0.0.1"), start).is_ok(), "{attempt}");
            limiter.record_failure(ip("10.0.0.1"), start);
        }
        assert_eq!(
            limiter.check(ip("10.0.0.1"), start),
            Err(Error::TooManyAuthFailures {
                retry_after_secs: 3
            }),
            "20 a minute: one failure back every 3 s"
        );
        assert!(limiter.check(ip("10.0.0.2"), start).is_ok(), "per address");
        assert!(limiter
            .check(ip("10.0.0.1"), start + Duration::from_secs(3))
            .is_ok());
    }

    #[test]
    fn concurrent_failures_run_up_a_debt_that_delays_the_next_attempt() {
        let limiter = FailedAuthLimiter::new(20);
        let now = Instant::now();
        for _ in 0..40 {
            limiter.record_failure(ip("10.0.0.1"), now);
        }
        // 20 over the budget: a minute to pay back, plus 3 s for one token.
        assert_eq!(
            limiter.check(ip("10.0.0.1"), now),
            Err(Error::TooManyAuthFailures {
                retry_after_secs: 63
            })
        );
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() {
        let limiter = FailedAuthLimiter::new(1);
        let now = Instant::now();
        limiter.record_failure(ip("2001:db8:1:2::1"), now);
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9"), now).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1"), now).is_ok());
        limiter.record_failure(ip("::ffff:10.0.0.7"), now);
        assert!(limiter.check(ip("10.0.0.7"), now).is_err());
    }

    #[test]
    fn zero_disables_the_limit() {
        let limiter = FailedAuthLimiter::new(0);
        let now = Instant::now();
        for _ in 0..100 {
            limiter.record_failure(ip("10.0.0.1"), now);
        }
        assert!(limiter.check(ip("10.0.0.1"), now).is_ok());
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn the_limiter_tracks_a_bounded_number_of_addresses() {
        let limiter = FailedAuthLimiter::new(1);
        let start = Instant::now();
        let address = |n: usize| IpAddr::V4(std::net::Ipv4Addr::from(n as u32));
        for n in 0..TRACKED_CLIENTS_MAX + 1000 {
            limiter.record_failure(address(n), start);
        }
        assert_eq!(limiter.tracked(), TRACKED_CLIENTS_MAX, "never more");
        assert!(
            limiter.check(address(0), start).is_err(),
            "refused addresses are kept"
        );
        // A minute later every one of them has refilled: a new address makes room.
        let later = start + Duration::from_secs(61);
        limiter.record_failure(address(usize::MAX >> 1), later);
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn basic_auth_takes_the_user_name_as_the_key() {
        let header = format!("Basic {}", STANDARD.encode("live_abc:"));
        assert_eq!(
            credential_from_authorization(&header).as_deref(),
            Some("live_abc")
        );
        let no_colon = format!("Basic {}", STANDARD.encode("live_abc"));
        assert_eq!(
            credential_from_authorization(&no_colon).as_deref(),
            Some("live_abc")
        );
    }

    #[test]
    fn bearer_auth_takes_the_token() {
        assert_eq!(
            credential_from_authorization("Bearer test_123").as_deref(),
            Some("test_123")
        );
        assert_eq!(credential_from_authorization("bearer   "), None);
        assert_eq!(credential_from_authorization("Digest x"), None);
        assert_eq!(credential_from_authorization("Basic !!!"), None);
    }

    #[test]
    fn known_keys_remember_callers_and_start_again_when_full() {
        let keys = KnownKeys::default();
        let caller = Caller {
            scope: crate::domain::Scope {
                account_id: 7,
                is_test: false,
            },
            role: Role::Worker,
        };
        assert_eq!(keys.get("h"), None);
        keys.insert("h".to_owned(), caller);
        assert_eq!(keys.get("h"), Some(caller));
        for n in 0..KNOWN_KEYS_MAX {
            keys.insert(format!("k{n}"), caller);
        }
        assert_eq!(keys.get("h"), None, "cleared once it reached its bound");
    }

    fn key(id: i64, prefix: Option<&str>, revoked: bool) -> ApiKeyInfo {
        ApiKeyInfo {
            id,
            prefix: prefix.map(str::to_owned),
            is_test: false,
            role: Role::Admin,
            created_at: Timestamp::from_millis(1),
            revoked_at: revoked.then(|| Timestamp::from_millis(2)),
        }
    }

    #[test]
    fn keys_match_by_the_start_of_their_stored_prefix() {
        let keys = vec![
            key(1, Some("live_aaaa111"), false),
            key(2, Some("live_aaaa222"), false),
            key(3, Some("live_bbbb111"), true),
            key(4, None, false),
        ];
        let ids = |keys: Vec<ApiKeyInfo>| keys.iter().map(|key| key.id).collect::<Vec<_>>();
        let (active, revoked) = matching_keys(keys.clone(), "live_aaaa1");
        assert_eq!((ids(active), ids(revoked)), (vec![1], vec![]));
        let (active, _) = matching_keys(keys.clone(), "live_aaaa");
        assert_eq!(ids(active), vec![1, 2], "ambiguous");
        let (active, revoked) = matching_keys(keys.clone(), "live_bbbb111");
        assert_eq!((ids(active), ids(revoked)), (vec![], vec![3]));
        let (active, revoked) = matching_keys(keys, "test_");
        assert!(
            active.is_empty() && revoked.is_empty(),
            "none; unknown prefixes never match"
        );
    }

    #[test]
    fn the_stored_prefix_is_the_world_and_seven_hex_digits() {
        let live = generate_api_key(false);
        assert_eq!(key_prefix(&live), live[..12]);
        assert!(key_prefix(&live).starts_with("live_") && key_prefix(&live).len() == 12);
    }

    #[test]
    fn known_keys_forget_everything_on_clear() {
        let keys = KnownKeys::default();
        let caller = Caller {
            scope: crate::domain::Scope {
                account_id: 7,
                is_test: false,
            },
            role: Role::Admin,
        };
        keys.insert("h".to_owned(), caller);
        keys.clear();
        assert_eq!(keys.get("h"), None);
        assert!(
            KNOWN_KEY_TTL <= REVOCATION_DELAY,
            "the documented bound holds"
        );
    }

    #[test]
    fn keys_have_a_world_prefix_and_160_random_bits() {
        let live = generate_api_key(false);
        assert!(live.starts_with("live_") && live.len() == 45);
        assert!(generate_api_key(true).starts_with("test_"));
        assert_ne!(hash_api_key(&live), live);
    }
}
