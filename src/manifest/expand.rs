//! Expansion: compiled jobs → a deterministic stream of jobs with stable keys.
//!
//! Combinations are enumerated like nested loops over the axes in the order
//! they were written (matrix axes, then the prompt's variants and wildcards),
//! the last axis varying fastest; random mode picks distinct combinations with
//! a seeded generator (uniformly, or by the variant options' weights) and
//! keeps them in that same order. A job's key is a hash
//! of its resolved content (job name, prompts, models, parameters, request
//! flags, seed policy), so reordering mapping keys or reformatting the YAML
//! changes no key and editing one job changes only that job's keys. A job with
//! source images adds their hashes (not their paths) to its key, so replacing
//! a source file's bytes re-generates; txt2img keys are unchanged. The image
//! count is deliberately not part of the key: asking for more images of a
//! finished combination resumes it instead of starting over. Nor is a job's
//! alchemy: it runs on images already saved, so adding `alchemy:` to a
//! manifest that ran re-generates nothing. Pure computation.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::alchemy::{AlchemyForm, AlchemySpec};
use super::compile::{
    AxisKind, ColumnUse, CompiledJob, CompiledManifest, RequestFlags, Seeds, Segment,
};
use super::params::canonical_text;
use super::source::JobSources;
use super::template::normalize_whitespace;
pub use crate::digest::JobKey;
use crate::digest::{self, name_digest};

impl JobKey {
    /// A new seed for image `index` of this job, in place of a rejected one
    /// (`horde-batch reroll`): derived from the rejected generation's id, so
    /// it is stable for one reroll and new for the next, and never one of
    /// `avoid` (the seeds the image had, which would make it again).
    pub fn reroll_seed(&self, index: u32, rejected_generation: &str, avoid: &[&str]) -> String {
        (0u32..)
            .map(|attempt| {
                let name = format!("reroll/{self}/{index}/{rejected_generation}/{attempt}");
                digest::leading_u32(name_digest(KEY_NAMESPACE, name.as_bytes())).to_string()
            })
            .find(|seed| !avoid.contains(&seed.as_str()))
            .unwrap_or_default() // Unreachable: `avoid` is finite and the attempts are not.
    }
}

/// One prompt + parameter combination, and how many images it wants.
#[derive(Debug, Clone)]
pub struct Job {
    pub key: JobKey,
    /// The manifest job it came from.
    pub name: Arc<str>,
    /// Position of that job in the manifest.
    pub spec_index: usize,
    /// Which combination of that job (0-based, in enumeration order).
    pub combination: u128,
    pub prompt_template: Arc<str>,
    pub negative_template: Option<Arc<str>>,
    /// The resolved positive prompt.
    pub prompt: String,
    /// The resolved negative prompt, if any.
    pub negative: Option<String>,
    pub models: Arc<[String]>,
    /// Every generation parameter except `n` and `seed`, sorted by name.
    pub params: Arc<Map<String, Value>>,
    pub request: Arc<RequestFlags>,
    pub images: u32,
    pub seeds: Seeds,
    /// The row's id, for a job from a `rows:` table with an id column.
    pub id: Option<String>,
    /// The value each named axis, wildcard and row variable took, by name.
    pub labels: BTreeMap<String, Value>,
    /// Source images (paths and hashes, never the bytes); `None` for txt2img.
    pub sources: Option<Arc<JobSources>>,
    /// The alchemy run on every image the job saves (from its manifest job);
    /// `None` when it runs none. Not part of the key.
    pub alchemy: Option<Arc<AlchemySpec>>,
}

impl Job {
    /// The prompt as the Horde takes it: `positive ### negative`.
    pub fn wire_prompt(&self) -> String {
        match &self.negative {
            Some(negative) => format!("{} ### {negative}", self.prompt),
            None => self.prompt.clone(),
        }
    }

    /// The seed of image `index`, when seeds are not left to the Horde.
    pub fn seed_for(&self, index: u32) -> Option<String> {
        match &self.seeds {
            Seeds::Random => None,
            Seeds::Derived => {
                let name = format!("seed/{}/{index}", self.key);
                let seed = digest::leading_u32(name_digest(KEY_NAMESPACE, name.as_bytes()));
                Some(seed.to_string())
            }
            Seeds::List(list) => list.get(index as usize).cloned(),
        }
    }

