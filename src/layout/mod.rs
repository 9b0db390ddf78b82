//! Names in the output folder, shared by `manifest` (which checks a
//! manifest's file names and columns up front) and `output` (which writes
//! them): the filename template, the dataset index's built-in columns and
//! the columns alchemy results take.
//! Below both, so neither depends on the other for them. Pure: no I/O, and
//! must not know the manifest or the writer.

pub mod naming;

pub use naming::{
    check_relative_name, sanitize_value, FilenameTemplate, NameFields, PathEscape, Placeholder,
    TemplateError, MAX_COMPONENT_BYTES, MAX_VALUE_BYTES,
};

/// The built-in columns of `metadata.jsonl`, which labels and extra columns
/// may not be named after (`text` is the caption column's default name).
pub const BUILT_IN_COLUMNS: &[&str] = &[
    "file_name",
    "text",
    "negative_prompt",
    "job",
    "job_key",
    "image_index",
    "model",
    "seed",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "sampler_name",
    "censored",
    "horde_request_id",
    "generation_id",
    "loras",
    "post_processing",
];

/// The `metadata.jsonl` columns of alchemy results, taken whenever a manifest
/// runs alchemy: `caption` (text), `nsfw` (bool), `tags` (interrogation's
/// tags, a list of strings), and on the row of a post-processed image
/// (`<name>.<form>.webp`) `alchemy_of` (the file it was made from) and
/// `alchemy_form` (the post-processor). Other text forms take a column named
/// after the form (`aesthetic`, …), and `prompt` is taken when captions come
/// from alchemy.
pub const ALCHEMY_COLUMNS: &[&str] = &["caption", "nsfw", "tags", "alchemy_of", "alchemy_form"];
