//! [`KeyCache`]: key lookups kept in memory for a short time.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

use guardrail_tower_core::Caller;
use tokio::time::Instant;

use super::{KeyStore, KeyStoreError, VirtualKey, hex, models_allow};

/// What a request made with a key may do, from its row: built once per lookup and shared by
/// every request until the cache entry expires.
#[derive(Debug)]
pub struct ResolvedKey {
    caller: Arc<Caller>,
    models: Box<[String]>,
    guardrails: Box<[Arc<str>]>,
    expires: Option<SystemTime>,
    blocked: bool,
    /// `max_parallel_requests` and the requests running with the key on this gateway.
    parallel: Option<(u32, Arc<AtomicU32>)>,
}

impl ResolvedKey {
    /// From a row, with a count of its running requests of its own (see [`KeyCache`], whose
    /// lookups of one key share theirs).
    pub fn new(key: &VirtualKey) -> Self {
        ResolvedKey::counted(key, || Arc::new(AtomicU32::new(0)))
    }

    /// From a row; `running` gives the count of the key's running requests when it limits
    /// them.
    fn counted(key: &VirtualKey, running: impl FnOnce() -> Arc<AtomicU32>) -> Self {
        let mut caller = Caller::with_key_hash(key.token.clone());
        caller.key_alias = key.key_alias.clone();
        caller.user_id = key.user_id.clone();
        caller.team_id = key.team_id.clone();
        caller.org_id = key.organization_id.clone();
        ResolvedKey {
            caller: Arc::new(caller),
            models: key.models.clone().into_boxed_slice(),
            guardrails: key.guardrails().into_iter().map(Arc::from).collect(),
            expires: key.expires,
            blocked: key.blocked == Some(true),
            parallel: key.max_parallel_requests.map(|max| (max, running())),
        }
    }

    /// The key's `max_parallel_requests`, if it has one.
    pub fn max_parallel_requests(&self) -> Option<u32> {
        self.parallel.as_ref().map(|(max, _)| *max)
    }