    /// Kudos the job's alchemy should cost per image saved: its forms priced
    /// on the image as generated (`width × height`, times the scale of the
    /// job's own upscaler in `post_processing`, if any). 0 without alchemy.
    pub fn alchemy_kudos(&self) -> u32 {
        let Some(alchemy) = &self.alchemy else {
            return 0;
        };
        let side = |name: &str| {
            self.params
                .get(name)
                .and_then(Value::as_u64)
                .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        let upscale = self
            .params
            .get("post_processing")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str().and_then(AlchemyForm::parse))
            .map(AlchemyForm::scale)
            .max()
            .unwrap_or(1);
        alchemy.kudos(
            side("width").saturating_mul(upscale),
            side("height").saturating_mul(upscale),
        )
    }
}

/// Namespace of job-key hashes (`crate::digest`); changing it changes every key.
const KEY_NAMESPACE: u128 = 0x6e1f_3c52_8a0b_4d47_9a55_1d2e_8c7b_0f13;

impl CompiledManifest {
    /// Every job, in order. Keys are unique across the manifest: content that
    /// repeats (a variant listed twice) gets an occurrence number in its key.
    pub fn jobs(&self) -> JobStream<'_> {
        JobStream {
            jobs: &self.jobs,
            current: None,
            next_job: 0,
            seen: HashSet::new(),
        }
    }
}

impl CompiledManifest {
    /// The jobs from ordinal `start` on: what `jobs().skip(start)` gives,
    /// without resolving the jobs skipped. `earlier_keys` must be the keys of
    /// the first `start` jobs, because a later job whose content repeats an
    /// earlier one's takes its key from them (its occurrence number).
    pub fn jobs_from(
        &self,
        start: u64,
        earlier_keys: impl IntoIterator<Item = u64>,
    ) -> JobStream<'_> {
        let mut stream = JobStream {
            jobs: &self.jobs,
            current: None,
            next_job: 0,
            seen: earlier_keys.into_iter().collect(),
        };
        let mut rest = start;
        while let Some(job) = self.jobs.get(stream.next_job) {
            stream.next_job += 1;
            if rest < job.combinations {
                let mut combinations = Combinations::new(job);
                combinations.skip_ahead(rest);
                stream.current = Some((job, combinations, Constants::new(job)));
                break;
            }
            rest -= job.combinations;
        }
        stream
    }

    /// A digest of everything the job stream depends on: two compiled
    /// manifests with the same fingerprint give the same jobs, in the same
    /// order, with the same keys. It follows the compiled form (the files a
    /// manifest reads included), not the YAML text, and the running version,
    /// so it only ever compares within one version of horde-batch.
    pub fn expansion_fingerprint(&self) -> String {
        use fmt::Write as _;
        let mut text = String::new();
        let _ = writeln!(text, "horde-batch {}", env!("CARGO_PKG_VERSION"));
        for job in &self.jobs {
            // Debug of the compiled job: every field that feeds expansion, in
            // a fixed order (it holds no hash maps). Alchemy is left out: it
            // runs on images already saved, so adding it changes no job.
            let job = CompiledJob {
                alchemy: None,
                ..job.clone()
            };
            let _ = writeln!(text, "{job:?}");
        }
        digest::to_hyphenated(name_digest(KEY_NAMESPACE, text.as_bytes()))
    }
}

/// The stream of a manifest's jobs; see `CompiledManifest::jobs`.
pub struct JobStream<'a> {
    jobs: &'a [CompiledJob],
    current: Option<(&'a CompiledJob, Combinations, Constants)>,
    next_job: usize,
    seen: HashSet<u64>,
}

impl Iterator for JobStream<'_> {
    type Item = Job;

    fn next(&mut self) -> Option<Job> {
        loop {
            if let Some((job, combinations, constants)) = &mut self.current {
                if let Some(ordinal) = combinations.next() {
                    return Some(resolve(job, constants, ordinal, &mut self.seen));
                }
                self.current = None;
            }
            let job = self.jobs.get(self.next_job)?;
            self.next_job += 1;
            self.current = Some((job, Combinations::new(job), Constants::new(job)));
        }
    }
}

