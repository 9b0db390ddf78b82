//! The ledger's alchemy tree: one record per image whose alchemy forms were
//! asked for, keyed by the image's file name in the output folder.
//!
//! Owns the record's shape and its invariants (ARCHITECTURE.md, ledger
//! invariants 12–14): the forms an image wants and what each gave, the
//! interrogation request on the Horde (its intent recorded durably before the
//! `POST`, its id durably before anything depends on it), and the counts every
//! view of a batch reads. It never talks HTTP and never writes images.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Store, StoreError};

/// The tree's name in the database.
pub(super) const ALCHEMY_TREE: &str = "alchemy";

/// The record format's version.
pub const ALCHEMY_SCHEMA_VERSION: u32 = 1;

/// What an image's alchemy asked for and got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlchemyRecord {
    /// [`ALCHEMY_SCHEMA_VERSION`].
    pub v: u32,
    /// The image file's size when its forms were asked for: a file replaced
    /// since (a reroll, a user's edit) gets its forms again.
    pub source_len: u64,
    /// The image's size in pixels (post-processors are priced per 512² tile).
    pub width: u32,
    pub height: u32,
    /// Whether slow alchemists may serve it (costs one kudo more per form).
    pub slow_workers: bool,
    /// Every form asked for, by name, and where it stands.
    pub forms: BTreeMap<String, FormRecord>,
    /// The interrogation request on the Horde, if one may be there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<PendingRequest>,
    /// Every interrogation id this image ever had, oldest first.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Submits whose answer was lost (the process died, or the connection
    /// dropped, after the `POST` left): the Horde may have queued and charged
    /// those forms once more, and nothing lists a user's interrogations to
    /// find them again.
    #[serde(default)]
    pub lost_answers: u32,
    /// Kudos charged for the forms delivered, by the Horde's price list.
    #[serde(default)]
    pub kudos: f64,
    /// Forms asked again because their delivered image could not be fetched
    /// (its URL had expired): bounded, so a storage that refuses every URL
    /// ends in a failure, not a loop.
    #[serde(default)]
    pub redos: u32,
}

/// Where one form of an image stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FormRecord {
    /// Not delivered yet (or to be asked again).
    Wanted,
    /// A text form's result, as the Horde gave it (`result[form]`).
    Done { value: Value },
    /// A post-processor's image, written next to the source.
    Derived {
        file: String,
        width: u32,
        height: u32,
    },
    /// Failed for good (faulted on the Horde, refused, or no alchemist serves it).
    Failed { why: String },
}

impl FormRecord {
    /// Whether nothing more will be asked for this form in this run.
    pub fn is_settled(&self) -> bool {
        !matches!(self, FormRecord::Wanted)
    }
}

/// An interrogation request that may be on the Horde.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// The Horde's id; `None` from the intent (recorded before the `POST`)
    /// until the answer is recorded.
    pub id: Option<String>,
    /// The forms it asked for.
    pub forms: Vec<String>,
    /// When it was sent (ms since the epoch).
    pub sent_ms: u64,
}

impl AlchemyRecord {
    /// Whether every form is delivered or failed and nothing is on the Horde.
    pub fn is_settled(&self) -> bool {
        self.request.is_none() && self.forms.values().all(FormRecord::is_settled)
    }

    /// The forms still wanted, in name order.
    pub fn wanted(&self) -> Vec<String> {
        self.forms
            .iter()
            .filter(|(_, form)| !form.is_settled())
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// What the alchemy tree holds, for `status`, `status.json`, the summary and
/// the page: every view counts alchemy from here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlchemyCounts {
    /// Images with forms asked for.
    pub images: u64,
    /// Images whose every form is delivered.
    pub images_done: u64,
    /// Forms delivered (text results and post-processed images).
    pub forms_done: u64,
    /// Forms failed for good.
    pub forms_failed: u64,
    /// Forms not delivered yet.
    pub forms_wanted: u64,
    /// Interrogation requests that may still be on the Horde.
    pub requests_on_horde: u64,
    /// Submits whose answer was lost (each possibly charged once more).
    pub lost_answers: u64,
    /// Kudos charged for delivered forms.
    pub kudos: f64,
}

impl AlchemyCounts {
    /// What one record counts for.
    pub fn of(record: &AlchemyRecord) -> AlchemyCounts {
        let mut counts = AlchemyCounts::default();
        counts.add(record);
        counts
    }

    /// Replaces what one record counted for (`before`) with what it counts
    /// for now (`after`): how a live total follows each write.
    pub fn replace(&mut self, before: &AlchemyCounts, after: &AlchemyCounts) {
        let update =
            |total: &mut u64, old: u64, new: u64| *total = (*total + new).saturating_sub(old);
        update(&mut self.images, before.images, after.images);
        update(&mut self.images_done, before.images_done, after.images_done);
        update(&mut self.forms_done, before.forms_done, after.forms_done);
        update(
            &mut self.forms_failed,
            before.forms_failed,
            after.forms_failed,
        );
        update(
            &mut self.forms_wanted,
            before.forms_wanted,
            after.forms_wanted,
        );
        update(
            &mut self.requests_on_horde,
            before.requests_on_horde,
            after.requests_on_horde,
        );
        update(
            &mut self.lost_answers,
            before.lost_answers,
            after.lost_answers,
        );
        self.kudos += after.kudos - before.kudos;
    }

