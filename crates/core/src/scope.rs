//! What lives for exactly one request besides its body: who is calling ([`Caller`]), the
//! state a guardrail keeps between its checks of that request ([`RequestState`]), and what the
//! layers of one request share ([`Shared`]).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Who made a request, as an authentication layer established it: the hash of the key used and
/// what the key says about its owner. Inserted in the request extensions by whatever
/// authenticates (the gateway's key check, or your own layer) as an `Arc<Caller>`; guardrails
/// see it through
/// [`RequestMeta::caller`](crate::RequestMeta::caller) and the spend log records it.
///
/// It never holds the key itself. Field names follow LiteLLM's `user_api_key_*` metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Caller {
    /// SHA-256 (hex) of the key the request carried (`user_api_key_hash`).
    #[serde(rename = "user_api_key_hash", skip_serializing_if = "Option::is_none")]
    pub api_key_hash: Option<String>,
    /// The key's alias (`user_api_key_alias`).
    #[serde(rename = "user_api_key_alias", skip_serializing_if = "Option::is_none")]
    pub key_alias: Option<String>,
    /// The user the key belongs to (`user_api_key_user_id`).
    #[serde(
        rename = "user_api_key_user_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<String>,
    /// The user's email (`user_api_key_user_email`).
    #[serde(
        rename = "user_api_key_user_email",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_email: Option<String>,
    /// The team the key belongs to (`user_api_key_team_id`).
    #[serde(
        rename = "user_api_key_team_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub team_id: Option<String>,
    /// The organization the key belongs to (`user_api_key_org_id`).
    #[serde(
        rename = "user_api_key_org_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub org_id: Option<String>,
}

impl Caller {
    /// A caller identified by the SHA-256 hash of its key.
    pub fn with_key_hash(api_key_hash: impl Into<String>) -> Self {
        Caller {
            api_key_hash: Some(api_key_hash.into()),
            ..Caller::default()
        }
    }

    /// Sets the key alias.
    pub fn key_alias(mut self, alias: impl Into<String>) -> Self {
        self.key_alias = Some(alias.into());
        self
    }

    /// Sets the user id.
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Sets the user's email.
    pub fn user_email(mut self, email: impl Into<String>) -> Self {
        self.user_email = Some(email.into());
        self
    }

    /// Sets the team id.
    pub fn team_id(mut self, team_id: impl Into<String>) -> Self {
        self.team_id = Some(team_id.into());
        self
    }

    /// Sets the organization id.
    pub fn org_id(mut self, org_id: impl Into<String>) -> Self {
        self.org_id = Some(org_id.into());
        self
    }
}

/// Names one guardrail instance's slot in a [`RequestState`]. Create one per guardrail instance
/// (at construction) with [`StateKey::new`]; two instances of the same guardrail type keep
/// separate state for the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateKey(u64);

impl StateKey {
    /// A key no other call returns.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        StateKey(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for StateKey {
    fn default() -> Self {
        StateKey::new()
    }
}

type Slots = HashMap<(StateKey, TypeId), Box<dyn Any + Send + Sync>>;

/// What the layers of one request share, as **one** request extension: the request's ids, its
/// guardrail log, its response report, its guardrail state and the layers it went through.
/// Each is reached through its own type
/// ([`RequestId::get_or_insert`](crate::RequestId::get_or_insert),
/// [`GuardrailLog::of`](crate::GuardrailLog::of),
/// [`ResponseReport::get_or_insert`](crate::ResponseReport::get_or_insert),
/// [`RequestState::of`], [`enter_layer`](crate::enter_layer)), never as an extension of its
/// own.
///
/// One entry rather than one per type: each extension is a boxed value in a hash map that
/// starts with room for three, so six of them cost six allocations, two growths of the map and
/// six drops a request (about 1,000 instructions a request in the gateway, measured).
#[derive(Clone, Default)]
pub(crate) struct Shared {
    pub(crate) request_id: Option<crate::RequestId>,
    pub(crate) client_request_id: Option<crate::ClientRequestId>,
    pub(crate) log: Option<crate::GuardrailLog>,
    pub(crate) report: Option<crate::ResponseReport>,
    pub(crate) state: Option<RequestState>,
    /// The layers that have seen the request ([`crate::Layer::bit`]).
    pub(crate) trail: u8,
}

