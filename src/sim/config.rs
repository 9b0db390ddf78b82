//! Configuration of the simulated Horde: the `horde-batch sim` flags.
//!
//! Owns flag parsing and the value types behind the flags (latency ranges,
//! probabilities, redacted API keys). It must not start anything: turning a
//! config into a running server is `sim::spawn`'s job.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

/// Flags of `horde-batch sim` (and the in-process `sim::spawn`).
///
/// `SimConfig::default()` equals the CLI defaults, so tests start from the
/// same simulated Horde that users rehearse against and change only what
/// they need.
#[derive(clap::Args, Clone, Debug)]
pub struct SimConfig {
    /// TCP port to listen on (127.0.0.1 only); 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// Number of simulated worker threads, each generating one image at a time.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,

    /// Time a worker spends on one image: a fixed duration ("2s") or a range ("1s..3s").
    #[arg(long, default_value = "2s")]
    pub latency: LatencySpec,

    /// Speed each worker advertises, in megapixel-steps per second; `/check`'s
    /// wait_time comes from it, not from --latency (so small jobs read as 0 s
    /// while they still wait, as on the real server).
    #[arg(long, default_value_t = 50.0, value_parser = parse_speed)]
    pub worker_speed_mps: f64,

    /// Probability that one image attempt faults (the image is re-queued, and dropped after 2 faults).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_rate: f64,

    /// Probability that a finished image comes back censored.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub censor_rate: f64,

    /// Models the simulated workers serve (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "stable_diffusion,AlbedoBase XL (SDXL),Deliberate"
    )]
    pub models: Vec<String>,

    /// Seed for every random choice (ids, seeds, faults, censorship, chaos); random if absent.
    #[arg(long)]
    pub seed: Option<u64>,

    /// A request is deleted this long after its last activity (creation, pickup, delivery).
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    pub expiry: Duration,

    /// How often the cleaner deletes expired requests and flags faulted ones.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub cleanup_interval: Duration,

    /// How long `find_user` answers are cached per API key (0s: not cached).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub find_user_cache: Duration,

    /// Validity of each R2 download URL handed out by a status call.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub r2_ttl: Duration,

    /// A registered user's API key (repeatable), one user per key; `KEY,concurrency=N,kudos=K`
    /// gives that user its own concurrency and kudos instead of --user-concurrency and
    /// --user-kudos. The anonymous key 0000000000 is always known.
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<SimApiKey>,

    /// Images of other users that always wait in the queue, at the same priority as
    /// ours: a worker that takes one is given the next, queued behind everything that
    /// waits now. Workers serve the queue in arrival order, so a user's share of the
    /// workers is about its waiting images ÷ (this + its waiting images).
    #[arg(long, default_value_t = 0)]
    pub background_load: u32,

    /// Requests of other clients on every registered user's key: at a user's
    /// first submit, this many finished, unexpired requests of the same size
    /// appear in its `find_user` list, as when a team shares a key or an
    /// earlier batch ran in the last 20 minutes (docs/horde-api.md §9.1).
    #[arg(long, default_value_t = 0)]
    pub busy_key: u32,

    /// The workers take no source images (they advertise `img2img: false` and
    /// `painting: false`): a request with one is queued, reads `is_possible:
    /// false` and waits until it expires, as on a real Horde whose workers do
    /// not take img2img.
    #[arg(long)]
    pub no_img2img_workers: bool,

    /// Starting kudos of each registered user.
    #[arg(long, default_value_t = 100_000.0)]
    pub user_kudos: f64,

    /// Concurrency (waiting images) of each registered user.
    #[arg(long, default_value_t = 30)]
    pub user_concurrency: u32,

    /// Chaos: probability that an API call gets a 5xx instead of its answer.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub chaos_5xx: f64,

    /// Chaos: probability that an API call's connection is closed without an answer
    /// (half of them after the call took effect).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub chaos_drop: f64,

    /// Chaos: probability that an API call is carried out in full, then its
    /// connection is closed without an answer (a lost answer).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub chaos_lost_answer: f64,

    /// Chaos: probability that an API call is answered only after --chaos-slow-delay.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub chaos_slow: f64,

    /// Chaos: extra delay of a slow answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub chaos_slow_delay: Duration,

    /// Chaos: probability that an API call gets a 200 with a broken JSON body.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub chaos_malformed: f64,

    /// The async POST creates the request, then waits this long before answering
    /// (widens the window for killing a client between its POST and the answer).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub submit_latency: Duration,

    /// Turn every rate limit off (like HORDE_TEST_RATELIMIT_DISABLED on a test server).
    #[arg(long)]
    pub no_rate_limits: bool,

    /// Number of simulated alchemists (interrogation workers), each working one form at a time.
    #[arg(long, default_value_t = 2)]
    pub alchemists: usize,

    /// Time an alchemist spends on one form; a post-processor takes this per 512×512 tile.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub alchemy_form_time: Duration,

    /// Forms the alchemists serve (comma separated); a form nobody serves
    /// waits until its request expires. Default: every form but describe,
    /// vectorize and palette.
    #[arg(long, value_delimiter = ',', default_values_t = super::alchemy_forms::default_served_forms())]
    pub alchemy_forms: Vec<String>,

    /// A form the alchemists always fault (repeatable): it goes back to
    /// waiting, and its 4th fault makes it faulted for good, never charged.
    #[arg(long, value_name = "FORM")]
    pub alchemy_fault_form: Vec<String>,

    /// An interrogation request is deleted this long after its creation, its
    /// last pickup or its last delivered form.
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    pub alchemy_expiry: Duration,

    /// Validity of a post-processor's result URL, signed once when the form is delivered.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub alchemy_url_ttl: Duration,
}

