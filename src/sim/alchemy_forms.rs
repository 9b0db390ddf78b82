//! The alchemy (interrogation) forms the real server knows, in its enum
//! order, and what follows from a form's name alone: whether it is a
//! post-processor, how much it scales the source, and its form kudos
//! (docs/horde-api.md §10 (alchemy)).
//!
//! Pure data: it must not know requests, users or alchemists.

/// The forms that are not post-processors, in the server's enum order.
const PLAIN_FORMS: &[&str] = &[
    "caption",
    "interrogation",
    "nsfw",
    "vectorize",
    "palette",
    "describe",
    "aesthetic",
];

/// The post-processors, in the server's enum order.
pub(crate) const POST_PROCESSORS: &[&str] = &[
    "GFPGAN",
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
    "CodeFormers",
    "strip_background",
    "4xNomos8kSC",
    "4xLSDIRplus",
    "4xNomosWebPhoto_RealPLKSR",
    "4xNomos2_realplksr_dysample",
    "4xNomos2_hq_dat2",
    "2xModernSpanimationV1",
    "GFPGANv1.3",
    "RestoreFormer",
];

/// Forms no simulated alchemist serves unless `--alchemy-forms` names them
/// (a form nobody serves waits until its request expires, as on the real Horde).
const UNSERVED_BY_DEFAULT: &[&str] = &["vectorize", "palette", "describe"];

/// Side of one post-processing tile.
const TILE_SIDE: u32 = 512;

/// Every form name the server accepts, in its enum order.
pub(crate) fn known_forms() -> impl Iterator<Item = &'static str> {
    PLAIN_FORMS.iter().chain(POST_PROCESSORS).copied()
}

/// Whether the server accepts `name` as a form.
pub(crate) fn is_known_form(name: &str) -> bool {
    known_forms().any(|known| known == name)
}

/// Whether `name` is a post-processor (its result is an image in R2).
pub(crate) fn is_post_processor(name: &str) -> bool {
    POST_PROCESSORS.contains(&name)
}

/// The forms the simulated alchemists serve by default: every known form
/// but vectorize, palette and describe.
pub(crate) fn default_served_forms() -> Vec<String> {
    known_forms()
        .filter(|name| !UNSERVED_BY_DEFAULT.contains(name))
        .map(str::to_owned)
        .collect()
}

/// How many times a post-processor enlarges each side: 2 for names with
/// `x2`/`2x`, 4 for `x4`/`4x`, else 1 (face fixers, background removal).
pub(crate) fn scale_of(name: &str) -> u32 {
    if name.contains("x4") || name.contains("4x") {
        4
    } else if name.contains("x2") || name.contains("2x") {
        2
    } else {
        1
    }
}

/// Post-processing tiles of a `width`×`height` source: `ceil(w/512)·ceil(h/512)`.
pub(crate) fn tiles(width: u32, height: u32) -> u32 {
    width.div_ceil(TILE_SIDE).max(1) * height.div_ceil(TILE_SIDE).max(1)
}

/// The form kudos (= the worker's reward): 3 for interrogation, 3 per tile
/// for a post-processor, 1 for anything else.
pub(crate) fn form_kudos(name: &str, tiles: u32) -> f64 {
    if name == "interrogation" {
        3.0
    } else if is_post_processor(name) {
        3.0 * f64::from(tiles)
    } else {
        1.0
    }
}

/// What the client pays for one delivered form: form kudos + 1, plus 1 more
/// when `slow_workers` is true (the default).
pub(crate) fn client_cost(name: &str, tiles: u32, slow_workers: bool) -> f64 {
    form_kudos(name, tiles) + 1.0 + if slow_workers { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_follow_the_observed_table() {
        assert_eq!(client_cost("caption", 1, true), 3.0);
        assert_eq!(client_cost("caption", 1, false), 2.0);
        assert_eq!(client_cost("interrogation", 1, true), 5.0);
        assert_eq!(client_cost("interrogation", 1, false), 4.0);
        assert_eq!(client_cost("RealESRGAN_x2plus", 1, true), 5.0);
        assert_eq!(tiles(1100, 600), 6);
        assert_eq!(client_cost("GFPGAN", tiles(1100, 600), true), 20.0);
        assert_eq!(client_cost("GFPGAN", tiles(1100, 600), false), 19.0);
    }

    #[test]
    fn scales_follow_the_names() {
        assert_eq!(scale_of("RealESRGAN_x2plus"), 2);
        assert_eq!(scale_of("2xModernSpanimationV1"), 2);
        assert_eq!(scale_of("RealESRGAN_x4plus_anime_6B"), 4);
        assert_eq!(scale_of("4xNomos2_hq_dat2"), 4);
        assert_eq!(scale_of("NMKD_Siax"), 1);
        assert_eq!(scale_of("strip_background"), 1);
        assert_eq!(known_forms().count(), 23);
        assert!(!default_served_forms().contains(&"describe".to_owned()));
        assert!(default_served_forms().contains(&"RestoreFormer".to_owned()));
    }
}
