//! Shared keys (`/v2/sharedkeys`): API keys a user lends out, each with its
//! own kudos budget, expiry and per-job limits, spending its owner's kudos.
//!
//! Owns the keys, their CRUD endpoints and the limits a key puts on a
//! submit. It must not resolve plain user keys (`users`) or price a request
//! (`kudos`); a key is never more permissive than the real server's.

use serde_json::{json, Value};
use uuid::Uuid;

use super::super::clock;
use super::super::det::Part;
use super::super::validate::GenParams;
use super::{ApiError, Caller, Horde};

/// A key lent out by `owner`.
pub(super) struct SharedKey {
    pub(super) owner: usize,
    pub(super) name: String,
    /// -1 means unlimited.
    kudos: f64,
    /// Epoch seconds, or none for "never".
    expiry: Option<i64>,
    utilized: f64,
    max_image_pixels: i64,
    max_image_steps: i64,
    max_text_tokens: i64,
}

impl SharedKey {
    /// Spends `amount` from the key's budget (an unlimited key only counts it).
    pub(super) fn debit(&mut self, amount: f64) {
        if self.kudos != -1.0 {
            self.kudos = (self.kudos - amount).max(0.0);
        }
        self.utilized += amount;
    }
}

impl Horde {
    /// Who a submit made with `caller`'s key acts as: an empty shared key is
    /// refused, or runs as the anonymous user under `allow_downgrade`; an
    /// expired one is refused. A plain user key passes through.
    pub(super) fn shared_key_submitter(
        &self,
        caller: Caller,
        allow_downgrade: bool,
    ) -> Result<Caller, ApiError> {
        let Some(key_id) = caller.shared_key else {
            return Ok(caller);
        };
        let now_epoch = clock::epoch_now() as i64;
        let key = &self.shared_keys[&key_id];
        if key.kudos == 0.0 {
            if !allow_downgrade {
                return Err(ApiError::rc(
                    403,
                    "SharedKeyEmpty",
                    "This shared key is empty.",
                ));
            }
            // An empty shared key with allow_downgrade runs as the anonymous user.
            return Ok(Caller {
                user: 0,
                shared_key: None,
            });
        }
        if key.expiry.is_some_and(|expiry| expiry <= now_epoch) {
            return Err(ApiError::rc(
                403,
                "SharedKeyExpired",
                "This shared key has expired",
            ));
        }
        Ok(caller)
    }

    /// The key's remaining kudos must cover the dry-run price (unless
    /// unlimited, or `allow_downgrade` is set).
    pub(super) fn check_shared_key_budget(
        &self,
        key_id: Uuid,
        required: f64,
        allow_downgrade: bool,
    ) -> Result<(), ApiError> {
        let key = &self.shared_keys[&key_id];
        if key.kudos != -1.0 && required > key.kudos && !allow_downgrade {
            return Err(ApiError::rc(
                403,
                "SharedKeyInsufficientKudos",
                format!(
                    "This shared key does not have enough remaining kudos ({}) to fulfill this request ({}).",
                    key.kudos, required
                ),
            ));
        }
        Ok(())
    }

    /// The key's per-job pixel and step limits (-1: none), on the final params.
    pub(super) fn check_shared_key_limits(
        &self,
        key_id: Uuid,
        params: &GenParams,
    ) -> Result<(), ApiError> {
        let key = &self.shared_keys[&key_id];
        let pixels = i64::from(params.width) * i64::from(params.height);
        if key.max_image_pixels != -1 && pixels > key.max_image_pixels {
            return Err(ApiError::rc(
                400,
                "BadRequest",
                format!(
                    "This shared key is limited to {} pixels per job. You requested {pixels} pixels.",
                    key.max_image_pixels
                ),
            ));
        }
        let steps = i64::from(params.steps);
        if key.max_image_steps != -1 && steps > key.max_image_steps {
            return Err(ApiError::rc(
                400,
                "BadRequest",
                format!(
                    "This shared key is limited to {} steps per job. You requested {steps} steps.",
                    key.max_image_steps
                ),
            ));
        }
        Ok(())
    }

    /// `PUT /v2/sharedkeys`.
    pub(crate) fn create_shared_key(
        &mut self,
        apikey: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let owner = self.user_for_key(apikey)?;
        if self.users[owner].anon {
            return Err(ApiError::rc(
                403,
                "AnonForbidden",
                "Anonymous user is forbidden from performing this operation",
            ));
        }
        if self.users[owner].shared_keys.len() >= 3 {
            return Err(ApiError::rc(
                403,
                "Forbidden",
                "You cannot have more than 3 shared keys.",
            ));
        }
        let id = self
            .settings
            .det
            .uuid("shared-key", &[Part::Num(self.next_shared_key)]);
        self.next_shared_key += 1;
        let mut key = SharedKey {
            owner,
            name: String::new(),
            kudos: 5000.0,
            expiry: None,
            utilized: 0.0,
            max_image_pixels: -1,
            max_image_steps: -1,
            max_text_tokens: -1,
        };
        apply_shared_key_fields(&mut key, body)?;
        self.users[owner].shared_keys.push(id);
        self.shared_keys.insert(id, key);
        Ok(self.shared_key_details(id))
    }

