//! Users: the anonymous user and one registered user per `--api-key`, each
//! with its own kudos and concurrency; who an API key acts as, `find_user`
//! (with the server's answer cache), and the test hooks `/sim/users`,
//! `/sim/owner/{id}` and `/sim/revoke`.
//!
//! Owns the user records and the key-to-user map. It must not price or
//! queue a request; a key that matches no user is refused as the real
//! server refuses it.

use std::collections::HashMap;

use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::super::config::SimConfig;
use super::{invalid_api_key, ApiError, Horde, Request, ANON_API_KEY};

/// A user of the simulated Horde (index 0 is the anonymous user).
pub(super) struct User {
    pub(super) id: u32,
    pub(super) username: String,
    pub(super) kudos: f64,
    /// Kudos a balance may not go below when paying upfront (anon: -50).
    pub(super) floor: f64,
    pub(super) concurrency: u32,
    pub(super) anon: bool,
    pub(super) shared_keys: Vec<Uuid>,
    pub(super) requests_made: u64,
    pub(super) images_received: u64,
    /// Other clients' requests were put on the key (`--busy-key`).
    pub(super) busy: bool,
}

/// Who a call acts as.
pub(super) struct Caller {
    pub(super) user: usize,
    pub(super) shared_key: Option<Uuid>,
}

/// The anonymous user and one user per `--api-key`, and the map from each
/// API key to its user's index.
pub(super) fn registered_users(config: &SimConfig) -> (Vec<User>, HashMap<String, usize>) {
    let mut users = vec![User {
        id: 0,
        username: "Anonymous#0".to_owned(),
        kudos: 0.0,
        floor: -50.0,
        concurrency: 500,
        anon: true,
        shared_keys: Vec::new(),
        requests_made: 0,
        images_received: 0,
        busy: false,
    }];
    let mut keys = HashMap::from([(ANON_API_KEY.to_owned(), 0)]);
    for (index, key) in config.api_keys.iter().enumerate() {
        let id = index as u32 + 1;
        keys.insert(key.expose().to_owned(), users.len());
        users.push(User {
            id,
            username: format!("sim_user_{id}#{id}"),
            kudos: key.kudos.unwrap_or(config.user_kudos),
            floor: 0.0,
            concurrency: key.concurrency.unwrap_or(config.user_concurrency),
            anon: false,
            shared_keys: Vec::new(),
            requests_made: 0,
            images_received: 0,
            busy: false,
        });
    }
    (users, keys)
}

impl Horde {
    /// Makes `apikey` invalid from now on (its user's requests stay on the
    /// Horde, as a deleted key's do). False when no user has that key.
    pub(crate) fn revoke(&mut self, apikey: &str) -> bool {
        let Some(user) = self.keys.remove(apikey) else {
            return false;
        };
        self.find_user_cache.remove(apikey);
        self.revoked.push(user);
        true
    }

    /// Per-user figures (`GET /sim/users`): who made which requests, what each
    /// still has waiting, and how many images of other users the workers made.
    pub(crate) fn users_report(&self) -> Value {
        let users: Vec<Value> = self
            .users
            .iter()
            .enumerate()
            .map(|(index, user)| {
                let waiting: u64 = self
                    .requests
                    .values()
                    .filter(|request| request.owner == index)
                    .map(|request| request.waiting.len() as u64)
                    .sum();
                serde_json::json!({
                    "id": user.id,
                    "username": user.username,
                    "anonymous": user.anon,
                    "concurrency": user.concurrency,
                    "kudos": user.kudos,
                    "requests_made": user.requests_made,
                    "images_received": user.images_received,
                    "waiting_images": waiting,
                    "revoked": self.revoked.contains(&index),
                })
            })
            .collect();
        serde_json::json!({
            "users": users,
            "background_waiting": self.background.len(),
            "background_served": self.background_served,
        })
    }

    /// The user (by id, 0 for anonymous) who made request `id`.
    pub(crate) fn owner_of(&self, id: &str) -> Option<u32> {
        self.find(id).map(|request| self.users[request.owner].id)
    }