/// Parses `SimConfig` alone, to derive `Default` from the CLI defaults.
#[derive(Parser)]
#[command(name = "sim")]
struct DefaultsOnly {
    #[command(flatten)]
    config: SimConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        DefaultsOnly::try_parse_from(["sim"])
            .expect("every SimConfig flag has a default that parses")
            .config
    }
}

impl SimConfig {
    /// Checks what clap cannot check flag by flag.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.workers > 1000 {
            return Err(format!("--workers {} is more than 1000", self.workers));
        }
        if self.models.iter().any(|model| model.trim().is_empty()) {
            return Err("--models contains an empty name".to_owned());
        }
        if self.cleanup_interval.is_zero() {
            return Err("--cleanup-interval must be more than 0".to_owned());
        }
        if self.alchemists > 1000 {
            return Err(format!(
                "--alchemists {} is more than 1000",
                self.alchemists
            ));
        }
        let unknown = self
            .alchemy_forms
            .iter()
            .chain(&self.alchemy_fault_form)
            .find(|form| !super::alchemy_forms::is_known_form(form));
        if let Some(form) = unknown {
            return Err(format!(
                "{form:?} is not an alchemy form; known: {}",
                super::alchemy_forms::known_forms()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self
            .api_keys
            .iter()
            .any(|key| key.expose() == super::state::ANON_API_KEY)
        {
            return Err("--api-key 0000000000 is the anonymous key, always known".to_owned());
        }
        Ok(())
    }
}

/// How long a simulated worker takes for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySpec {
    /// Shortest time.
    pub min: Duration,
    /// Longest time (equal to `min` for a fixed latency).
    pub max: Duration,
}

impl LatencySpec {
    /// A fixed latency.
    pub fn fixed(latency: Duration) -> Self {
        Self {
            min: latency,
            max: latency,
        }
    }

    /// Picks a latency in `[min, max]` from a uniform number in `[0, 1)`.
    pub(crate) fn pick(&self, unit: f64) -> Duration {
        let spread = self.max.saturating_sub(self.min);
        self.min + spread.mul_f64(unit.clamp(0.0, 1.0))
    }
}

impl FromStr for LatencySpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = |part: &str| {
            humantime::parse_duration(part.trim())
                .map_err(|err| format!("invalid duration {part:?}: {err}"))
        };
        match text.split_once("..") {
            None => Ok(Self::fixed(parse(text)?)),
            Some((min, max)) => {
                let (min, max) = (parse(min)?, parse(max)?);
                if min > max {
                    return Err(format!("latency range {text:?} ends before it starts"));
                }
                Ok(Self { min, max })
            }
        }
    }
}

impl fmt::Display for LatencySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", humantime::format_duration(self.min))
        } else {
            write!(
                f,
                "{}..{}",
                humantime::format_duration(self.min),
                humantime::format_duration(self.max)
            )
        }
    }
}

