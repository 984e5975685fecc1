//! API keys: generation, hashing and authentication of every request.

use base64::{engine::general_purpose::STANDARD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::Service;
use crate::{
    domain::{Caller, Role, Scope},
    error::{Error, Result},
};

const LIVE_PREFIX: &str = "live_";
const TEST_PREFIX: &str = "test_";

/// A new key: `live_` or `test_` and 160 random bits in hex.
pub fn generate_api_key(is_test: bool) -> String {
    let mut secret = [0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    let prefix = if is_test { TEST_PREFIX } else { LIVE_PREFIX };
    format!("{prefix}{}", hex::encode(secret))
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
    /// Resolves the `Authorization` header (or gRPC metadata) to the caller.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller> {
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
        let caller = self.store.find_api_key(&hash).await?.ok_or_else(unknown)?;
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
            .create_api_key(account, &hash_api_key(&key), is_test, role)
            .await?;
        Ok(key)
    }

    /// On an empty database, creates account `default` with a live key and returns the key.
    pub async fn bootstrap_default_account(&self) -> Result<Option<String>> {
        if self.store.count_accounts().await? > 0 {
            return Ok(None);
        }
        self.create_api_key("default", false, Role::Admin)
            .await
            .map(Some)
    }
}

/// Keys recently found valid, so a request does not pay a database round trip to
/// authenticate. Keys are never revoked or re-scoped today; a revocation would have to clear
/// this, and the TTL bounds how long another replica could still accept a changed key.
pub(super) struct KnownKeys {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Caller, std::time::Instant)>>,
}

const KNOWN_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(60);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn keys_have_a_world_prefix_and_160_random_bits() {
        let live = generate_api_key(false);
        assert!(live.starts_with("live_") && live.len() == 45);
        assert!(generate_api_key(true).starts_with("test_"));
        assert_ne!(hash_api_key(&live), live);
    }
}