/// What every combination of one job shares, computed once per job.
struct Constants {
    /// Canonical request flags and seed policy: the tail of every key's content.
    key_tail: String,
    /// Canonical models, when no axis changes them.
    models: Option<String>,
    /// The parameters, when no axis changes them.
    params: Option<Arc<Map<String, Value>>>,
}

impl Constants {
    fn new(job: &CompiledJob) -> Self {
        let mut key_tail = String::new();
        canonical_text(&key_flags(&job.request), &mut key_tail);
        key_tail.push('\n');
        key_tail.push_str(&job.seeds.canonical());
        let sets_models = job.axes.iter().any(|a| match &a.kind {
            AxisKind::Model => true,
            AxisKind::Rows(table) => table.columns.iter().any(|(_, u)| *u == ColumnUse::Model),
            _ => false,
        });
        let sets_params = job.axes.iter().any(|a| match &a.kind {
            AxisKind::Param(_) => true,
            AxisKind::Rows(table) => table
                .columns
                .iter()
                .any(|(_, u)| matches!(u, ColumnUse::Param(_))),
            _ => false,
        });
        let models = (!sets_models).then(|| {
            let mut text = String::new();
            canonical_text(&Value::from(job.models.to_vec()), &mut text);
            text
        });
        let params = (!sets_params).then(|| Arc::new(to_map(job.base_params.clone())));
        Self {
            key_tail,
            models,
            params,
        }
    }
}

fn to_map(params: BTreeMap<&str, Value>) -> Map<String, Value> {
    params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The combination ordinals of one job.
enum Combinations {
    All { next: u128, end: u128 },
    Sampled(std::vec::IntoIter<u128>),
}

impl Combinations {
    fn new(job: &CompiledJob) -> Self {
        if let Some((count, seed)) = job.random {
            let mut rng = fastrand::Rng::with_seed(seed);
            let cumulative = cumulative_weights(job);
            let draws = (0..count)
                .map(|_| draw(job, &cumulative, &mut rng))
                .collect::<Vec<_>>();
            return Combinations::Sampled(draws.into_iter());
        }
        match job.sample {
            Some((count, seed)) if u128::from(count) < job.space && weighted(job) => {
                Combinations::Sampled(weighted_sample(job, count, seed).into_iter())
            }
            Some((count, seed)) if u128::from(count) < job.space => {
                // Floyd's algorithm: `count` distinct ordinals, uniformly, in O(count).
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut picked = HashSet::with_capacity(count as usize);
                let count = u128::from(count);
                for top in (job.space - count)..job.space {
                    let candidate = rng.u128(0..=top);
                    if !picked.insert(candidate) {
                        picked.insert(top);
                    }
                }
                let mut ordinals: Vec<u128> = picked.into_iter().collect();
                ordinals.sort_unstable();
                Combinations::Sampled(ordinals.into_iter())
            }
            _ => Combinations::All {
                next: 0,
                end: job.space,
            },
        }
    }
}

/// Whether some axis has options of unequal weight (`{0.5::a|b}`).
fn weighted(job: &CompiledJob) -> bool {
    job.axes.iter().any(|axis| {
        axis.values
            .first()
            .is_some_and(|first| axis.values.iter().any(|v| v.weight != first.weight))
    })
}

/// `count` distinct ordinals drawn with the options' weights: each draw picks
/// every axis's value by weight, and a combination drawn again is drawn
/// anew. If the weights make new combinations too rare (after 64 draws per
/// wanted combination), the first combinations in order that were not drawn
/// fill the rest, so the count is always met. Sorted, like the uniform pick.
fn weighted_sample(job: &CompiledJob, count: u64, seed: u64) -> Vec<u128> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let cumulative = cumulative_weights(job);
    let wanted = count as usize;
    let mut picked = HashSet::with_capacity(wanted);
    let mut draws = 0u64;
    let limit = count.saturating_mul(64).saturating_add(1024);
    while picked.len() < wanted && draws < limit {
        draws += 1;
        picked.insert(draw(job, &cumulative, &mut rng));
    }
    let mut next = 0u128;
    while picked.len() < wanted && next < job.space {
        picked.insert(next);
        next += 1;
    }
    let mut ordinals: Vec<u128> = picked.into_iter().collect();
    ordinals.sort_unstable();
    ordinals
}

