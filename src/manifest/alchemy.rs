//! Alchemy as a manifest asks for it: the Horde's alchemy forms (caption,
//! nsfw, interrogation, the post-processors, …), a job's resolved `alchemy:`
//! (`AlchemySpec`), where captions come from (`CaptionFrom`), what each form
//! costs, and the `metadata.jsonl` columns alchemy results take.
//!
//! The names, costs and behaviour follow the real server
//! (docs/horde-api.md §10 (alchemy)). Pure values and arithmetic: this file
//! checks nothing in a manifest (`compile::alchemy` does, with positions),
//! talks no HTTP and writes no files.

use std::fmt;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::layout::ALCHEMY_COLUMNS;

/// One alchemy form, by the Horde's name (its enum, spelt exactly).
///
/// Only `parse` and `ALL` make one, so every value is a form the Horde knows.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AlchemyForm(&'static str);

/// The forms that answer with text or values (inline in the status), not an image.
const TEXT_FORMS: &[&str] = &[
    "caption",
    "interrogation",
    "nsfw",
    "vectorize",
    "palette",
    "describe",
    "aesthetic",
];

impl AlchemyForm {
    /// A caption of the image (`{"caption": "…"}`).
    pub const CAPTION: AlchemyForm = AlchemyForm("caption");
    /// Interrogation: tags with confidences (`{"interrogation": {"tags": […], …}}`).
    pub const INTERROGATION: AlchemyForm = AlchemyForm("interrogation");
    /// Whether the image is NSFW (`{"nsfw": bool}`).
    pub const NSFW: AlchemyForm = AlchemyForm("nsfw");

    /// Every form the Horde accepts, text forms first, in the Horde's order.
    pub const ALL: &'static [AlchemyForm] = &[
        AlchemyForm("caption"),
        AlchemyForm("interrogation"),
        AlchemyForm("nsfw"),
        AlchemyForm("vectorize"),
        AlchemyForm("palette"),
        AlchemyForm("describe"),
        AlchemyForm("aesthetic"),
        AlchemyForm("GFPGAN"),
        AlchemyForm("RealESRGAN_x4plus"),
        AlchemyForm("RealESRGAN_x2plus"),
        AlchemyForm("RealESRGAN_x4plus_anime_6B"),
        AlchemyForm("NMKD_Siax"),
        AlchemyForm("4x_AnimeSharp"),
        AlchemyForm("CodeFormers"),
        AlchemyForm("strip_background"),
        AlchemyForm("4xNomos8kSC"),
        AlchemyForm("4xLSDIRplus"),
        AlchemyForm("4xNomosWebPhoto_RealPLKSR"),
        AlchemyForm("4xNomos2_realplksr_dysample"),
        AlchemyForm("4xNomos2_hq_dat2"),
        AlchemyForm("2xModernSpanimationV1"),
        AlchemyForm("GFPGANv1.3"),
        AlchemyForm("RestoreFormer"),
    ];

    /// The form named exactly `name` (the Horde's names are case-sensitive).
    pub fn parse(name: &str) -> Option<AlchemyForm> {
        Self::ALL.iter().copied().find(|form| form.0 == name)
    }

    /// The form a misspelt `name` most likely meant: one that differs only
    /// in case first, else the closest by Jaro-Winkler similarity (if close).
    pub fn closest(name: &str) -> Option<AlchemyForm> {
        if let Some(form) = Self::ALL.iter().find(|f| f.0.eq_ignore_ascii_case(name)) {
            return Some(*form);
        }
        let name = name.to_ascii_lowercase();
        Self::ALL
            .iter()
            .map(|f| (strsim::jaro_winkler(&name, &f.0.to_ascii_lowercase()), *f))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, form)| form)
    }

    /// The Horde's name of the form.
    pub fn name(self) -> &'static str {
        self.0
    }

    /// Whether the form answers with a new image (an upscale, a face fix, a
    /// background removed) rather than text.
    pub fn is_post_processor(self) -> bool {
        !TEXT_FORMS.contains(&self.0)
    }

    /// Output size factor of a post-processor: 2 for the ×2 upscalers, 4 for
    /// the ×4 ones (their names say x2/2x or x4/4x; `NMKD_Siax` is a ×4
    /// model whose name does not), 1 otherwise (face fixers, background
    /// removal, text forms).
    pub fn scale(self) -> u32 {
        match self.0 {
            "NMKD_Siax" => 4,
            name if name.contains("x4") || name.contains("4x") => 4,
            name if name.contains("x2") || name.contains("2x") => 2,
            _ => 1,
        }
    }

    /// Kudos the Horde charges for this form when it is delivered, on a
    /// source of `width × height` (docs/horde-api.md §10 (alchemy)): the
    /// form's own kudos (1 for a text form, 3 for interrogation, 3 per
    /// 512×512 tile for a post-processor) + 1, + 1 more when `slow_workers`
    /// (the Horde's default) is on.
    pub fn kudos(self, width: u32, height: u32, slow_workers: bool) -> u32 {
        let form_kudos: u64 = if self.is_post_processor() {
            let tiles = u64::from(width.div_ceil(512)) * u64::from(height.div_ceil(512));
            3 * tiles
        } else if self == Self::INTERROGATION {
            3
        } else {
            1
        };
        let total = form_kudos + 1 + u64::from(slow_workers);
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// The `metadata.jsonl` column this form's result fills: `caption`,
    /// `nsfw`, `tags` (interrogation), the form's own name for the other text
    /// forms; `None` for a post-processor, whose result is an image of its own.
    pub fn column(self) -> Option<&'static str> {
        match self.0 {
            "interrogation" => Some("tags"),
            _ if self.is_post_processor() => None,
            name => Some(name),
        }
    }
}

