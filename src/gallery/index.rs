//! Reading `metadata.jsonl` back as [`IndexRow`]s, exactly as the dataset
//! writer (`output::sink`, `Dataset::with_columns`) wrote them.
//!
//! The writer serialises one `IndexRow` with its labels and extra columns
//! flattened beside the built-in columns, and, when the manifest renames the
//! caption column (`output.metadata.caption`), leaves `text` out and puts
//! the prompt under the new name. `text` is then free for a label (a rows
//! column named `text`, `null` in the rows of jobs without it), so a plain
//! `serde_json::from_str::<IndexRow>` would take that label for the caption
//! and refuse every row where it is `null`. This file undoes the rename
//! before handing the row to `IndexRow`'s own `Deserialize`. It must not
//! read any other file, or write anything.

use serde_json::Value;

use crate::output::IndexRow;

/// The caption column's name when the manifest does not rename it.
const DEFAULT_CAPTION: &str = "text";

/// One line of `metadata.jsonl` as the writer meant it: the prompt in
/// [`IndexRow::text`], every label (also one named `text`) in
/// [`IndexRow::columns`]. `None` for a torn or foreign line.
pub(super) fn parse_row(line: &str, caption_column: &str) -> Option<IndexRow> {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    if caption_column.is_empty() || caption_column == DEFAULT_CAPTION {
        return serde_json::from_value(Value::Object(fields)).ok();
    }
    // With a renamed caption, `text` can only be a label or extra column.
    let label = fields.remove(DEFAULT_CAPTION);
    let caption = fields.remove(caption_column);
    let mut row: IndexRow = serde_json::from_value(Value::Object(fields)).ok()?;
    if let Some(Value::String(caption)) = caption {
        row.text = caption;
    }
    if let Some(label) = label {
        row.columns.insert(DEFAULT_CAPTION.to_owned(), label);
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(extra: Value) -> String {
        let mut row = json!({
            "file_name": "a/b.webp", "negative_prompt": "", "job": "a", "job_key": "k",
            "image_index": 0, "model": "m", "seed": "1", "width": 64, "height": 64, "steps": 10,
            "cfg_scale": 7.0, "sampler_name": "k_euler", "censored": false,
            "horde_request_id": "r", "generation_id": "g", "loras": "", "post_processing": "",
        });
        for (name, value) in extra.as_object().unwrap() {
            row[name] = value.clone();
        }
        row.to_string()
    }

    #[test]
    fn a_renamed_caption_is_the_prompt_and_a_text_label_stays_a_label() {
        let row = parse_row(&line(json!({"prompt": "a cat", "text": "oil"})), "prompt").unwrap();
        assert_eq!(row.text, "a cat");
        assert_eq!(row.columns.get("text"), Some(&json!("oil")));
        assert!(!row.columns.contains_key("prompt"));
        // A job without the label: `text` is null, and the row still reads.
        let row = parse_row(&line(json!({"prompt": "a cube", "text": null})), "prompt").unwrap();
        assert_eq!(row.text, "a cube");
        assert_eq!(row.columns.get("text"), Some(&Value::Null));
    }

    #[test]
    fn the_default_caption_and_damaged_lines() {
        let row = parse_row(&line(json!({"text": "a cat", "mood": "sad"})), "text").unwrap();
        assert_eq!(row.text, "a cat");
        assert_eq!(row.columns.get("mood"), Some(&json!("sad")));
        assert!(parse_row("{\"file_name\": \"a.webp\"", "text").is_none());
        assert!(parse_row("[1, 2]", "prompt").is_none());
    }
}