/// An API key given to the simulator, with its user's own limits when they
/// differ from the sim-wide ones; the key is never shown in Debug output.
#[derive(Clone, PartialEq)]
pub struct SimApiKey {
    key: String,
    /// This user's concurrency (else `--user-concurrency`).
    pub concurrency: Option<u32>,
    /// This user's starting kudos (else `--user-kudos`).
    pub kudos: Option<f64>,
}

impl SimApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            concurrency: None,
            kudos: None,
        }
    }

    /// The same key, its user with `concurrency` waiting images.
    pub fn with_concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = Some(concurrency);
        self
    }

    /// The same key, its user starting with `kudos`.
    pub fn with_kudos(mut self, kudos: f64) -> Self {
        self.kudos = Some(kudos);
        self
    }

    /// The key itself, for comparing with the `apikey` header.
    pub fn expose(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for SimApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimApiKey(<redacted>)")
    }
}

impl FromStr for SimApiKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let key = parts.next().unwrap_or_default();
        if key.trim().is_empty() {
            return Err("an API key cannot be empty".to_owned());
        }
        let mut parsed = Self::new(key);
        for part in parts {
            // Errors name the setting, never the key.
            match part.split_once('=') {
                Some(("concurrency", value)) => {
                    let value = value
                        .parse()
                        .map_err(|_| format!("concurrency={value:?} is not a whole number"))?;
                    parsed.concurrency = Some(value);
                }
                Some(("kudos", value)) => {
                    let value: f64 = value
                        .parse()
                        .map_err(|_| format!("kudos={value:?} is not a number"))?;
                    if !value.is_finite() {
                        return Err(format!("kudos={value} is not a finite number"));
                    }
                    parsed.kudos = Some(value);
                }
                _ => {
                    return Err(format!(
                        "unknown key setting {part:?}; use concurrency=N or kudos=K"
                    ))
                }
            }
        }
        Ok(parsed)
    }
}

fn parse_speed(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{value} is not a speed above 0"));
    }
    Ok(value)
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{value} is not a probability between 0 and 1"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_equals_cli_defaults() {
        let config = SimConfig::default();
        assert_eq!(config.workers, 4);
        assert_eq!(config.latency, LatencySpec::fixed(Duration::from_secs(2)));
        assert_eq!(config.expiry, Duration::from_secs(20 * 60));
        assert_eq!(config.models[0], "stable_diffusion");
        assert!(!config.no_rate_limits);
        assert_eq!(config.find_user_cache, Duration::from_secs(30));
        assert_eq!(config.worker_speed_mps, 50.0);
        assert_eq!(config.submit_latency, Duration::ZERO);
        assert_eq!(config.chaos_lost_answer, 0.0);
        assert_eq!(config.alchemists, 2);
        assert_eq!(config.alchemy_form_time, Duration::from_secs(2));
        assert_eq!(config.alchemy_expiry, Duration::from_secs(20 * 60));
        assert_eq!(config.alchemy_url_ttl, Duration::from_secs(30 * 60));
        assert!(config.alchemy_forms.contains(&"caption".to_owned()));
        assert!(!config.alchemy_forms.contains(&"describe".to_owned()));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn latency_accepts_fixed_and_ranges() {
        let range: LatencySpec = "1s..3s".parse().unwrap();
        assert_eq!(range.min, Duration::from_secs(1));
        assert_eq!(range.pick(0.5), Duration::from_secs(2));
        assert!("3s..1s".parse::<LatencySpec>().is_err());
        assert!("soon".parse::<LatencySpec>().is_err());
    }

    #[test]
    fn api_keys_are_redacted() {
        let key = SimApiKey::new("secret-key-123");
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn api_keys_take_their_own_limits() {
        let key: SimApiKey = "k1,concurrency=12,kudos=50".parse().unwrap();
        assert_eq!(key.expose(), "k1");
        assert_eq!(key.concurrency, Some(12));
        assert_eq!(key.kudos, Some(50.0));
        let plain: SimApiKey = "k2".parse().unwrap();
        assert_eq!((plain.concurrency, plain.kudos), (None, None));
        let error = "secret,speed=3".parse::<SimApiKey>().unwrap_err();
        assert!(!error.contains("secret"), "{error}");
        assert!("k,concurrency=x".parse::<SimApiKey>().is_err());
        assert_eq!(SimConfig::default().background_load, 0);
    }
}