impl fmt::Display for AlchemyForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for AlchemyForm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for AlchemyForm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        AlchemyForm::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown alchemy form `{name}`")))
    }
}

impl JsonSchema for AlchemyForm {
    fn schema_name() -> Cow<'static, str> {
        "AlchemyForm".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
        json_schema!({
            "description": "An alchemy form, as the Horde names it: a text form (caption, interrogation, nsfw, vectorize, palette, describe, aesthetic) or a post-processor, whose result is an image.",
            "enum": names
        })
    }
}

/// A job's alchemy, resolved: the forms run on every image it saves, each
/// once, in the order written. Never empty (no forms is no `AlchemySpec`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlchemySpec {
    pub forms: Vec<AlchemyForm>,
    /// Whether slow alchemists may serve the forms (the Horde's default,
    /// true); off costs 1 kudo less per form.
    pub slow_workers: bool,
}

impl AlchemySpec {
    /// Kudos the Horde charges for every form on one image of `width × height`.
    pub fn kudos(&self, width: u32, height: u32) -> u32 {
        self.forms.iter().fold(0u32, |total, form| {
            total.saturating_add(form.kudos(width, height, self.slow_workers))
        })
    }

    /// Whether the spec runs `form`.
    pub fn contains(&self, form: AlchemyForm) -> bool {
        self.forms.contains(&form)
    }

    /// The forms that answer with text or values, in order.
    pub fn text_forms(&self) -> impl Iterator<Item = AlchemyForm> + '_ {
        self.forms
            .iter()
            .copied()
            .filter(|f| !f.is_post_processor())
    }

    /// The forms that answer with an image (`<name>.<form>.webp`), in order.
    pub fn post_processors(&self) -> impl Iterator<Item = AlchemyForm> + '_ {
        self.forms.iter().copied().filter(|f| f.is_post_processor())
    }
}

/// Where an image's caption (the `metadata.jsonl` caption column and the
/// `.txt` caption file) comes from: `output.metadata.caption_from`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CaptionFrom {
    /// The resolved prompt (the default).
    #[default]
    Prompt,
    /// The alchemy `caption` form's result; every job must run `caption`, and the prompt
    /// moves to a `prompt` column.
    Alchemy,
}