    /// A place among the key's requests running at once, held until the [`Running`] is
    /// dropped; `None` when `max_parallel_requests` are running already. Always a place for a
    /// key without a limit.
    pub fn start(&self) -> Option<Running> {
        let Some((max, running)) = &self.parallel else {
            return Some(Running(None));
        };
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < *max).then_some(n + 1)
            })
            .ok()
            .map(|_| Running(Some(Arc::clone(running))))
    }

    /// Who calls with this key.
    pub fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }

    /// The models the key may call (empty: all).
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Whether the key may call `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        models_allow(&self.models, model)
    }

    /// The key's guardrails.
    pub fn guardrails(&self) -> &[Arc<str>] {
        &self.guardrails
    }

    /// When the key expires.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// Whether the key is blocked.
    pub fn blocked(&self) -> bool {
        self.blocked
    }
}

/// One request running with a key that limits its requests at once (see
/// [`ResolvedKey::start`]): its place is given back when this is dropped.
#[derive(Debug)]
pub struct Running(Option<Arc<AtomicU32>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(running) = &self.0 {
            running.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A hasher for keys that are already SHA-256 digests: their first eight bytes are as good a
/// hash as any, and no client can choose them.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its 32 bytes (no length prefix for arrays).
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

#[derive(Clone)]
struct Entry {
    key: Option<Arc<ResolvedKey>>,
    fetched: Instant,
}

type Entries = HashMap<[u8; 32], Entry, BuildHasherDefault<DigestHasher>>;

/// Key lookups (found or not) kept in memory for `ttl`, keyed by the SHA-256 digest of the
/// key. A key changed or deleted through this gateway's `/key/*` routes is dropped from this
/// replica's cache at once; another replica sees the change within `ttl`. A `ttl` of zero
/// caches nothing: every request reads the store.
///
/// The cache holds at most `max_entries` lookups (default 100,000): when full, expired entries
/// are dropped, then unknown-key entries, then everything. Time is `tokio::time`, so tests can
/// pause it.
pub struct KeyCache {
    store: Arc<dyn KeyStore>,
    ttl: Duration,
    max_entries: usize,
    entries: RwLock<Entries>,
    /// The count of requests running with each key that limits them, shared by every lookup
    /// of the key (a lookup is made again when its entry expires, or at every request without
    /// a cache), and dropped with the last of them.
    running: Mutex<HashMap<[u8; 32], Weak<AtomicU32>, BuildHasherDefault<DigestHasher>>>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("store", &self.store)
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache in front of `store`.
    pub fn new(store: Arc<dyn KeyStore>, ttl: Duration) -> Self {
        KeyCache {
            store,
            ttl,
            max_entries: 100_000,
            entries: RwLock::new(Entries::default()),
            running: Mutex::default(),
        }
    }

    /// At most this many lookups are kept.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// The time a lookup is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The cached lookup of `digest` if it is fresh: `Some(None)` for a key known not to
    /// exist, `None` when the store must be asked.
    pub fn cached(&self, digest: &[u8; 32]) -> Option<Option<Arc<ResolvedKey>>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(digest)?;
        (entry.fetched.elapsed() < self.ttl).then(|| entry.key.clone())
    }

    /// Reads the key from the store and caches the answer.
    pub async fn fetch(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<Arc<ResolvedKey>>, KeyStoreError> {
        let fetched = Instant::now();
        let key = self
            .store
            .get(&hex(digest))
            .await?
            .map(|row| Arc::new(ResolvedKey::counted(&row, || self.running_count(digest))));
        self.remember(digest, key.clone(), fetched);
        Ok(key)
    }

    /// The count of requests running with the key of `digest`: the one its earlier lookups
    /// share while any is alive, else a new one. Counts no lookup holds any more are swept
    /// out whenever the map grows to a power of two of at least 1,024 entries.
    fn running_count(&self, digest: &[u8; 32]) -> Arc<AtomicU32> {
        let mut counts = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = counts.get(digest).and_then(Weak::upgrade) {
            return running;
        }
        if counts.len() >= 1024 && counts.len().is_power_of_two() {
            counts.retain(|_, running| running.strong_count() > 0);
        }
        let running = Arc::new(AtomicU32::new(0));
        counts.insert(*digest, Arc::downgrade(&running));
        running
    }

    /// [`KeyCache::cached`], else [`KeyCache::fetch`].
    pub async fn lookup(
        &self,
        digest: &[u8; 32],
    ) -> Result<Option<Arc<ResolvedKey>>, KeyStoreError> {
        match self.cached(digest) {
            Some(key) => Ok(key),
            None => self.fetch(digest).await,
        }
    }

    fn remember(&self, digest: &[u8; 32], key: Option<Arc<ResolvedKey>>, fetched: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.max_entries && !entries.contains_key(digest) {
            let ttl = self.ttl;
            entries.retain(|_, e| e.fetched.elapsed() < ttl);
            if entries.len() >= self.max_entries {
                entries.retain(|_, e| e.key.is_some());
            }
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(*digest, Entry { key, fetched });
    }

    /// Forgets the lookup of the key whose token (SHA-256 hex) is `token`: the next request
    /// with it reads the store.
    pub fn invalidate(&self, token: &str) {
        if let Some(digest) = super::parse_hex(token) {
            self.entries
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&digest);
        }
    }

    /// How many lookups are held.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no lookup is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::super::{
        DeleteOutcome, KeyFuture, KeyPage, KeyQuery, KeySelector, KeyStore, hash_key, key_digest,
    };
    use super::*;

    /// A store in memory that counts its lookups.
    #[derive(Debug, Default)]
    struct Counting {
        rows: Mutex<Vec<VirtualKey>>,
        gets: AtomicUsize,
    }

    impl KeyStore for Counting {
        fn get<'a>(&'a self, token: &'a str) -> KeyFuture<'a, Option<VirtualKey>> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            let row = self
                .rows
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.token == token)
                .cloned();
            Box::pin(async move { Ok(row) })
        }
        fn insert<'a>(&'a self, key: &'a VirtualKey) -> KeyFuture<'a, ()> {
            self.rows.lock().unwrap().push(key.clone());
            Box::pin(async { Ok(()) })
        }
        fn update<'a>(&'a self, _key: &'a VirtualKey) -> KeyFuture<'a, bool> {
            Box::pin(async { Ok(false) })
        }
        fn delete<'a>(&'a self, which: &'a KeySelector) -> KeyFuture<'a, DeleteOutcome> {
            if let KeySelector::Tokens(tokens) = which {
                self.rows
                    .lock()
                    .unwrap()
                    .retain(|r| !tokens.contains(&r.token));
            }
            Box::pin(async { Ok(DeleteOutcome::default()) })
        }
        fn list<'a>(&'a self, _query: &'a KeyQuery) -> KeyFuture<'a, KeyPage> {
            Box::pin(async {
                Ok(KeyPage {
                    keys: Vec::new(),
                    total: 0,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_are_kept_for_the_ttl_then_read_again() {
        let store = Arc::new(Counting::default());
        let mut row = VirtualKey::new(hash_key("sk-a"));
        row.key_alias = Some("team-a".into());
        row.metadata
            .insert("guardrails".into(), serde_json::json!(["pii"]));
        store.insert(&row).await.unwrap();
        let cache = KeyCache::new(store.clone(), Duration::from_secs(5));
        let digest = key_digest("sk-a");

        let key = cache.lookup(&digest).await.unwrap().unwrap();
        assert_eq!(key.caller().key_alias.as_deref(), Some("team-a"));
        assert_eq!(
            key.caller().api_key_hash.as_deref(),
            Some(&*hash_key("sk-a"))
        );
        assert_eq!(&*key.guardrails()[0], "pii");
        assert_eq!(store.gets.load(Ordering::SeqCst), 1);

        // Within the TTL: from memory, even after the row is gone.
        store
            .delete(&KeySelector::Tokens(vec![hash_key("sk-a")]))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(cache.lookup(&digest).await.unwrap().is_some());
        assert_eq!(store.gets.load(Ordering::SeqCst), 1);

        // At the TTL: read again, and the deletion is seen.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.lookup(&digest).await.unwrap().is_none());
        assert_eq!(store.gets.load(Ordering::SeqCst), 2);
        // An unknown key is remembered too.
        assert!(cache.lookup(&digest).await.unwrap().is_none());
        assert_eq!(store.gets.load(Ordering::SeqCst), 2);
    }

    /// Every lookup of a key shares its count of requests running: one made again when the
    /// entry expires, or at every request without a cache, does not start a count of its own.
    #[tokio::test(start_paused = true)]
    async fn lookups_of_a_key_share_its_running_requests() {
        let store = Arc::new(Counting::default());
        let mut row = VirtualKey::new(hash_key("sk-a"));
        row.max_parallel_requests = Some(2);
        store.insert(&row).await.unwrap();
        let digest = key_digest("sk-a");
        for ttl in [Duration::ZERO, Duration::from_secs(5)] {
            let cache = KeyCache::new(store.clone(), ttl);
            let first = cache.lookup(&digest).await.unwrap().unwrap();
            let one = first.start().unwrap();
            tokio::time::advance(Duration::from_secs(6)).await;
            let second = cache.lookup(&digest).await.unwrap().unwrap();
            assert!(!Arc::ptr_eq(&first, &second), "{ttl:?}");
            let two = second.start().unwrap();
            assert!(
                first.start().is_none() && second.start().is_none(),
                "{ttl:?}"
            );
            drop(one);
            let three = second.start().unwrap();
            drop((first, second, two, three));
            // Nothing running and no lookup held: a new count, from zero.
            let again = cache.lookup(&digest).await.unwrap().unwrap();
            let _places = [again.start().unwrap(), again.start().unwrap()];
            assert!(again.start().is_none());
        }
        // A key without a limit has a place for every request.
        let store = Arc::new(Counting::default());
        store
            .insert(&VirtualKey::new(hash_key("sk-b")))
            .await
            .unwrap();
        let cache = KeyCache::new(store, Duration::ZERO);
        let key = cache.lookup(&key_digest("sk-b")).await.unwrap().unwrap();
        let _places: Vec<_> = (0..1000).map(|_| key.start().unwrap()).collect();
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_and_zero_ttl_and_the_bound() {
        let store = Arc::new(Counting::default());
        store
            .insert(&VirtualKey::new(hash_key("sk-a")))
            .await
            .unwrap();
        let digest = key_digest("sk-a");

        let cache = KeyCache::new(store.clone(), Duration::from_secs(60));
        cache.lookup(&digest).await.unwrap();
        cache.invalidate(&hash_key("sk-a"));
        cache.lookup(&digest).await.unwrap();
        assert_eq!(store.gets.load(Ordering::SeqCst), 2);

        let uncached = KeyCache::new(store.clone(), Duration::ZERO);
        uncached.lookup(&digest).await.unwrap();
        uncached.lookup(&digest).await.unwrap();
        assert_eq!(store.gets.load(Ordering::SeqCst), 4);
        assert!(uncached.is_empty());

        // Unknown keys cannot grow the cache without bound.
        let bounded = KeyCache::new(store.clone(), Duration::from_secs(60)).max_entries(10);
        bounded.lookup(&digest).await.unwrap();
        for i in 0..100 {
            bounded
                .lookup(&key_digest(&format!("sk-unknown-{i}")))
                .await
                .unwrap();
            assert!(bounded.len() <= 10);
        }
        // The known key survived the purges of unknown ones.
        let gets = store.gets.load(Ordering::SeqCst);
        assert!(bounded.lookup(&digest).await.unwrap().is_some());
        assert_eq!(store.gets.load(Ordering::SeqCst), gets);
    }
}
