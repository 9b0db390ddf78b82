//! What the ledger stores: one [`RequestRecord`] per request slot, keyed by
//! [`RequestKey`], plus one [`RunMeta`] per state directory.
//!
//! Records are versioned JSON so an old ledger stays readable by eye and a
//! ledger from a newer horde-batch is refused with a clear error instead of being
//! misread. Records stay small: image bytes never go here, only names and ids.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::digest::JobKey;

/// Schema version written into every [`RequestRecord`] and [`RunMeta`].
/// Bump it (and add a migration) whenever a stored field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, the unit of every timestamp in the ledger.
/// A clock set before 1970 reads as 0 rather than failing.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Identifies one request slot: slot `slot` of the job `job_key`.
///
/// Encoded as `"{job_key}/{slot:06}"`, so a job's slots sort together and in
/// slot order (up to slot 999 999). Job keys are opaque, but must not contain `/`
/// for prefix scans to stay exact; [`crate::store::Store::job_slots`] filters anyway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    /// The job's opaque key (e.g. 16 hex characters).
    pub job_key: String,
    /// The slot number within the job, from 0.
    pub slot: u32,
}

impl RequestKey {
    /// A key for slot `slot` of job `job_key`.
    pub fn new(job_key: impl Into<String>, slot: u32) -> RequestKey {
        RequestKey {
            job_key: job_key.into(),
            slot,
        }
    }

    /// The key of slot `slot` of the job keyed `job`.
    pub fn of_job(job: JobKey, slot: u32) -> RequestKey {
        RequestKey::new(job.to_string(), slot)
    }

    /// The job's key, when it is one horde-batch writes (16 hex digits).
    pub fn job(&self) -> Option<JobKey> {
        self.job_key.parse().ok()
    }

    /// The byte string stored in the database.
    pub(crate) fn encode(&self) -> String {
        self.to_string()
    }

    /// The prefix shared by every slot of `job_key`.
    pub(crate) fn job_prefix(job_key: &str) -> String {
        format!("{job_key}/")
    }

    /// Parses a stored key; `None` if it is not `"{job_key}/{digits}"`.
    pub(crate) fn decode(raw: &[u8]) -> Option<RequestKey> {
        let text = std::str::from_utf8(raw).ok()?;
        let (job_key, slot) = text.rsplit_once('/')?;
        if job_key.is_empty() || slot.is_empty() || !slot.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(RequestKey::new(job_key, slot.parse().ok()?))
    }
}

impl fmt::Display for RequestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:06}", self.job_key, self.slot)
    }
}

/// An image whose file (and sidecar) is durable on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedImage {
    /// The Horde's generation id.
    pub generation_id: String,
    /// The image file's name in the output directory.
    pub file_name: String,
    /// Whether the Horde flagged the image as censored.
    pub censored: bool,
}

/// The last error a slot hit, kept for `status` and the errors file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedError {
    /// The failure class (e.g. "rate_limited", "faulted"); defined by the scheduler.
    pub class: String,
    /// A human-readable message.
    pub message: String,
}

/// Where a request slot stands. "Pending" is the absence of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestState {
    /// The submit intent is flushed and the POST is (about to be) sent. Found on
    /// resume, it means the POST may or may not have reached the Horde.
    Submitting {
        /// Which attempt this is, from 1.
        attempt: u32,
        /// Images asked for in this submit (the slot's missing images).
        n: u32,
        /// When the intent was written.
        since_ms: u64,
    },
    /// The Horde accepted the request; its id is flushed before the first poll.
    Submitted {
        /// The Horde request id.
        horde_id: String,
        /// Images asked for in this submit.
        n: u32,
        /// When the Horde answered.
        submitted_ms: u64,
    },
    /// Every image of the slot is durable on disk.
    Done,
    /// The slot gave up; no further attempts.
    Failed {
        /// The failure class.
        class: String,
        /// A human-readable message.
        message: String,
    },
    /// The request was cancelled on the Horde (run cancelled or interrupted).
    Cancelled {
        /// The Horde request id that was cancelled.
        horde_id: String,
        /// When the cancel was sent.
        cancelled_ms: u64,
    },
}

