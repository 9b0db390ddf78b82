//! Kudos: what an image request costs, whether it must be paid upfront
//! (refused with `KudosUpfront`, or shrunk under `allow_downgrade`), and the
//! debit when the tax or an image lands, from the owner and from the shared
//! key the request was made with.
//!
//! The cost model is fitted to requests observed on the real server (see
//! `base_kudos`); model families are guessed from their names. It must not
//! queue or hand out anything: `submit` decides what a price leads to.

use uuid::Uuid;

use super::super::validate::{GenParams, GenerateInput};
use super::{ApiError, Caller, Horde};

/// Horde tax at activation: 1, plus the +2 "style" adjustment every image request gets.
pub(super) const HORDE_TAX: f64 = 3.0;

/// The model `max_steps` used when the model reference sets none.
const DEFAULT_MAX_STEPS: f64 = 40.0;

/// Samplers whose steps count double (AH `require_upfront_kudos`).
const DOUBLE_STEP_SAMPLERS: &[&str] = &[
    "k_heun",
    "k_dpm_2",
    "k_dpm_2_a",
    "k_dpmpp_2s_a",
    "k_dpmpp_sde",
];

/// What a submit costs: the dry-run total, and what is held from the
/// owner's balance until its images are charged (0 when nothing is due upfront).
pub(super) struct Price {
    pub(super) required: f64,
    pub(super) upfront_hold: f64,
}

impl Horde {
    /// Prices a submit as AH `stable.py` `initiate_waiting_prompt` does: a
    /// request beyond the free envelope needs its kudos upfront, or is shrunk
    /// to the envelope when `allow_downgrade` is set (which changes `input`).
    pub(super) fn price(
        &self,
        caller: &Caller,
        input: &mut GenerateInput,
    ) -> Result<Price, ApiError> {
        let queued_requests = self
            .requests
            .values()
            .filter(|request| !request.waiting.is_empty())
            .count();
        let max_res = max_free_resolution(self.settings.workers, queued_requests, &input.models);
        let needs_upfront = needs_upfront_kudos(input, max_res);
        let mut required = dry_run_kudos(input);
        if let Some(key_id) = caller.shared_key {
            self.check_shared_key_budget(key_id, required, input.allow_downgrade)?;
        }
        let mut upfront_hold = 0.0;
        if needs_upfront {
            if required > self.kudos_available_upfront(caller.user) {
                if !input.allow_downgrade {
                    return Err(kudos_upfront(max_res, required));
                }
                downgrade(&mut input.params, max_res);
                required = dry_run_kudos(input);
            } else {
                upfront_hold = required;
            }
        }
        Ok(Price {
            required,
            upfront_hold,
        })
    }

    /// The user's balance above its floor, less what its live requests hold upfront.
    fn kudos_available_upfront(&self, user: usize) -> f64 {
        let holds: f64 = self
            .requests
            .values()
            .filter(|request| request.owner == user)
            .map(|request| request.upfront_hold)
            .sum();
        let user = &self.users[user];
        user.kudos - user.floor - holds
    }

    /// Debits `amount` for request `id` from its owner (and shared key).
    pub(super) fn charge(&mut self, id: Uuid, amount: f64) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        request.kudos += amount;
        request.upfront_hold = (request.upfront_hold - amount).max(0.0);
        self.users[request.owner].kudos -= amount;
        if let Some(key) = request
            .shared_key
            .and_then(|key| self.shared_keys.get_mut(&key))
        {
            key.debit(amount);
        }
        self.stats.kudos_charged += amount;
    }
}

/// 403 `KudosUpfront`, in the server's words.
fn kudos_upfront(max_res: u32, required: f64) -> ApiError {
    ApiError::rc(
        403,
        "KudosUpfront",
        format!(
            "Due to heavy demand, for requests over {max_res}x{max_res} or over 50 steps \
             (10 steps for LCM work, 30 steps for Stable Cascade, and half those steps for \
             k_heun, dpmpp_sde, and dpm_2*) the client needs to already have the required \
             kudos. This request requires {required} kudos to fulfil."
        ),
    )
}

fn accurate_steps(params: &GenParams) -> f64 {
    if params.sampler_name == "k_dpm_adaptive" {
        return DEFAULT_MAX_STEPS;
    }
    let multiplier = if DOUBLE_STEP_SAMPLERS.contains(&params.sampler_name.as_str()) {
        2.0
    } else {
        1.0
    };
    f64::from(params.steps) * multiplier
}

/// Model cost of one image before multipliers: a fixed part plus a part
/// growing with steps and, faster than linearly, with pixels. Fitted to two
/// requests seen on the real server (docs/horde-api.md §9, §9.1): 5.67 for 512×512 at 30
/// steps (the 202 said 6) and 3.33 for 64×64 at 5 steps (the 202 said 3).
pub(super) fn base_kudos(params: &GenParams) -> f64 {
    let pixels = f64::from(params.width) * f64::from(params.height);
    10.0 / 3.0 + 7.0 / 90.0 * accurate_steps(params) * (pixels / (512.0 * 512.0)).powf(1.75)
}

/// Model-family multiplier (SDXL ×2, Cascade ×4, Flux ×8), guessed from the name.
fn baseline_multiplier(models: &[String]) -> f64 {
    let name = models
        .first()
        .map(|model| model.to_lowercase())
        .unwrap_or_default();
    if name.contains("flux") {
        8.0
    } else if name.contains("cascade") {
        4.0
    } else if name.contains("xl") {
        2.0
    } else {
        1.0
    }
}

