//! The simulated R2 object store: every finished image is uploaded here,
//! handed out as a signed, expiring URL (or inlined as base64 when the
//! request asked for `r2: false`), served back by `GET /sim/r2/...`, and
//! pruned two hours after upload.
//!
//! Owns the objects, the URL signature and the S3-style refusals (bad
//! signature, expired URL, missing key). It must not decide which request
//! an image belongs to or when it is handed out: that is `status`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::time::Instant;
use uuid::Uuid;

use super::super::clock;
use super::super::det::Part;
use super::Horde;

/// R2 objects are pruned this long after upload (AH `prune_stale_images.py`).
const R2_RETENTION: Duration = Duration::from_secs(120 * 60);

/// One uploaded image.
pub(super) struct R2Object {
    webp: Arc<Vec<u8>>,
    uploaded: Instant,
    retrieved: bool,
}

impl Horde {
    /// Uploads a finished image.
    pub(super) fn store_in_r2(&mut self, generation_id: Uuid, webp: Vec<u8>) {
        self.r2.insert(
            generation_id,
            R2Object {
                webp: Arc::new(webp),
                uploaded: Instant::now(),
                retrieved: false,
            },
        );
    }

    /// The image inlined for an `r2: false` request; `N/A` once it was pruned.
    pub(super) fn r2_base64(&self, generation_id: Uuid) -> String {
        self.r2
            .get(&generation_id)
            .map(|object| base64::engine::general_purpose::STANDARD.encode(object.webp.as_slice()))
            .unwrap_or_else(|| "N/A".to_owned())
    }

    /// Drops the objects uploaded more than [`R2_RETENTION`] before `now`.
    pub(super) fn prune_r2(&mut self, now: Instant) {
        self.r2
            .retain(|_, object| now.duration_since(object.uploaded) < R2_RETENTION);
    }

    /// Counts an image retrieved the first time it is inlined or downloaded.
    pub(super) fn mark_image_retrieved(&mut self, generation_id: Uuid) {
        if let Some(object) = self.r2.get_mut(&generation_id) {
            if !object.retrieved {
                object.retrieved = true;
                self.stats.images_retrieved += 1;
            }
        }
    }

    /// A signed download URL, valid until `expires` (epoch seconds).
    pub(super) fn r2_url(&self, generation_id: Uuid, expires: u64) -> String {
        format!(
            "{}sim/r2/{generation_id}.webp?expires={expires}&signature={:016x}",
            self.settings.origin,
            self.r2_signature(generation_id, expires)
        )
    }

    fn r2_signature(&self, generation_id: Uuid, expires: u64) -> u64 {
        self.settings.det.hash(
            "r2-signature",
            &[Part::Id(generation_id), Part::Num(expires)],
        )
    }

    /// Serves an R2 download: the bytes, or the S3 error status and code.
    pub(crate) fn r2_download(
        &mut self,
        generation_id: &str,
        expires: u64,
        signature: &str,
    ) -> Result<Arc<Vec<u8>>, (u16, &'static str, &'static str)> {
        let refused = |status, code, message| Err((status, code, message));
        let Ok(uuid) = Uuid::parse_str(generation_id) else {
            self.stats.r2_refused += 1;
            return refused(404, "NoSuchKey", "The specified key does not exist.");
        };
        if format!("{:016x}", self.r2_signature(uuid, expires)) != signature {
            self.stats.r2_refused += 1;
            return refused(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            );
        }
        if (expires as f64) < clock::epoch_now() {
            self.stats.r2_refused += 1;
            return refused(403, "AccessDenied", "Request has expired");
        }
        let Some(object) = self.r2.get(&uuid) else {
            self.stats.r2_refused += 1;
            return refused(404, "NoSuchKey", "The specified key does not exist.");
        };
        let webp = Arc::clone(&object.webp);
        self.stats.r2_downloads += 1;
        self.mark_image_retrieved(uuid);
        Ok(webp)
    }
}