    /// Resolves the `apikey` header of a generate call: shared key first, then user key.
    pub(super) fn caller_for_generate(&self, apikey: &str) -> Result<Caller, ApiError> {
        if let Ok(id) = Uuid::parse_str(apikey) {
            if let Some(key) = self.shared_keys.get(&id) {
                return Ok(Caller {
                    user: key.owner,
                    shared_key: Some(id),
                });
            }
        }
        match self.keys.get(apikey) {
            Some(&user) => Ok(Caller {
                user,
                shared_key: None,
            }),
            None => Err(invalid_api_key()),
        }
    }

    pub(super) fn user_for_key(&self, apikey: &str) -> Result<usize, ApiError> {
        self.keys.get(apikey).copied().ok_or_else(invalid_api_key)
    }

    /// `GET /v2/find_user`: missing header 401, unknown key 404 UserNotFound
    /// (whose message echoes the key, as the real server's does). A key's
    /// answer is cached for `find_user_cache`: within that time the same key
    /// gets the same body, so a request submitted meanwhile is not listed yet.
    pub(crate) fn find_user(&mut self, apikey: Option<&str>) -> Result<Value, ApiError> {
        let Some(apikey) = apikey else {
            return Err(invalid_api_key());
        };
        let ttl = self.settings.find_user_cache;
        let now = Instant::now();
        if let Some((filled, body)) = self.find_user_cache.get(apikey) {
            if now.duration_since(*filled) < ttl {
                return Ok(body.clone());
            }
        }
        let body = self.find_user_body(apikey)?;
        if !ttl.is_zero() {
            self.find_user_cache
                .retain(|_, (filled, _)| now.duration_since(*filled) < ttl);
            self.find_user_cache
                .insert(apikey.to_owned(), (now, body.clone()));
        }
        Ok(body)
    }

    fn find_user_body(&self, apikey: &str) -> Result<Value, ApiError> {
        let shared = Uuid::parse_str(apikey)
            .ok()
            .and_then(|id| self.shared_keys.get(&id).map(|key| (id, key)));
        let (user_index, suffix) = match shared {
            Some((_, key)) => (key.owner, format!(" (Shared Key: {})", key.name)),
            None => match self.keys.get(apikey) {
                Some(&user) => (user, String::new()),
                None => {
                    return Err(ApiError::rc(
                        404,
                        "UserNotFound",
                        format!("User with api_key '{apikey}' not found."),
                    ))
                }
            },
        };
        let user = &self.users[user_index];
        // Every request of the user not yet expired, finished and retrieved
        // ones included; none for the anonymous user.
        let active: Vec<String> = if user.anon {
            Vec::new()
        } else {
            let mut owned: Vec<&Request> = self
                .requests
                .values()
                .filter(|request| request.owner == user_index)
                .collect();
            owned.sort_by_key(|request| request.seq);
            owned.iter().map(|request| request.id.to_string()).collect()
        };
        let mut body = json!({
            "username": format!("{}{suffix}", user.username),
            "id": user.id,
            "kudos": user.kudos,
            "concurrency": user.concurrency,
            "worker_invited": 0,
            "moderator": false,
            "kudos_details": {"accumulated": 0.0, "gifted": 0, "donated": 0, "admin": 0,
                              "received": 0, "recurring": 0, "awarded": 0, "styled": 0},
            "worker_count": 0,
            "worker_ids": [],
            "sharedkey_ids": user.shared_keys.iter().map(Uuid::to_string).collect::<Vec<_>>(),
            "styles": [],
            "trusted": false,
            "flagged": false,
            "vpn": false,
            "service": false,
            "education": false,
            "customizer": false,
            "special": false,
            "deleted": false,
            "pseudonymous": user.anon,
            "account_age": 0,
            "usage": {"megapixelsteps": null, "requests": null},
            "contributions": {"megapixelsteps": null, "fulfillments": null},
            "records": {
                "usage": {"megapixelsteps": 0.0, "tokens": 0},
                "contribution": {"megapixelsteps": 0.0, "tokens": 0},
                "fulfillment": {"image": 0, "text": 0, "interrogation": 0},
                "request": {"image": user.requests_made, "text": 0, "interrogation": 0},
                "style": {"image": 0, "text": 0, "interrogation": 0},
            },
        });
        // Left out when empty; only the types present otherwise.
        if !active.is_empty() {
            body["active_generations"] = json!({ "image": active });
        }
        Ok(body)
    }
}
