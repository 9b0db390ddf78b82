//! What the engine tells the world, as typed events in the order things
//! happen. The engine sends them and decides nothing from them; `report`
//! folds them into progress bars, JSON progress, `status.json` and the final
//! summary. A closed receiver is fine: events are then dropped.

use tokio::sync::mpsc;

use super::FailureKind;
use crate::horde::FailureClass;

/// Where the engine sends its events.
pub type EventSender = mpsc::UnboundedSender<Event>;

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The run starts: the totals of its plan.
    Started { jobs: u64, images_wanted: u64 },
    /// Images of a job that earlier runs saved.
    SavedBefore { images: u32 },
    /// Jobs that earlier runs finished and their images, counted from the
    /// settled prefix (`prefix`) before those jobs are looked at again.
    SettledBefore { jobs_done: u64, images: u64 },
    /// A submit (`POST`) was sent.
    SubmitSent,
    /// A request is on the Horde and followed from now on.
    Following {
        key: String,
        horde_id: String,
        images: u32,
    },
    /// A `/check` answered.
    Checked { queue_position: u32, wait_time: u32 },
    /// A `/status` was read.
    StatusRead,
    /// An image was downloaded from its URL.
    Downloaded,
    /// An image is on disk (or was already, from an earlier run).
    ImageSaved { already_present: bool },
    /// An image saved by an earlier run is gone from disk; it is made again.
    ImageGone,
    /// Something was not as asked: an image censored or faulted, a request
    /// expired, a job failed…
    Failure(FailureKind),
    /// A call failed and is tried again (after a wait, if `seconds` > 0).
    CallFailed { class: FailureClass, seconds: u64 },
    /// The missing images of a request are submitted again.
    Resubmitting,
    /// A cancel (`DELETE`) was sent.
    CancelSent,
    /// A request is no longer followed (done, cancelled, given up, or stopped).
    Released { key: String },
    /// The Horde charged this many kudos.
    Charged { kudos: f64 },
    /// A job ended: all its images are saved, or it failed.
    JobEnded { done: bool },
}
