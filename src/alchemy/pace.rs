//! What alchemy asks of the Horde's limits and of its alchemists: submits
//! paced below the 90-per-minute limit of their route (the scheduler's
//! [`Pacer`], with its shared back-off after a 429), and which forms some
//! alchemist serves, read from `GET /v2/workers?type=interrogation` at most
//! once a minute (a form nobody serves waits on the Horde until it expires,
//! and nothing says why).
//!
//! Must not decide what to do with a form nobody serves: `image.rs` does.

use std::collections::HashSet;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::horde::HordeClient;
pub(super) use crate::scheduler::{EndpointClass, Pacer as SubmitPacer};

/// How long a read of the alchemists' forms is trusted.
const SERVED_FORMS_TTL: Duration = Duration::from_secs(60);

/// The forms some alchemist online serves, read at most once a minute.
#[derive(Debug, Default)]
pub(super) struct ServedForms {
    cached: tokio::sync::Mutex<Option<(Instant, Option<HashSet<String>>)>>,
    /// Forms already reported as served by nobody, so each is said once.
    reported: Mutex<HashSet<String>>,
}

impl ServedForms {
    /// The forms served now; `None` when the Horde did not say (then every
    /// form is taken as served: a failed read must not fail forms).
    pub(super) async fn get(&self, client: &HordeClient) -> Option<HashSet<String>> {
        let mut cached = self.cached.lock().await;
        if let Some((at, forms)) = &*cached {
            if at.elapsed() < SERVED_FORMS_TTL {
                return forms.clone();
            }
        }
        let forms = match client.alchemists().await {
            Ok(alchemists) => Some(
                alchemists
                    .into_iter()
                    .filter(|a| a.online && !a.maintenance_mode)
                    .flat_map(|a| a.forms)
                    .collect(),
            ),
            Err(error) => {
                tracing::debug!(%error, "cannot read the alchemists; every form is taken as served");
                None
            }
        };
        *cached = Some((Instant::now(), forms.clone()));
        forms
    }

    /// Whether `form` is reported as unserved for the first time.
    pub(super) fn first_report(&self, form: &str) -> bool {
        self.reported.lock().insert(form.to_owned())
    }
}
