//! The typed AI Horde v2 client: request and response types, typed errors with
//! one failure classification, and an HTTP client with one method per endpoint.
//!
//! This module speaks the protocol and nothing more. It never retries, sleeps,
//! paces or persists; the scheduler does that, driven by [`HordeError::class`],
//! [`HordeError::retry_after`] and [`HordeError::outcome_unknown`]. It never logs
//! or prints the API key (see [`ApiKey`]), never follows a redirect, and takes
//! the key out of anything a server sends back (see [`REDACTED`]).
//!
//! Protocol facts and their sources: `docs/horde-api.md`.

mod alchemy;
mod client;
mod config;
mod error;
mod time;
mod types;

pub use alchemy::{
    AlchemistSummary, FormState, FormStatus, InterrogationAccepted, InterrogationForm,
    InterrogationRequest, InterrogationStatus,
};
pub use client::{HordeClient, MAX_API_BODY_BYTES};
pub use config::{
    ApiKey, ClientConfig, DEFAULT_BASE_URL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONTACT,
    DEFAULT_READ_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{
    ClientBuildError, Endpoint, FailureClass, HordeError, HordeErrorKind, Operation,
    TransportStage, MAINTENANCE_RETRY_AFTER, REDACTED,
};
pub use time::{HordeTime, TimeParseError};
pub use types::{
    ActiveGenerations, Base64Image, ExtraSourceImage, GenMetadata, Generation, GenerationParams,
    GenerationRequest, Heartbeat, ImageSource, ModelStatus, RequestCheck, RequestStatus,
    SharedKeyDetails, SharedKeyInput, SubmitAccepted, UserDetails, Warning, WorkerSummary,
    NEGATIVE_PROMPT_SEPARATOR, NO_AVAILABLE_WORKER,
};
