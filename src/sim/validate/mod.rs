//! Validation of `POST /v2/generate/async` bodies, in the layers the real
//! server has: the flask-restx JSON-schema check (400 with an `errors` map
//! keyed by field path, jsonschema's Python-flavoured messages, no `rc`),
//! the reqparse defaults that turn the body into a request, then the
//! source-image rules of its `validate()` and of activation, with the real
//! rc codes and messages.
//!
//! - `input`: the typed [`GenerateInput`] and [`parse_generate`];
//! - `schema`: the field tables; `jsonschema`: the checker; `python_repr`:
//!   Python's `repr()` for its messages;
//! - `sources`: [`check_sources`] and [`decode_sources`];
//! - `interrogate`: the body of `POST /v2/interrogate/async` ([`parse_interrogate`]).
//!
//! Rule: the simulator is never kinder than the real server. The rc-style
//! checks that run later on the real server, or need a user or the queue
//! (TooManyLoras, KudosUpfront, ...), live in `state`.

mod input;
mod interrogate;
mod jsonschema;
mod python_repr;
mod schema;
mod sources;

pub(crate) use input::{parse_generate, GenParams, GenerateInput};
pub(crate) use interrogate::{missing_source_image, parse_interrogate, InterrogateInput};
pub(crate) use schema::KNOWN_UPSCALERS;
pub(crate) use sources::{check_sources, decode_sources};