    /// `GET /v2/sharedkeys/{id}`: no auth; an unknown id is 401, not 404.
    pub(crate) fn shared_key(&self, id: &str) -> Result<Value, ApiError> {
        let uuid = self.shared_key_id(id)?;
        Ok(self.shared_key_details(uuid))
    }

    /// `PATCH /v2/sharedkeys/{id}` by the owner.
    pub(crate) fn modify_shared_key(
        &mut self,
        apikey: &str,
        id: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let uuid = self.shared_key_id(id)?;
        self.check_shared_key_owner(apikey, uuid)?;
        let has_fields = [
            "kudos",
            "expiry",
            "name",
            "max_image_pixels",
            "max_image_steps",
            "max_text_tokens",
        ]
        .iter()
        .any(|field| body.get(field).is_some_and(|value| !value.is_null()));
        if !has_fields {
            return Err(ApiError::rc(
                400,
                "NoSharedKeyModSelected",
                "No shared key modification selected!",
            ));
        }
        let key = self
            .shared_keys
            .get_mut(&uuid)
            .expect("resolved just above");
        apply_shared_key_fields(key, body)?;
        Ok(self.shared_key_details(uuid))
    }

    /// `DELETE /v2/sharedkeys/{id}` by the owner.
    pub(crate) fn delete_shared_key(&mut self, apikey: &str, id: &str) -> Result<Value, ApiError> {
        let uuid = self.shared_key_id(id)?;
        let owner = self.check_shared_key_owner(apikey, uuid)?;
        self.shared_keys.remove(&uuid);
        self.users[owner].shared_keys.retain(|key| *key != uuid);
        Ok(json!({"message": "OK"}))
    }

    fn shared_key_id(&self, id: &str) -> Result<Uuid, ApiError> {
        Uuid::parse_str(id)
            .ok()
            .filter(|uuid| self.shared_keys.contains_key(uuid))
            .ok_or_else(|| ApiError::rc(401, "InvalidAPIKey", "No user matching sent Shared Key."))
    }

    fn check_shared_key_owner(&self, apikey: &str, key: Uuid) -> Result<usize, ApiError> {
        let caller = self.user_for_key(apikey)?;
        if self.shared_keys[&key].owner != caller {
            return Err(ApiError::rc(
                403,
                "Forbidden",
                "This shared key does not belong to you.",
            ));
        }
        Ok(caller)
    }

    fn shared_key_details(&self, id: Uuid) -> Value {
        let key = &self.shared_keys[&id];
        let mut details = json!({
            "id": id.to_string(),
            "username": self.users[key.owner].username,
            "name": key.name,
            // SharedKeyDetails declares both as integers.
            "kudos": key.kudos.round() as i64,
            "utilized": key.utilized.round() as i64,
            "max_image_pixels": key.max_image_pixels,
            "max_image_steps": key.max_image_steps,
            "max_text_tokens": key.max_text_tokens,
        });
        if let Some(expiry) = key.expiry {
            details["expiry"] = Value::String(clock::rfc822(expiry));
        }
        details
    }
}

fn apply_shared_key_fields(key: &mut SharedKey, body: &Value) -> Result<(), ApiError> {
    let bad = |field: &str| ApiError::rc(400, "BadRequest", format!("{field} must be an integer"));
    let int = |field: &str| -> Result<Option<i64>, ApiError> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_i64().map(Some).ok_or_else(|| bad(field)),
        }
    };
    if let Some(kudos) = int("kudos")? {
        key.kudos = kudos as f64;
    }
    if let Some(days) = int("expiry")? {
        key.expiry = (days != -1).then(|| clock::epoch_now() as i64 + days * 86_400);
    }
    if let Some(name) = body.get("name").and_then(Value::as_str) {
        key.name = name.to_owned();
    }
    if let Some(pixels) = int("max_image_pixels")? {
        key.max_image_pixels = pixels;
    }
    if let Some(steps) = int("max_image_steps")? {
        key.max_image_steps = steps;
    }
    if let Some(tokens) = int("max_text_tokens")? {
        key.max_text_tokens = tokens;
    }
    Ok(())
}