impl RequestState {
    /// Submitting or Submitted: the Horde may be working on this slot.
    pub fn is_in_flight(&self) -> bool {
        matches!(
            self,
            RequestState::Submitting { .. } | RequestState::Submitted { .. }
        )
    }

    /// The Horde request id this state refers to, if any.
    pub fn horde_id(&self) -> Option<&str> {
        match self {
            RequestState::Submitted { horde_id, .. } | RequestState::Cancelled { horde_id, .. } => {
                Some(horde_id)
            }
            _ => None,
        }
    }

    /// A short lowercase name: "submitting", "submitted", "done", "failed", "cancelled".
    pub fn name(&self) -> &'static str {
        match self {
            RequestState::Submitting { .. } => "submitting",
            RequestState::Submitted { .. } => "submitted",
            RequestState::Done => "done",
            RequestState::Failed { .. } => "failed",
            RequestState::Cancelled { .. } => "cancelled",
        }
    }
}

/// The ledger's record of one request slot: images `[first_index, first_index + n)` of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema: u32,
    /// The job this slot belongs to.
    pub job_key: String,
    /// The slot number within the job.
    pub slot: u32,
    /// The job-wide index of the slot's first image.
    pub first_index: u32,
    /// How many images the slot covers (≤ the Horde's max `n`).
    pub n: u32,
    /// Where the slot stands.
    pub state: RequestState,
    /// Submits made so far.
    pub attempts: u32,
    /// Image index → image durable on disk.
    pub images: BTreeMap<u32, SavedImage>,
    /// Image index → generation id chosen for it whose files are not durable yet.
    /// Written before the files, so a crash in between resolves to the same names.
    pub assigned: BTreeMap<u32, String>,
    /// Kudos the Horde charged for this slot, over all attempts.
    pub kudos_charged: f64,
    /// When the record was first written.
    pub created_ms: u64,
    /// When the record was last changed.
    pub updated_ms: u64,
    /// The most recent error, kept after a successful retry for the audit trail.
    pub last_error: Option<RecordedError>,
    /// Every Horde id this slot ever had, oldest first.
    pub horde_ids: Vec<String>,
    /// The fingerprint of the key that made the latest submit (never the key
    /// itself). Absent in records from before key pools: the run's single key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<String>,
    /// The seed the latest submit asked for (its first image's; the others
    /// follow with `seed_variation`), chosen by the client and durable before
    /// the POST, so that a request whose answer was lost is recognised by its
    /// images' seeds among other clients' requests on the same key. Absent
    /// in records from before, and when the Horde chose the seeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_seed: Option<u64>,
    /// Image index → what `horde-batch reroll` decided for an image it set
    /// aside. Absent when no image of the slot was rerolled, and in records
    /// from before rerolls were kept here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rerolls: BTreeMap<u32, Reroll>,
}

/// An image `horde-batch reroll` set aside, and how it is made again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reroll {
    /// The generation that was rejected. While the record still lists it as
    /// saved, its file is gone because of the reroll, not deleted by hand.
    pub rejected_generation: String,
    /// The seed to ask for this image with in place of the job's; it stays
    /// the image's seed once made (a remade file keeps it). `None` keeps the
    /// job's seed: random seeds, or `reroll --keep-seed` of a first reroll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

impl RequestRecord {
    /// A fresh record for the first submit of a slot: state `Submitting { attempt: 1 }`.
    pub fn first_attempt(key: &RequestKey, first_index: u32, n: u32, now_ms: u64) -> RequestRecord {
        RequestRecord {
            schema: SCHEMA_VERSION,
            job_key: key.job_key.clone(),
            slot: key.slot,
            first_index,
            n,
            state: RequestState::Submitting {
                attempt: 1,
                n,
                since_ms: now_ms,
            },
            attempts: 1,
            images: BTreeMap::new(),
            assigned: BTreeMap::new(),
            kudos_charged: 0.0,
            created_ms: now_ms,
            updated_ms: now_ms,
            last_error: None,
            horde_ids: Vec::new(),
            key_fingerprint: None,
            submit_seed: None,
            rerolls: BTreeMap::new(),
        }
    }