/// Per axis, the running sums of its values' weights.
fn cumulative_weights(job: &CompiledJob) -> Vec<Vec<f64>> {
    job.axes
        .iter()
        .map(|axis| {
            axis.values
                .iter()
                .scan(0.0, |total, v| {
                    *total += v.weight;
                    Some(*total)
                })
                .collect()
        })
        .collect()
}

/// One combination drawn at random: each axis's value by its weight.
fn draw(job: &CompiledJob, cumulative: &[Vec<f64>], rng: &mut fastrand::Rng) -> u128 {
    let mut ordinal = 0u128;
    for (axis, sums) in job.axes.iter().zip(cumulative) {
        let total = sums.last().copied().unwrap_or(0.0);
        let target = rng.f64() * total;
        let index = sums
            .partition_point(|&s| s <= target)
            .min(axis.values.len().saturating_sub(1));
        ordinal = ordinal * axis.values.len() as u128 + index as u128;
    }
    ordinal
}

impl Combinations {
    /// Skips `count` ordinals without producing them.
    fn skip_ahead(&mut self, count: u64) {
        match self {
            Combinations::All { next, end } => *next = (*next + u128::from(count)).min(*end),
            Combinations::Sampled(ordinals) => {
                if let Some(last) = count.checked_sub(1) {
                    ordinals.nth(usize::try_from(last).unwrap_or(usize::MAX));
                }
            }
        }
    }
}

impl Iterator for Combinations {
    type Item = u128;
    fn next(&mut self) -> Option<u128> {
        match self {
            Combinations::All { next, end } => (*next < *end).then(|| {
                *next += 1;
                *next - 1
            }),
            Combinations::Sampled(ordinals) => ordinals.next(),
        }
    }
}

