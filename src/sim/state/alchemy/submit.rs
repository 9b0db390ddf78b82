//! `POST /v2/interrogate/async` after the schema: the real server's checks
//! in its order (webhook scheme, API key, TooManyPrompts, then the source
//! image), and creating the request with one form per requested form
//! (duplicates kept). A request without forms is faulted at once and never
//! served (docs/horde-api.md §10 (alchemy)).
//!
//! It must not answer in HTTP terms (`routes_alchemy` does), nor be kinder
//! than the server.

use std::sync::Arc;

use tokio::time::Instant;
use uuid::Uuid;

use super::super::super::alchemy_forms::tiles;
use super::super::super::alchemy_results::StoredSource;
use super::super::super::det::Part;
use super::super::super::sha256::sha256_hex;
use super::super::super::validate::InterrogateInput;
use super::super::{ApiError, Horde};
use super::{Form, FormState, Interrogation};

/// Interrogation forms a user may have waiting or processing, per unit of concurrency.
const FORMS_PER_CONCURRENCY: u64 = 10;

impl Horde {
    /// The server's checks before it looks at the source image, in its
    /// order: the webhook's scheme, the API key, TooManyPrompts.
    pub(crate) fn check_interrogate(
        &mut self,
        apikey: &str,
        input: &InterrogateInput,
    ) -> Result<(), ApiError> {
        if let Some(webhook) = &input.webhook {
            if !webhook.starts_with("https://") {
                return Err(ApiError::rc(
                    400,
                    "BadRequest",
                    "webhooks need to point to an https endpoint.",
                ));
            }
        }
        let owner = self.user_for_key(apikey)?;
        self.check_form_concurrency(owner, input.forms.len() as u64)
    }

    /// Creates the request once its source was decoded (off the lock): the
    /// key and concurrency are checked again, since other calls may have
    /// run meanwhile. Returns the new request's id.
    pub(crate) fn create_interrogation(
        &mut self,
        apikey: &str,
        input: InterrogateInput,
        source: StoredSource,
    ) -> Result<Uuid, ApiError> {
        let owner = self.user_for_key(apikey)?;
        self.check_form_concurrency(owner, input.forms.len() as u64)?;
        let det = self.settings.det;
        let seq = self.alchemy.next_seq;
        self.alchemy.next_seq += 1;
        let id = det.uuid("interrogation", &[Part::Num(seq)]);
        let forms = input
            .forms
            .into_iter()
            .enumerate()
            .map(|(index, form)| Form {
                id: det.uuid(
                    "interrogation form",
                    &[Part::Num(seq), Part::Num(index as u64)],
                ),
                name: form.name,
                payload: form.payload,
                state: FormState::Waiting,
                result: None,
                faults: 0,
                handed_out: false,
            })
            .collect();
        let request = Interrogation {
            id,
            seq,
            owner,
            slow_workers: input.slow_workers,
            trusted_workers: input.trusted_workers,
            client_sha256: sha256_hex(&source.client_bytes),
            worker_source: Arc::new(source.worker_bytes),
            width: source.width,
            height: source.height,
            tiles: tiles(source.width, source.height),
            forms,
            expiry: Instant::now() + self.alchemy.settings.expiry,
            cancelled: false,
            reads: 0,
        };
        self.alchemy.requests.insert(id, request);
        self.alchemy.order.insert(seq, id);
        self.stats.alchemy_requests_created += 1;
        Ok(id)
    }

    /// TooManyPrompts: the user's waiting and processing forms plus the new
    /// ones (duplicates included) must not exceed concurrency × 10.
    fn check_form_concurrency(&mut self, owner: usize, new_forms: u64) -> Result<(), ApiError> {
        let open: u64 = self
            .alchemy
            .requests
            .values()
            .filter(|request| request.owner == owner)
            .flat_map(|request| request.forms.iter())
            .filter(|form| form.state.is_open())
            .count() as u64;
        let user = &self.users[owner];
        let limit = u64::from(user.concurrency) * FORMS_PER_CONCURRENCY;
        let total = open + new_forms;
        if total <= limit {
            return Ok(());
        }
        self.stats.too_many_prompts += 1;
        let tail = if user.anon {
            "register an account to increase your concurrency."
        } else {
            "request to increase your concurrency."
        };
        Err(ApiError::rc(
            429,
            "TooManyPrompts",
            format!(
                "Parallel requests ({total}) exceeded user limit ({limit}). Please try again later or {tail}"
            ),
        ))
    }
}