    /// The seed `horde-batch reroll` chose for image `index`, if it chose one.
    pub fn reroll_seed(&self, index: u32) -> Option<&str> {
        self.rerolls.get(&index)?.seed.as_deref()
    }

    /// Whether the saved image `index` is the one a reroll set aside.
    pub fn is_rerolled(&self, index: u32, generation_id: &str) -> bool {
        self.rerolls
            .get(&index)
            .is_some_and(|reroll| reroll.rejected_generation == generation_id)
    }

    /// The key this record is stored under.
    pub fn key(&self) -> RequestKey {
        RequestKey::new(self.job_key.clone(), self.slot)
    }

    /// See [`RequestState::is_in_flight`].
    pub fn is_in_flight(&self) -> bool {
        self.state.is_in_flight()
    }

    /// See [`RequestState::horde_id`].
    pub fn horde_id(&self) -> Option<&str> {
        self.state.horde_id()
    }

    /// The file names of the saved images, in index order.
    pub fn file_names(&self) -> Vec<String> {
        self.images.values().map(|i| i.file_name.clone()).collect()
    }

    /// The slot's image indices that are not yet durable on disk, ascending.
    pub fn missing_indices(&self) -> Vec<u32> {
        let end = self.first_index.saturating_add(self.n);
        (self.first_index..end)
            .filter(|index| !self.images.contains_key(index))
            .collect()
    }

    /// Starts another submit of `n` images: counts the attempt and moves to
    /// `Submitting`. Returns the attempt number.
    pub fn begin_attempt(&mut self, n: u32, now_ms: u64) -> u32 {
        self.attempts = self.attempts.saturating_add(1);
        self.transition(
            RequestState::Submitting {
                attempt: self.attempts,
                n,
                since_ms: now_ms,
            },
            now_ms,
        );
        self.attempts
    }

    /// Moves to `state`, stamping `updated_ms`, remembering any new Horde id in
    /// `horde_ids` and a failure in `last_error`.
    pub fn transition(&mut self, state: RequestState, now_ms: u64) {
        if let Some(id) = state.horde_id() {
            if !self.horde_ids.iter().any(|known| known == id) {
                self.horde_ids.push(id.to_owned());
            }
        }
        if let RequestState::Failed { class, message } = &state {
            self.last_error = Some(RecordedError {
                class: class.clone(),
                message: message.clone(),
            });
        }
        self.state = state;
        self.updated_ms = now_ms;
    }

    /// Records that image `index` is durable on disk (and no longer merely assigned).
    pub fn save_image(&mut self, index: u32, image: SavedImage, now_ms: u64) {
        self.assigned.remove(&index);
        self.images.insert(index, image);
        self.updated_ms = now_ms;
    }
}

/// Facts about the runs that used a state directory, stored apart from the records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Always [`SCHEMA_VERSION`] when written by this build.
    pub schema: u32,
    /// The horde-batch version of the latest run.
    pub tool_version: String,
    /// The manifest's path as given (opaque to the store).
    pub manifest_path: String,
    /// The manifest's name (opaque to the store).
    pub manifest_name: String,
    /// When the first run started.
    pub first_started_ms: u64,
    /// When the latest run started.
    pub last_started_ms: u64,
    /// How many runs have started on this state directory.
    pub run_count: u32,
}