fn resolve(
    job: &CompiledJob,
    constants: &Constants,
    ordinal: u128,
    seen: &mut HashSet<u64>,
) -> Job {
    // Mixed-radix digits of the ordinal, last axis fastest.
    let mut choice = vec![0usize; job.axes.len()];
    let mut rest = ordinal;
    for (slot, axis) in choice.iter_mut().zip(&job.axes).rev() {
        let len = axis.values.len() as u128;
        *slot = (rest % len) as usize;
        rest /= len;
    }
    let render = |segments: &[Segment]| {
        let mut text = String::new();
        for segment in segments {
            match segment {
                Segment::Text(t) => text.push_str(t),
                Segment::Axis(a) => text.push_str(&job.axes[*a].values[choice[*a]].text),
                Segment::Field(a, column) => {
                    text.push_str(&job.axes[*a].values[choice[*a]].field_text(column));
                }
            }
        }
        normalize_whitespace(&text)
    };
    let prompt = render(&job.positive);
    let negative = job
        .negative
        .as_deref()
        .map(render)
        .filter(|n| !n.is_empty());

    let mut models = Arc::clone(&job.models);
    let mut sources = job.sources.clone();
    let mut params_override: Option<BTreeMap<&str, Value>> = None;
    let mut labels = BTreeMap::new();
    let mut id = None;
    for (axis, &pick) in job.axes.iter().zip(&choice) {
        let value = &axis.values[pick];
        match &axis.kind {
            AxisKind::Param(name) => {
                labels.insert(axis.name.clone(), value.json.clone());
                params_override
                    .get_or_insert_with(|| job.base_params.clone())
                    .insert(name, value.json.clone());
            }
            AxisKind::Model => {
                labels.insert(axis.name.clone(), Value::from(value.text.as_str()));
                models = Arc::from(vec![value.text.clone()]);
            }
            AxisKind::Text => {
                labels.insert(axis.name.clone(), Value::from(value.text.as_str()));
            }
            AxisKind::Rows(table) => {
                if table.id.is_some() {
                    id = Some(value.text.clone());
                }
                if let Some(Some(image)) = table.sources.get(pick) {
                    sources = sources.map(|s| Arc::new(s.with_image(Arc::clone(image))));
                }
                for (column, used) in &table.columns {
                    let Some(cell) = value.json.get(column) else {
                        continue;
                    };
                    labels.insert(column.clone(), cell.clone());
                    match used {
                        ColumnUse::Param(name) => {
                            params_override
                                .get_or_insert_with(|| job.base_params.clone())
                                .insert(name, cell.clone());
                        }
                        ColumnUse::Model => {
                            if let Some(model) = cell.as_str() {
                                models = Arc::from(vec![model.to_owned()]);
                            }
                        }
                        ColumnUse::Text | ColumnUse::SourceImage => {}
                    }
                }
            }
            AxisKind::Source(images) => {
                labels.insert(axis.name.clone(), Value::from(value.text.as_str()));
                sources = sources.map(|s| Arc::new(s.with_image(Arc::clone(&images[pick]))));
            }
        }
    }
    let params = match (params_override, &constants.params) {
        (Some(params), _) => Arc::new(to_map(params)),
        (None, Some(shared)) => Arc::clone(shared),
        (None, None) => Arc::new(to_map(job.base_params.clone())),
    };

    let mut content = String::with_capacity(256);
    content.push_str("horde-batch/job/v1\n");
    for part in [
        job.name.as_ref(),
        &prompt,
        negative.as_deref().unwrap_or(""),
    ] {
        content.push_str(part);
        content.push('\n');
    }
    match &constants.models {
        Some(text) => content.push_str(text),
        None => canonical_text(&Value::from(models.to_vec()), &mut content),
    }
    content.push('\n');
    canonical_params(&params, &mut content);
    content.push('\n');
    content.push_str(&constants.key_tail);
    if let Some(id) = &id {
        // The row's id: rows of the same content are distinct images.
        content.push_str("\nrow id ");
        content.push_str(id);
    }
    // Only jobs with sources get this line: txt2img keys stay as they were.
    if let Some(sources) = &sources {
        content.push_str("\nsources ");
        content.push_str(&sources.key_text());
    }

    let mut key = hash(&content);
    let mut occurrence = 1u32;
    while !seen.insert(key) {
        occurrence += 1;
        key = hash(&format!("{content}\noccurrence {occurrence}"));
    }

    Job {
        key: JobKey(key),
        name: Arc::clone(&job.name),
        spec_index: job.index,
        combination: ordinal,
        prompt_template: Arc::clone(&job.prompt_template),
        negative_template: job.negative_template.clone(),
        prompt,
        negative,
        models,
        params,
        request: Arc::clone(&job.request),
        images: job.images,
        seeds: job.seeds.clone(),
        id,
        labels,
        sources,
        alchemy: job.alchemy.clone(),
    }
}

/// Canonical text of a parameter map (its keys are already sorted).
fn canonical_params(params: &Map<String, Value>, out: &mut String) {
    out.push('{');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        canonical_text(value, out);
    }
    out.push('}');
}

/// The request flags that change what is generated (not how it is delivered).
fn key_flags(flags: &RequestFlags) -> Value {
    let mut value = serde_json::to_value(flags).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("r2");
        map.remove("webhook");
    }
    value
}

/// The key of `content`: the first 8 bytes of its digest under `KEY_NAMESPACE`.
fn hash(content: &str) -> u64 {
    digest::leading_u64(name_digest(KEY_NAMESPACE, content.as_bytes()))
}

#[cfg(test)]
mod reroll_seed_tests {
    use super::JobKey;

    #[test]
    fn a_reroll_seed_is_stable_for_a_reroll_new_for_the_next_and_avoids_old_seeds() {
        let key = JobKey(0x0123_4567_89ab_cdef);
        let first = key.reroll_seed(3, "generation-a", &[]);
        assert_eq!(key.reroll_seed(3, "generation-a", &[]), first);
        assert_ne!(key.reroll_seed(3, "generation-b", &[]), first);
        assert_ne!(key.reroll_seed(4, "generation-a", &[]), first);
        let other = key.reroll_seed(3, "generation-a", &[&first]);
        assert_ne!(other, first);
        assert!(other.parse::<u32>().is_ok(), "digits, as derived seeds are");
    }
}