/// The `metadata.jsonl` columns alchemy adds when a manifest runs `forms`:
/// `caption`, `nsfw`, `tags`, `alchemy_of` and `alchemy_form` always, the
/// name of every other text form run (e.g. `aesthetic`), and `prompt` when
/// captions come from alchemy. In that order, each once.
pub fn alchemy_columns(
    forms: impl IntoIterator<Item = AlchemyForm>,
    caption_from: CaptionFrom,
) -> Vec<&'static str> {
    let mut columns: Vec<&'static str> = ALCHEMY_COLUMNS.to_vec();
    for column in forms.into_iter().filter_map(AlchemyForm::column) {
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    if caption_from == CaptionFrom::Alchemy {
        columns.push("prompt");
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(name: &str) -> AlchemyForm {
        AlchemyForm::parse(name).unwrap()
    }

    #[test]
    fn every_form_parses_to_itself_and_only_exact_names_parse() {
        assert_eq!(AlchemyForm::ALL.len(), 23);
        for f in AlchemyForm::ALL {
            assert_eq!(AlchemyForm::parse(f.name()), Some(*f));
        }
        assert_eq!(AlchemyForm::parse("Caption"), None);
        assert_eq!(AlchemyForm::parse("gfpgan"), None);
        assert_eq!(AlchemyForm::parse(""), None);
    }

    #[test]
    fn a_misspelt_name_suggests_a_case_match_first() {
        assert_eq!(AlchemyForm::closest("gfpgan"), Some(form("GFPGAN")));
        assert_eq!(AlchemyForm::closest("CAPTION"), Some(AlchemyForm::CAPTION));
        assert_eq!(AlchemyForm::closest("capton"), Some(AlchemyForm::CAPTION));
        assert_eq!(
            AlchemyForm::closest("realesrgan_x2"),
            Some(form("RealESRGAN_x2plus"))
        );
        assert_eq!(AlchemyForm::closest("zzzzzz"), None);
    }

    #[test]
    fn text_forms_and_post_processors_are_told_apart() {
        for name in TEXT_FORMS {
            assert!(!form(name).is_post_processor(), "{name}");
            assert_eq!(form(name).scale(), 1);
        }
        assert_eq!(
            AlchemyForm::ALL
                .iter()
                .filter(|f| f.is_post_processor())
                .count(),
            16
        );
        assert_eq!(form("RealESRGAN_x2plus").scale(), 2);
        assert_eq!(form("2xModernSpanimationV1").scale(), 2);
        assert_eq!(form("RealESRGAN_x4plus").scale(), 4);
        assert_eq!(form("RealESRGAN_x4plus_anime_6B").scale(), 4);
        assert_eq!(form("4x_AnimeSharp").scale(), 4);
        assert_eq!(form("4xNomos2_hq_dat2").scale(), 4);
        assert_eq!(form("NMKD_Siax").scale(), 4);
        for name in [
            "GFPGAN",
            "GFPGANv1.3",
            "CodeFormers",
            "RestoreFormer",
            "strip_background",
        ] {
            assert_eq!(form(name).scale(), 1, "{name}");
        }
    }

    /// The examples of docs/horde-api.md §10 (alchemy), costs table.
    #[test]
    fn kudos_follow_the_servers_ledger() {
        let x2 = form("RealESRGAN_x2plus");
        assert_eq!(x2.kudos(512, 512, true), 5, "1 tile");
        assert_eq!(x2.kudos(64, 64, true), 5, "a part tile is a tile");
        assert_eq!(x2.kudos(1100, 600, true), 20, "3 × 2 = 6 tiles");
        assert_eq!(x2.kudos(1100, 600, false), 19, "3·tiles + 1");
        assert_eq!(x2.kudos(513, 512, false), 7, "2 tiles");
        assert_eq!(AlchemyForm::CAPTION.kudos(512, 512, true), 3);
        assert_eq!(AlchemyForm::CAPTION.kudos(4096, 4096, true), 3, "size-free");
        assert_eq!(AlchemyForm::CAPTION.kudos(512, 512, false), 2);
        assert_eq!(AlchemyForm::NSFW.kudos(512, 512, true), 3);
        assert_eq!(form("aesthetic").kudos(512, 512, true), 3);
        assert_eq!(AlchemyForm::INTERROGATION.kudos(512, 512, true), 5);
        assert_eq!(AlchemyForm::INTERROGATION.kudos(512, 512, false), 4);
        assert_eq!(x2.kudos(u32::MAX, u32::MAX, true), u32::MAX, "saturates");
    }

    #[test]
    fn a_spec_costs_the_sum_of_its_forms() {
        let spec = AlchemySpec {
            forms: vec![
                AlchemyForm::CAPTION,
                AlchemyForm::NSFW,
                form("RealESRGAN_x2plus"),
            ],
            slow_workers: true,
        };
        assert_eq!(spec.kudos(512, 512), 3 + 3 + 5);
        assert_eq!(spec.kudos(1100, 600), 3 + 3 + 20);
        let fast = AlchemySpec {
            slow_workers: false,
            ..spec.clone()
        };
        assert_eq!(fast.kudos(512, 512), 2 + 2 + 4);
        assert_eq!(spec.text_forms().count(), 2);
        assert_eq!(
            spec.post_processors().collect::<Vec<_>>(),
            [form("RealESRGAN_x2plus")]
        );
    }

    #[test]
    fn forms_serialize_as_their_names() {
        let spec = AlchemySpec {
            forms: vec![form("4x_AnimeSharp"), AlchemyForm::CAPTION],
            slow_workers: false,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            json,
            r#"{"forms":["4x_AnimeSharp","caption"],"slow_workers":false}"#
        );
        assert_eq!(serde_json::from_str::<AlchemySpec>(&json).unwrap(), spec);
        let bad = serde_json::from_str::<AlchemyForm>(r#""Caption""#).unwrap_err();
        assert!(
            bad.to_string().contains("unknown alchemy form `Caption`"),
            "{bad}"
        );
    }

    #[test]
    fn columns_are_the_fixed_ones_the_other_text_forms_and_the_prompt() {
        let forms = [
            form("aesthetic"),
            AlchemyForm::CAPTION,
            AlchemyForm::INTERROGATION,
            form("GFPGAN"),
            form("aesthetic"),
        ];
        assert_eq!(
            alchemy_columns(forms, CaptionFrom::Prompt),
            [
                "caption",
                "nsfw",
                "tags",
                "alchemy_of",
                "alchemy_form",
                "aesthetic"
            ]
        );
        assert_eq!(
            alchemy_columns([], CaptionFrom::Alchemy),
            [
                "caption",
                "nsfw",
                "tags",
                "alchemy_of",
                "alchemy_form",
                "prompt"
            ]
        );
    }
}