impl RunMeta {
    /// The metadata after one more run starts: a fresh `RunMeta` if `previous` is
    /// `None`, else `previous` with the latest version, manifest and start time.
    pub fn next_run(
        previous: Option<RunMeta>,
        tool_version: &str,
        manifest_path: &str,
        manifest_name: &str,
        now_ms: u64,
    ) -> RunMeta {
        let (first_started_ms, run_count) = match previous {
            Some(previous) => (
                previous.first_started_ms,
                previous.run_count.saturating_add(1),
            ),
            None => (now_ms, 1),
        };
        RunMeta {
            schema: SCHEMA_VERSION,
            tool_version: tool_version.to_owned(),
            manifest_path: manifest_path.to_owned(),
            manifest_name: manifest_name.to_owned(),
            first_started_ms,
            last_started_ms: now_ms,
            run_count,
        }
    }
}

/// A summary of the ledger, for `status` and the final report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateCounts {
    /// Slots whose submit intent is written but whose answer is not.
    pub submitting: u64,
    /// Slots with a Horde id, not yet done.
    pub submitted: u64,
    /// Slots whose images are all on disk.
    pub done: u64,
    /// Slots that gave up.
    pub failed: u64,
    /// Slots cancelled on the Horde.
    pub cancelled: u64,
    /// Images durable on disk, over all slots.
    pub images_saved: u64,
    /// Kudos charged, over all slots.
    pub kudos_charged: f64,
}

impl StateCounts {
    /// Slots with a record (every state).
    pub fn records(&self) -> u64 {
        self.submitting + self.submitted + self.done + self.failed + self.cancelled
    }

    /// Slots the Horde may be working on.
    pub fn in_flight(&self) -> u64 {
        self.submitting + self.submitted
    }

    pub(crate) fn add(&mut self, record: &RequestRecord) {
        let counter = match record.state {
            RequestState::Submitting { .. } => &mut self.submitting,
            RequestState::Submitted { .. } => &mut self.submitted,
            RequestState::Done => &mut self.done,
            RequestState::Failed { .. } => &mut self.failed,
            RequestState::Cancelled { .. } => &mut self.cancelled,
        };
        *counter += 1;
        self.images_saved += record.images.len() as u64;
        self.kudos_charged += record.kudos_charged;
    }
}

/// Why a stored value could not be decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// Not the JSON we expect.
    Json(serde_json::Error),
    /// Well-formed, but from a schema this build does not know.
    UnknownSchema(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Json(error) => write!(f, "not a valid record: {error}"),
            DecodeError::UnknownSchema(found) => write!(
                f,
                "schema version {found} is not supported (this horde-batch reads version {SCHEMA_VERSION})"
            ),
        }
    }
}

/// Values stored as versioned JSON.
pub(crate) trait Versioned: Serialize + for<'de> Deserialize<'de> {
    fn schema(&self) -> u32;

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("ledger values hold only strings, integers, floats and integer-keyed maps, which always serialize")
    }

    /// Decodes a stored value. The common case costs one parse; only a value that
    /// fails to parse is parsed again to tell an unknown schema from garbage.
    fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct SchemaOnly {
            schema: u32,
        }
        match serde_json::from_slice::<Self>(raw) {
            Ok(value) if value.schema() == SCHEMA_VERSION => Ok(value),
            Ok(value) => Err(DecodeError::UnknownSchema(value.schema())),
            Err(error) => match serde_json::from_slice::<SchemaOnly>(raw) {
                Ok(SchemaOnly { schema }) if schema != SCHEMA_VERSION => {
                    Err(DecodeError::UnknownSchema(schema))
                }
                _ => Err(DecodeError::Json(error)),
            },
        }
    }
}

/// Whether a stored record is in flight, read without building the record: a
/// resumed run asks this of every record before its first submit. `None` if the
/// value is not a readable current record; decode it fully to learn why.
pub(crate) fn probe_in_flight(raw: &[u8]) -> Option<bool> {
    #[derive(Deserialize)]
    struct RecordProbe<'a> {
        schema: u32,
        #[serde(borrow)]
        state: StateProbe<'a>,
    }
    #[derive(Deserialize)]
    struct StateProbe<'a> {
        #[serde(borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    let probe: RecordProbe<'_> = serde_json::from_slice(raw).ok()?;
    if probe.schema != SCHEMA_VERSION {
        return None;
    }
    // The names `RequestState`'s serde attributes give the in-flight variants.
    Some(matches!(&*probe.state.kind, "submitting" | "submitted"))
}