    fn add(&mut self, record: &AlchemyRecord) {
        self.images += 1;
        let mut all_done = true;
        for form in record.forms.values() {
            match form {
                FormRecord::Wanted => {
                    self.forms_wanted += 1;
                    all_done = false;
                }
                FormRecord::Done { .. } | FormRecord::Derived { .. } => self.forms_done += 1,
                FormRecord::Failed { .. } => {
                    self.forms_failed += 1;
                    all_done = false;
                }
            }
        }
        if all_done {
            self.images_done += 1;
        }
        if record.request.is_some() {
            self.requests_on_horde += 1;
        }
        self.lost_answers += u64::from(record.lost_answers);
        self.kudos += record.kudos;
    }
}

impl Store {
    /// The alchemy record of the image `file_name`, if its forms were asked for.
    pub fn alchemy(&self, file_name: &str) -> Result<Option<AlchemyRecord>, StoreError> {
        let raw = self
            .inner
            .alchemy
            .get(file_name.as_bytes())
            .map_err(|error| self.backend_error(error))?;
        raw.map(|raw| self.decode_alchemy(file_name, &raw))
            .transpose()
    }

    /// Stores the alchemy record of `file_name`, in memory until the next flush.
    pub fn put_alchemy(&self, file_name: &str, record: &AlchemyRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record)
            .expect("an alchemy record is plain data with string keys; serialising cannot fail");
        self.inner
            .alchemy
            .insert(file_name.as_bytes(), value)
            .map_err(|error| self.backend_error(error))?;
        self.wrote();
        Ok(())
    }

    /// [`Store::put_alchemy`] then a flush: the record survives a crash once this returns.
    pub async fn put_alchemy_durable(
        &self,
        file_name: &str,
        record: &AlchemyRecord,
    ) -> Result<(), StoreError> {
        self.put_alchemy(file_name, record)?;
        self.flush().await
    }

    /// Every alchemy record, in file-name order.
    pub fn alchemy_records(
        &self,
    ) -> impl Iterator<Item = Result<(String, AlchemyRecord), StoreError>> + Send + 'static {
        let store = self.clone();
        self.inner.alchemy.iter().map(move |entry| {
            let (key, raw) = entry.map_err(|error| store.backend_error(error))?;
            let name = String::from_utf8_lossy(&key).into_owned();
            let record = store.decode_alchemy(&name, &raw)?;
            Ok((name, record))
        })
    }

    /// What the alchemy tree holds, counted (one read of every record).
    pub fn alchemy_counts(&self) -> Result<Option<AlchemyCounts>, StoreError> {
        if self.inner.alchemy.is_empty() {
            return Ok(None);
        }
        let mut counts = AlchemyCounts::default();
        for entry in self.alchemy_records() {
            let (_, record) = entry?;
            counts.add(&record);
        }
        Ok(Some(counts))
    }

    fn decode_alchemy(&self, file_name: &str, raw: &[u8]) -> Result<AlchemyRecord, StoreError> {
        serde_json::from_slice(raw).map_err(|error| StoreError::Damaged {
            dir: self.inner.dir.clone(),
            detail: format!("the alchemy record of {file_name} cannot be read: {error}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.alchemy_counts().unwrap(), None);
        let mut record = AlchemyRecord {
            v: ALCHEMY_SCHEMA_VERSION,
            slow_workers: true,
            ..AlchemyRecord::default()
        };
        record.forms.insert(
            "caption".into(),
            FormRecord::Done {
                value: Value::from("a cat"),
            },
        );
        record.forms.insert("nsfw".into(), FormRecord::Wanted);
        store.put_alchemy("a/b.webp", &record).unwrap();
        assert_eq!(store.alchemy("a/b.webp").unwrap(), Some(record.clone()));
        assert!(!record.is_settled());
        assert_eq!(record.wanted(), vec!["nsfw".to_owned()]);
        let counts = store.alchemy_counts().unwrap().unwrap();
        assert_eq!(
            (counts.images, counts.forms_done, counts.forms_wanted),
            (1, 1, 1)
        );
        assert_eq!(counts.images_done, 0);
        // A live total follows a record's change as a fresh count would.
        let mut after = record.clone();
        after.forms.insert(
            "nsfw".into(),
            FormRecord::Done {
                value: Value::from(false),
            },
        );
        after.kudos = 6.0;
        let mut live = counts.clone();
        live.replace(&AlchemyCounts::of(&record), &AlchemyCounts::of(&after));
        store.put_alchemy("a/b.webp", &after).unwrap();
        assert_eq!(Some(live), store.alchemy_counts().unwrap());
    }
}