impl Shared {
    /// The request's, if a layer made it.
    pub(crate) fn of(extensions: &http::Extensions) -> Option<&Shared> {
        extensions.get::<Shared>()
    }

    /// The request's, made (empty) if no layer did.
    pub(crate) fn of_mut(extensions: &mut http::Extensions) -> &mut Shared {
        extensions.get_or_insert_default::<Shared>()
    }
}

/// State a guardrail keeps for one request, between its checks: what a pre-call check
/// anonymized, so that the post-call check restores it in the response of **this** request
/// only (a guardrail object is shared by every request; state kept on it leaks between
/// tenants).
///
/// One per request, created by the first layer that reads the request
/// ([`get_or_insert`](Self::get_or_insert)) and shared by every check of it; dropped with the
/// request. Cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct RequestState {
    slots: Arc<Mutex<Slots>>,
}

impl RequestState {
    /// An empty state.
    pub fn new() -> Self {
        RequestState::default()
    }

    /// The state of `request`, if a layer made one.
    pub fn of<B>(request: &http::Request<B>) -> Option<&RequestState> {
        Shared::of(request.extensions())?.state.as_ref()
    }

    /// The state of `request`: the one a layer made, else a new one, kept with the request.
    pub fn get_or_insert<B>(request: &mut http::Request<B>) -> RequestState {
        Shared::of_mut(request.extensions_mut())
            .state
            .get_or_insert_default()
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `value` in `key`'s slot for type `T`, replacing what was there.
    pub fn insert<T: Any + Send + Sync>(&self, key: StateKey, value: T) {
        self.lock()
            .insert((key, TypeId::of::<T>()), Box::new(value));
    }

    /// A copy of what `key`'s slot for type `T` holds.
    pub fn get<T: Any + Send + Sync + Clone>(&self, key: StateKey) -> Option<T> {
        self.lock()
            .get(&(key, TypeId::of::<T>()))
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    /// Runs `f` on `key`'s slot for type `T`, created with `T::default()` when empty: to add
    /// to what earlier checks stored.
    pub fn update<T: Any + Send + Sync + Default, R>(
        &self,
        key: StateKey,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let mut slots = self.lock();
        let slot = slots
            .entry((key, TypeId::of::<T>()))
            .or_insert_with(|| Box::new(T::default()));
        let value = slot
            .downcast_mut::<T>()
            .expect("a slot holds the type it is keyed by");
        f(value)
    }

    /// Takes `key`'s slot for type `T` out.
    pub fn remove<T: Any + Send + Sync>(&self, key: StateKey) -> Option<T> {
        self.lock()
            .remove(&(key, TypeId::of::<T>()))
            .and_then(|v| v.downcast::<T>().ok())
            .map(|v| *v)
    }
}

impl fmt::Debug for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestState")
            .field("slots", &self.lock().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_key_and_per_type() {
        let state = RequestState::new();
        let (a, b) = (StateKey::new(), StateKey::new());
        assert_ne!(a, b);
        state.insert(a, 1u32);
        state.insert(b, 2u32);
        state.insert(a, String::from("text"));
        assert_eq!(state.get::<u32>(a), Some(1));
        assert_eq!(state.get::<u32>(b), Some(2));
        assert_eq!(state.get::<String>(a).as_deref(), Some("text"));
        assert_eq!(state.get::<String>(b), None);
        state.update::<Vec<u8>, _>(a, |v| v.push(7));
        state.update::<Vec<u8>, _>(a, |v| v.push(8));
        assert_eq!(state.get::<Vec<u8>>(a), Some(vec![7, 8]));
        assert_eq!(state.remove::<u32>(a), Some(1));
        assert_eq!(state.get::<u32>(a), None);
        // A clone is a handle to the same state.
        let handle = state.clone();
        handle.insert(b, 3u32);
        assert_eq!(state.get::<u32>(b), Some(3));
    }

    #[test]
    fn caller_serializes_with_litellm_names() {
        let caller = Caller::with_key_hash("abc")
            .key_alias("team-a")
            .user_id("u1");
        assert_eq!(
            serde_json::to_value(&caller).unwrap(),
            serde_json::json!({
                "user_api_key_hash": "abc",
                "user_api_key_alias": "team-a",
                "user_api_key_user_id": "u1"
            })
        );
    }
}