impl Versioned for RequestRecord {
    fn schema(&self) -> u32 {
        self.schema
    }
}

impl Versioned for RunMeta {
    fn schema(&self) -> u32 {
        self.schema
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema-1 record as this format was first written. If this stops
    /// parsing, existing ledgers stop parsing: bump SCHEMA_VERSION and migrate.
    const SCHEMA_1_FIXTURE: &str = r#"{
        "schema": 1, "job_key": "0123456789abcdef", "slot": 2, "first_index": 40, "n": 3,
        "state": {"kind": "submitted", "horde_id": "5c5e8d1e-0000-4000-8000-000000000000", "n": 2, "submitted_ms": 1700000000500},
        "attempts": 2,
        "images": {"40": {"generation_id": "g-40", "file_name": "cats-40.webp", "censored": false}},
        "assigned": {"41": "g-41"},
        "kudos_charged": 12.5, "created_ms": 1700000000000, "updated_ms": 1700000000500,
        "last_error": {"class": "expired", "message": "RequestNotFound"},
        "horde_ids": ["old-id", "5c5e8d1e-0000-4000-8000-000000000000"]
    }"#;

    #[test]
    fn schema_1_fixture_still_parses() {
        let record = RequestRecord::decode(SCHEMA_1_FIXTURE.as_bytes()).unwrap();
        assert_eq!(record.key(), RequestKey::new("0123456789abcdef", 2));
        assert_eq!(
            record.horde_id(),
            Some("5c5e8d1e-0000-4000-8000-000000000000")
        );
        assert_eq!(record.missing_indices(), vec![41, 42]);
        assert_eq!(record.assigned.get(&41).map(String::as_str), Some("g-41"));
        assert!(record.is_in_flight());
        assert_eq!(RequestRecord::decode(&record.encode()).unwrap(), record);
        assert!(
            record.rerolls.is_empty(),
            "a record from before rerolls has none"
        );
    }

    #[test]
    fn a_reroll_round_trips_and_is_left_out_when_there_is_none() {
        let mut record = RequestRecord::decode(SCHEMA_1_FIXTURE.as_bytes()).unwrap();
        assert!(!String::from_utf8(record.encode())
            .unwrap()
            .contains("rerolls"));
        record.rerolls.insert(
            40,
            Reroll {
                rejected_generation: "g-40".into(),
                seed: Some("123".into()),
            },
        );
        let back = RequestRecord::decode(&record.encode()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.reroll_seed(40), Some("123"));
        assert_eq!(back.reroll_seed(41), None);
        assert!(back.is_rerolled(40, "g-40"));
        assert!(!back.is_rerolled(40, "g-made-again"));
    }