fn is_xl_family(models: &[String]) -> bool {
    baseline_multiplier(models) > 1.0
}

/// The model cost with the request's multipliers (baseline, slow workers, blacklist).
fn weighted_kudos(input: &GenerateInput) -> f64 {
    let mut kudos = base_kudos(&input.params) * baseline_multiplier(&input.models);
    if !input.slow_workers {
        kudos *= 1.2;
    }
    if input.worker_blacklist {
        kudos *= 1.1;
    }
    kudos
}

/// What each finished image is charged: the rounded cost plus 1 (7 and 4 for
/// the two requests above, charged 24 and 15 for n=3 with the 3 tax).
pub(super) fn per_image_kudos(input: &GenerateInput) -> f64 {
    weighted_kudos(input).round() + 1.0
}

/// The dry-run total, `n × (cost + 1) + 1` rounded to cents (21 and 14 for
/// the two requests above); also what upfront kudos require.
fn dry_run_kudos(input: &GenerateInput) -> f64 {
    let total = f64::from(input.params.n) * (weighted_kudos(input) + 1.0) + 1.0;
    (total * 100.0).round() / 100.0
}

/// Largest free side: `1024 + 10·threads − round(0.9·queued)`, clamped to
/// 576..1024, at least 1024 for SDXL-class models.
fn max_free_resolution(threads: usize, queued_requests: usize, models: &[String]) -> u32 {
    let raw = 1024 + 10 * threads as i64 - (0.9 * queued_requests as f64).round() as i64;
    let clamped = raw.clamp(576, 1024) as u32;
    if is_xl_family(models) {
        clamped.max(1024)
    } else {
        clamped
    }
}

fn needs_upfront_kudos(input: &GenerateInput, max_res: u32) -> bool {
    let params = &input.params;
    let pixels = u64::from(params.width) * u64::from(params.height);
    !input.slow_workers
        || pixels > u64::from(max_res) * u64::from(max_res)
        || accurate_steps(params) > DEFAULT_MAX_STEPS
        || (params.sampler_name == "lcm" && params.steps > 10)
        || (params.control_type.is_some() && params.steps > 20)
}

/// `allow_downgrade`: shrink to the free envelope instead of rejecting.
fn downgrade(params: &mut GenParams, max_res: u32) {
    let pixels = f64::from(params.width) * f64::from(params.height);
    let limit = f64::from(max_res) * f64::from(max_res);
    if pixels > limit {
        let scale = (limit / pixels).sqrt();
        let snap = |side: u32| ((f64::from(side) * scale / 64.0).floor() as u32 * 64).max(512);
        params.width = snap(params.width);
        params.height = snap(params.height);
    }
    let max_steps = if params.sampler_name == "lcm" {
        10
    } else if params.control_type.is_some() {
        20
    } else {
        30
    };
    params.steps = params.steps.min(max_steps);
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::sim::validate::parse_generate;

    fn input(body: Value) -> GenerateInput {
        parse_generate(&body).unwrap()
    }

    #[test]
    fn kudos_match_the_observed_request() {
        // Observed on the real server (docs/horde-api.md §9, §9.1): dry run, the 202's
        // figure, and what /check said was charged when done.
        let cases = [
            (json!({"n": 3}), 21.0, 6.0, 24.0),
            (
                json!({"n": 3, "width": 64, "height": 64, "steps": 5}),
                14.0,
                3.0,
                15.0,
            ),
        ];
        for (params, dry_run, accepted, charged) in cases {
            let request = input(json!({"prompt": "x", "params": params}));
            assert_eq!(dry_run_kudos(&request), dry_run, "{params}");
            assert_eq!(base_kudos(&request.params).round(), accepted, "{params}");
            assert_eq!(
                per_image_kudos(&request) * 3.0 + HORDE_TAX,
                charged,
                "{params}"
            );
        }
    }

    #[test]
    fn upfront_rules() {
        let free =
            input(json!({"prompt": "x", "params": {"width": 1024, "height": 1024, "steps": 40}}));
        assert!(!needs_upfront_kudos(&free, 1024));
        let slow = input(json!({"prompt": "x", "slow_workers": false}));
        assert!(needs_upfront_kudos(&slow, 1024));
        let heun = input(json!({"prompt": "x", "params": {"sampler_name": "k_heun", "steps": 21}}));
        assert!(needs_upfront_kudos(&heun, 1024));
        assert_eq!(
            max_free_resolution(4, 0, &["stable_diffusion".to_owned()]),
            1024
        );
        assert_eq!(
            max_free_resolution(0, 1000, &["stable_diffusion".to_owned()]),
            576
        );
        assert_eq!(
            max_free_resolution(0, 1000, &["AlbedoBase XL (SDXL)".to_owned()]),
            1024
        );
    }

    #[test]
    fn downgrade_snaps_to_the_envelope() {
        let mut params =
            input(json!({"prompt": "x", "params": {"width": 2048, "height": 2048, "steps": 80}}))
                .params;
        downgrade(&mut params, 1024);
        assert_eq!(
            (params.width, params.height, params.steps),
            (1024, 1024, 30)
        );
    }
}