    #[test]
    fn the_in_flight_probe_agrees_with_the_decoded_state() {
        let key = RequestKey::new("j", 0);
        let states = [
            RequestState::Submitting {
                attempt: 1,
                n: 1,
                since_ms: 0,
            },
            RequestState::Submitted {
                horde_id: "h".into(),
                n: 1,
                submitted_ms: 0,
            },
            RequestState::Done,
            RequestState::Failed {
                class: "c".into(),
                message: "kind: submitted".into(),
            },
            RequestState::Cancelled {
                horde_id: "h".into(),
                cancelled_ms: 0,
            },
        ];
        for state in states {
            let mut record = RequestRecord::first_attempt(&key, 0, 1, 0);
            record.transition(state, 1);
            assert_eq!(
                probe_in_flight(&record.encode()),
                Some(record.is_in_flight()),
                "{:?}",
                record.state
            );
        }
        assert_eq!(
            probe_in_flight(br#"{"schema": 2, "state": {"kind": "done"}}"#),
            None
        );
        assert_eq!(probe_in_flight(b"[]"), None);
    }

    #[test]
    fn unknown_schema_is_reported_even_when_fields_changed() {
        let newer = r#"{"schema": 7, "entirely": "different"}"#;
        assert!(matches!(
            RequestRecord::decode(newer.as_bytes()),
            Err(DecodeError::UnknownSchema(7))
        ));
        let same_fields = SCHEMA_1_FIXTURE.replace("\"schema\": 1", "\"schema\": 2");
        assert!(matches!(
            RequestRecord::decode(same_fields.as_bytes()),
            Err(DecodeError::UnknownSchema(2))
        ));
        assert!(matches!(
            RequestRecord::decode(b"{not json"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            RequestRecord::decode(br#"{"schema": 1}"#),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn keys_encode_sortably_and_decode_back() {
        let key = RequestKey::new("abc", 7);
        assert_eq!(key.encode(), "abc/000007");
        assert_eq!(RequestKey::decode(key.encode().as_bytes()), Some(key));
        assert!(RequestKey::new("abc", 9).encode() < RequestKey::new("abc", 10).encode());
        assert_eq!(
            RequestKey::decode(b"a/b/000001"),
            Some(RequestKey::new("a/b", 1))
        );
        for bad in [
            &b"abc"[..],
            b"abc/",
            b"/000001",
            b"abc/12x",
            b"abc/99999999999",
            b"\xff/1",
        ] {
            assert_eq!(RequestKey::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn missing_indices_do_not_overflow_at_the_top_of_the_range() {
        let key = RequestKey::new("j", 0);
        let mut record = RequestRecord::first_attempt(&key, u32::MAX - 1, 5, 0);
        assert_eq!(record.missing_indices(), vec![u32::MAX - 1]);
        record.first_index = 10;
        record.n = 0;
        assert!(record.missing_indices().is_empty());
    }

    #[test]
    fn transitions_keep_the_audit_trail() {
        let key = RequestKey::new("j", 0);
        let mut record = RequestRecord::first_attempt(&key, 0, 4, 100);
        assert_eq!(record.attempts, 1);
        record.transition(
            RequestState::Submitted {
                horde_id: "h1".into(),
                n: 4,
                submitted_ms: 110,
            },
            110,
        );
        record.assigned.insert(0, "g0".into());
        record.save_image(
            0,
            SavedImage {
                generation_id: "g0".into(),
                file_name: "j-0.webp".into(),
                censored: false,
            },
            120,
        );
        assert!(record.assigned.is_empty());
        assert_eq!(record.missing_indices(), vec![1, 2, 3]);
        assert_eq!(record.begin_attempt(3, 130), 2);
        assert_eq!(
            record.state,
            RequestState::Submitting {
                attempt: 2,
                n: 3,
                since_ms: 130
            }
        );
        record.transition(
            RequestState::Submitted {
                horde_id: "h2".into(),
                n: 3,
                submitted_ms: 140,
            },
            140,
        );
        record.transition(
            RequestState::Cancelled {
                horde_id: "h2".into(),
                cancelled_ms: 150,
            },
            150,
        );
        assert_eq!(record.horde_ids, vec!["h1", "h2"]);
        record.transition(
            RequestState::Failed {
                class: "permanent".into(),
                message: "bad prompt".into(),
            },
            160,
        );
        assert_eq!(record.last_error.as_ref().unwrap().class, "permanent");
        assert_eq!(record.updated_ms, 160);
        assert_eq!(record.created_ms, 100);
    }

    #[test]
    fn run_meta_counts_runs_and_keeps_the_first_start() {
        let first = RunMeta::next_run(None, "0.1.0", "m.yaml", "animals", 1_000);
        assert_eq!((first.run_count, first.first_started_ms), (1, 1_000));
        let second = RunMeta::next_run(Some(first), "0.2.0", "m.yaml", "animals", 2_000);
        assert_eq!(second.run_count, 2);
        assert_eq!(second.first_started_ms, 1_000);
        assert_eq!(second.last_started_ms, 2_000);
        assert_eq!(second.tool_version, "0.2.0");
        assert_eq!(RunMeta::decode(&second.encode()).unwrap(), second);
    }
}
