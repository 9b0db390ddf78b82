//! Tests of the simulated Horde over real HTTP on loopback: each rule the
//! simulator copies from the real server (docs/horde-api.md §1, §3, §4, §6, §9) gets a
//! test that would fail if the simulator were kinder than the server.

use std::io::Cursor;
use std::time::{Duration, Instant};

use base64::Engine as _;
use horde_batch::sim::{self, LatencySpec, SimApiKey, SimConfig, SimHandle, SimStats};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const KEY: &str = "registered-key-0001";
const ANON: &str = "0000000000";
const AGENT: &str = "horde-batch-tests:0.1.0:https://example.org/contact";

/// A fast, limit-free simulator: tests of one rule turn on only what they test.
fn fast_config() -> SimConfig {
    SimConfig {
        workers: 2,
        latency: LatencySpec::fixed(Duration::from_millis(20)),
        seed: Some(1),
        no_rate_limits: true,
        api_keys: vec![SimApiKey::new(KEY)],
        ..SimConfig::default()
    }
}

struct Sim {
    handle: SimHandle,
    http: Client,
    base: String,
}

impl Sim {
    async fn start(config: SimConfig) -> Self {
        let handle = sim::spawn(config).await.expect("simulator starts");
        let base = handle.base_url();
        assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/api/"));
        Self {
            handle,
            http: Client::new(),
            base,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}v2/{path}", self.base)
    }

    async fn submit(
        &self,
        key: Option<&str>,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .post(self.url("generate/async"))
            .header("Client-Agent", AGENT)
            .json(&body);
        if let Some(key) = key {
            request = request.header("apikey", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.json().await.unwrap())
    }

    /// Submits and expects a 202; returns the request id.
    async fn queue(&self, body: Value) -> String {
        let (status, _, answer) = self.submit(Some(KEY), body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.delete(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Polls `/check` (as a client would) until `done`, within 10 s.
    async fn wait_done(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, check) = self.get(&format!("generate/check/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{check}");
            if check["done"] == true {
                return check;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} never finished: {check}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the direct counters satisfy `condition`, within 10 s.
    async fn wait_stats(&self, what: &str, condition: impl Fn(&SimStats) -> bool) -> SimStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.handle.stats();
            if condition(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn decode_webp(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WEBP");
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).unwrap();
    let (width, height) = decoder.dimensions();
    let mut pixels = vec![0; decoder.output_buffer_size().unwrap()];
    decoder.read_image(&mut pixels).unwrap();
    (width, height, pixels)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ----- validation -----

#[tokio::test]
async fn validation_errors_have_the_real_bodies() {
    let sim = Sim::start(fast_config()).await;

    let (status, _, body) = sim
        .submit(Some(KEY), json!({"prompt": "x", "params": {"n": 21}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"message": "Input payload validation failed",
               "errors": {"params.n": "21 is greater than the maximum of 20"}})
    );

    let (status, _, body) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "", "params": {"width": 100, "steps": 501, "cfg_scale": -1}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.get("rc").is_none());
    assert_eq!(
        body["errors"]["params.width"],
        "100 is not a multiple of 64"
    );
    assert_eq!(
        body["errors"]["params.steps"],
        "501 is greater than the maximum of 500"
    );
    assert_eq!(
        body["errors"]["params.cfg_scale"],
        "-1 is less than the minimum of 0"
    );
    assert_eq!(body["errors"]["prompt"], "'' is too short");

    let (status, _, body) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "x", "params": {"sampler_name": "euler"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"]["params.sampler_name"]
        .as_str()
        .unwrap()
        .starts_with("'euler' is not one of ['k_lms'"));

    // A missing apikey header is a reqparse 400, not a 401.
    let (status, _, body) = sim.submit(None, json!({"prompt": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"]["apikey"].is_string());

    let (status, _, body) = sim.submit(Some("not-a-key"), json!({"prompt": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["rc"], "InvalidAPIKey");

    let rc_cases = [
        (
            json!({"prompt": "x", "params": {"cfg_scale": 7.555}}),
            "BadCFGDecimals",
        ),
        (
            json!({"prompt": "x", "params": {"loras": [{}, {}, {}, {}, {}, {}]}}),
            "TooManyLoras",
        ),
        (json!({"prompt": "word ".repeat(7501)}), "InvalidPromptSize"),
        (
            json!({"prompt": "x", "params": {"post_processing": ["RealESRGAN_x4plus", "NMKD_Siax"]}}),
            "TooManyUpscalers",
        ),
    ];
    for (body, rc) in rc_cases {
        let (status, _, answer) = sim.submit(Some(KEY), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rc}: {answer}");
        assert_eq!(answer["rc"], rc);
    }
    assert_eq!(sim.handle.stats().requests_created, 0);
}

#[tokio::test]
async fn dry_run_prices_without_queueing() {
    let sim = Sim::start(fast_config()).await;
    let (status, _, body) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "x", "dry_run": true, "params": {"n": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"kudos": 21.0}));
    assert_eq!(sim.handle.stats().requests_created, 0);
}

// ----- rate limits -----

#[tokio::test]
async fn burst_of_four_submits_gets_two_429s() {
    let sim = Sim::start(SimConfig {
        no_rate_limits: false,
        ..fast_config()
    })
    .await;
    let body = json!({"prompt": "x", "models": ["no such model"]});
    let answers =
        futures::future::join_all((0..4).map(|_| sim.submit(Some(KEY), body.clone()))).await;
    let accepted = answers
        .iter()
        .filter(|(status, ..)| *status == StatusCode::ACCEPTED)
        .count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((accepted, limited.len()), (2, 2));
    for (_, headers, body) in limited {
        assert_eq!(body, &json!({"message": "2 per 1 second"}));
        assert_eq!(header(headers, "retry-after"), "1");
        assert_eq!(header(headers, "x-ratelimit-limit"), "2");
        assert_eq!(header(headers, "x-ratelimit-remaining"), "0");
        let reset: u64 = header(headers, "x-ratelimit-reset").parse().unwrap();
        assert!(
            (epoch_now()..=epoch_now() + 3).contains(&reset),
            "reset {reset}"
        );
    }
    assert_eq!(sim.handle.stats().rate_limited, 2);
}

#[tokio::test]
async fn check_is_limited_to_ten_per_second_per_id() {
    let sim = Sim::start(SimConfig {
        no_rate_limits: false,
        ..fast_config()
    })
    .await;
    let id = sim
        .queue(json!({"prompt": "x", "models": ["no such model"]}))
        .await;
    let path = format!("generate/check/{id}");
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(sim.get(&path).await);
    }
    assert!(statuses[..10]
        .iter()
        .all(|(status, _)| *status == StatusCode::OK));
    assert_eq!(
        statuses[10],
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "10 per 1 second"})
        )
    );
    // The limit is per id: another request's check is unaffected.
    let other = sim
        .queue(json!({"prompt": "y", "models": ["no such model"]}))
        .await;
    assert_eq!(
        sim.get(&format!("generate/check/{other}")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn status_is_limited_to_ten_per_minute_per_method_and_id() {
    let sim = Sim::start(SimConfig {
        no_rate_limits: false,
        ..fast_config()
    })
    .await;
    let id = sim
        .queue(json!({"prompt": "x", "models": ["no such model"]}))
        .await;
    let url = sim.url(&format!("generate/status/{id}"));
    for _ in 0..10 {
        assert_eq!(
            sim.http.get(&url).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    let response = sim.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(response.headers(), "retry-after").parse().unwrap();
    assert!(
        (59..=60).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(header(response.headers(), "x-ratelimit-limit"), "10");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "10 per 1 minute"})
    );
    // DELETE of the same id has its own window.
    assert_eq!(
        sim.http.delete(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn default_limit_is_ninety_per_minute_and_heartbeat_is_exempt() {
    let sim = Sim::start(SimConfig {
        no_rate_limits: false,
        ..fast_config()
    })
    .await;
    for _ in 0..90 {
        assert_eq!(sim.get("status/models").await.0, StatusCode::OK);
    }
    assert_eq!(
        sim.get("status/models").await,
        (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"message": "90 per 1 minute"})
        )
    );
    // Counted per route: find_user still has its own 90.
    let response = sim
        .http
        .get(sim.url("find_user"))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..100 {
        assert_eq!(sim.get("status/heartbeat").await.0, StatusCode::OK);
    }
}

// ----- concurrency and kudos -----

#[tokio::test]
async fn concurrency_counts_waiting_images() {
    let sim = Sim::start(fast_config()).await;
    let first = sim
        .queue(json!({"prompt": "x", "models": ["no such model"], "params": {"n": 20}}))
        .await;
    let (status, headers, body) = sim
        .submit(Some(KEY), json!({"prompt": "x", "params": {"n": 12}}))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"message": "Parallel requests (32) exceeded user limit (30). Please try again later or request to increase your concurrency.",
               "rc": "TooManyPrompts"})
    );
    // Seen on the real server (docs/horde-api.md §9.1): a concurrency 429 says "0".
    assert_eq!(header(&headers, "retry-after"), "0");
    assert_eq!(sim.handle.stats().too_many_prompts, 1);
    // Cancelling sets n to 0, which frees the budget at once.
    assert_eq!(
        sim.delete(&format!("generate/status/{first}")).await.0,
        StatusCode::OK
    );
    sim.queue(json!({"prompt": "x", "params": {"n": 12}})).await;
}

#[tokio::test]
async fn upfront_kudos_are_required_for_expensive_requests() {
    let sim = Sim::start(SimConfig {
        user_kudos: 10.0,
        ..fast_config()
    })
    .await;
    // slow_workers=false always needs upfront kudos: 2 × (5.67 × 1.2 + 1) + 1 = 16.6 > 10.
    let (status, _, body) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "x", "slow_workers": false, "params": {"n": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["rc"], "KudosUpfront");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("requires 16.6 kudos"));

    // More than 40 accurate steps too (2 × 7.22 + 1 = 15.4 > 10); allow_downgrade
    // shrinks instead of refusing.
    let (status, _, body) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "x", "params": {"steps": 50, "n": 2}}),
        )
        .await;
    assert_eq!(
        (status, body["rc"].clone()),
        (StatusCode::FORBIDDEN, json!("KudosUpfront"))
    );
    let (status, _, _) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "x", "allow_downgrade": true, "params": {"steps": 50, "n": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // The anonymous user can go 50 below zero, no further: 2048² costs about 304 upfront.
    let (status, _, body) = sim
        .submit(
            Some(ANON),
            json!({"prompt": "x", "params": {"width": 2048, "height": 2048}}),
        )
        .await;
    assert_eq!(
        (status, body["rc"].clone()),
        (StatusCode::FORBIDDEN, json!("KudosUpfront"))
    );
}

#[tokio::test]
async fn kudos_are_charged_per_image_plus_tax() {
    let sim = Sim::start(fast_config()).await;
    let (_, _, accepted) = sim
        .submit(Some(KEY), json!({"prompt": "x", "params": {"n": 3}}))
        .await;
    assert_eq!(accepted["kudos"], 6.0);
    let check = sim.wait_done(accepted["id"].as_str().unwrap()).await;
    assert_eq!(check["kudos"], 24.0);
    assert_eq!(sim.handle.stats().kudos_charged, 24.0);
    let response = sim
        .http
        .get(sim.url("find_user"))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["kudos"], 100_000.0 - 24.0);
}

#[tokio::test]
async fn shared_keys_follow_their_limits() {
    let sim = Sim::start(fast_config()).await;
    let put = |key: &'static str, body: Value| {
        sim.http
            .put(sim.url("sharedkeys"))
            .header("apikey", key)
            .json(&body)
            .send()
    };
    let response = put(ANON, json!({"name": "anon"})).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.json::<Value>().await.unwrap()["rc"],
        "AnonForbidden"
    );

    let response = put(
        KEY,
        json!({"name": "limited", "kudos": 10, "max_image_steps": 20}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let details: Value = response.json().await.unwrap();
    let shared = details["id"].as_str().unwrap().to_owned();
    assert_eq!(details["kudos"], 10);
    assert!(details.get("expiry").is_none());

    let (status, _, body) = sim
        .submit(
            Some(&shared),
            json!({"prompt": "x", "params": {"steps": 30}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"message": "This shared key is limited to 20 steps per job. You requested 30 steps.", "rc": "BadRequest"})
    );
    let (status, _, body) = sim
        .submit(
            Some(&shared),
            json!({"prompt": "x", "params": {"steps": 20, "n": 3}}),
        )
        .await;
    assert_eq!(
        (status, body["rc"].clone()),
        (StatusCode::FORBIDDEN, json!("SharedKeyInsufficientKudos"))
    );

    let (status, body) = sim
        .get("sharedkeys/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(
        (status, body["rc"].clone()),
        (StatusCode::UNAUTHORIZED, json!("InvalidAPIKey"))
    );
    let response = sim
        .http
        .patch(sim.url(&format!("sharedkeys/{shared}")))
        .header("apikey", KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap()["rc"],
        "NoSharedKeyModSelected"
    );
    let response = sim
        .http
        .delete(sim.url(&format!("sharedkeys/{shared}")))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "OK"})
    );
}

#[tokio::test]
async fn find_user_and_models() {
    let sim = Sim::start(fast_config()).await;
    let (status, body) = sim.get("find_user").await;
    assert_eq!(
        (status, body["rc"].clone()),
        (StatusCode::UNAUTHORIZED, json!("InvalidAPIKey"))
    );
    let response = sim
        .http
        .get(sim.url("find_user"))
        .header("apikey", "nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.json::<Value>().await.unwrap()["rc"],
        "UserNotFound"
    );

    let id = sim
        .queue(json!({"prompt": "x", "models": ["no such model"]}))
        .await;
    let response = sim
        .http
        .get(sim.url("find_user"))
        .header("apikey", KEY)
        .send()
        .await
        .unwrap();
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["concurrency"], 30);
    assert_eq!(user["active_generations"]["image"], json!([id]));

    let (status, models) = sim.get("status/models").await;
    assert_eq!(status, StatusCode::OK);
    let models = models.as_array().unwrap();
    let default = models
        .iter()
        .find(|model| model["name"] == "stable_diffusion")
        .unwrap();
    assert_eq!(
        (default["count"].clone(), default["type"].clone()),
        (json!(2), json!("image"))
    );
}

// ----- workers -----

#[tokio::test]
async fn unknown_model_is_accepted_but_never_runs() {
    let sim = Sim::start(fast_config()).await;
    let (status, _, body) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "x", "models": ["no such model"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["warnings"][0]["code"], "NoAvailableWorker");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("It will expire in 20 minutes unless a worker appears"));
    // A known request next to it finishes while the unknown one keeps waiting.
    let other = sim.queue(json!({"prompt": "y"})).await;
    sim.wait_done(&other).await;
    let (_, check) = sim
        .get(&format!("generate/check/{}", body["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (check["is_possible"].clone(), check["waiting"].clone()),
        (json!(false), json!(1))
    );
    assert_eq!(check["done"], false);
    // Models listed by the server run normally: no warning.
    let (_, _, normal) = sim
        .submit(Some(KEY), json!({"prompt": "x", "models": ["Deliberate"]}))
        .await;
    assert!(normal.get("warnings").is_none() && normal.get("message").is_none());
}

#[tokio::test]
async fn faulted_images_are_dropped_and_the_request_still_ends_done() {
    let sim = Sim::start(SimConfig {
        fault_rate: 1.0,
        ..fast_config()
    })
    .await;
    let id = sim.queue(json!({"prompt": "x"})).await;
    let check = sim.wait_done(&id).await;
    assert_eq!(
        (
            check["finished"].clone(),
            check["restarted"].clone(),
            check["faulted"].clone()
        ),
        (json!(0), json!(2), json!(false))
    );
    let (_, status) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(status["generations"], json!([]));
    let stats = sim.handle.stats();
    assert_eq!(
        (
            stats.images_faulted,
            stats.images_dropped,
            stats.images_generated
        ),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn cleaner_marks_requests_with_more_than_two_faults() {
    let sim = Sim::start(SimConfig {
        fault_rate: 1.0,
        cleanup_interval: Duration::from_millis(100),
        ..fast_config()
    })
    .await;
    let id = sim.queue(json!({"prompt": "x", "params": {"n": 2}})).await;
    sim.wait_stats("the faulted flag", |stats| stats.requests_faulted == 1)
        .await;
    let (_, status) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(
        (status["faulted"].clone(), status["done"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(status["restarted"], 4);
}

#[tokio::test]
async fn censored_images_are_flagged() {
    let sim = Sim::start(SimConfig {
        censor_rate: 1.0,
        ..fast_config()
    })
    .await;
    let id = sim
        .queue(json!({"prompt": "x", "nsfw": false, "r2": false}))
        .await;
    sim.wait_done(&id).await;
    let (_, status) = sim.get(&format!("generate/status/{id}")).await;
    let generation = &status["generations"][0];
    assert_eq!(generation["censored"], true);
    let metadata = generation["gen_metadata"].as_array().unwrap();
    assert!(metadata.contains(&json!({"type": "censorship", "value": "nsfw"})));
    assert_eq!(sim.handle.stats().images_censored, 1);
}

#[tokio::test]
async fn expired_requests_answer_404() {
    let sim = Sim::start(SimConfig {
        expiry: Duration::from_millis(800),
        cleanup_interval: Duration::from_millis(100),
        ..fast_config()
    })
    .await;
    let id = sim.queue(json!({"prompt": "x"})).await;
    sim.wait_stats("the request to expire", |stats| stats.requests_expired == 1)
        .await;
    assert_eq!(
        sim.get(&format!("generate/check/{id}")).await,
        (
            StatusCode::NOT_FOUND,
            json!({"message": format!("Image Waiting Prompt (Check) with ID '{id}' not found."), "rc": "RequestNotFound"})
        )
    );
    let (status, body) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["message"],
        format!("Image Waiting Prompt (Status) with ID '{id}' not found.")
    );
    assert_eq!(sim.handle.stats().requests_never_retrieved, 1);
}

#[tokio::test]
async fn cancel_answers_the_status_before_it_and_in_flight_images_still_land() {
    let sim = Sim::start(SimConfig {
        workers: 1,
        latency: LatencySpec::fixed(Duration::from_millis(600)),
        ..fast_config()
    })
    .await;
    let id = sim.queue(json!({"prompt": "x", "params": {"n": 3}})).await;
    sim.wait_stats("a worker to pick an image", |stats| {
        stats.processing_images == 1
    })
    .await;
    let (status, cancelled) = sim.delete(&format!("generate/status/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            cancelled["processing"].clone(),
            cancelled["waiting"].clone(),
            cancelled["done"].clone()
        ),
        (json!(1), json!(2), json!(false))
    );
    assert_eq!(cancelled["generations"], json!([]));

    let stats = sim
        .wait_stats("the in-flight image", |stats| stats.images_generated == 1)
        .await;
    assert_eq!(stats.requests_cancelled, 1);
    // Cancelled counts as accounted for, even with an image nobody fetched.
    assert_eq!(
        (stats.requests_never_retrieved, stats.requests_orphaned),
        (0, 0)
    );
    let (_, after) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(
        (
            after["finished"].clone(),
            after["waiting"].clone(),
            after["done"].clone()
        ),
        (json!(1), json!(0), json!(true))
    );
    assert_eq!(after["generations"].as_array().unwrap().len(), 1);
    // No new pickups after the cancel. The one worker takes the oldest waiting
    // image (src/sim/workers.rs): had the cancel left any of the request's
    // images waiting, it would have taken one, before a probe queued now. So
    // once the probe is done, such an image would show in the count.
    let probe = sim.queue(json!({"prompt": "probe"})).await;
    sim.wait_done(&probe).await;
    let stats = sim.handle.stats();
    assert_eq!(
        (stats.images_generated, stats.processing_images),
        (2, 0),
        "the in-flight image and the probe's, nothing else"
    );
    // The request stays readable.
    assert_eq!(
        sim.get(&format!("generate/check/{id}")).await.0,
        StatusCode::OK
    );

    // With nothing in flight, a cancelled request is done at once.
    let idle = sim
        .queue(json!({"prompt": "x", "models": ["no such model"]}))
        .await;
    let (_, before) = sim.delete(&format!("generate/status/{idle}")).await;
    assert_eq!(before["done"], false);
    let (_, now) = sim.get(&format!("generate/status/{idle}")).await;
    assert_eq!(now["done"], true);
}

// ----- images -----

#[tokio::test]
async fn r2_urls_and_base64_both_carry_the_expected_webp() {
    let sim = Sim::start(fast_config()).await;
    let prompt = "a lighthouse ### blurry";
    let url_request = sim
        .queue(json!({"prompt": prompt, "params": {"n": 2, "seed": "1234"}}))
        .await;
    let inline_request = sim
        .queue(json!({"prompt": prompt, "r2": false, "params": {"seed": "1234"}}))
        .await;
    sim.wait_done(&url_request).await;
    sim.wait_done(&inline_request).await;

    let (_, status) = sim.get(&format!("generate/status/{url_request}")).await;
    let origin = sim.base.trim_end_matches("api/");
    for generation in status["generations"].as_array().unwrap() {
        assert_eq!(generation["seed"], "1234");
        let img = generation["img"].as_str().unwrap();
        assert!(img.starts_with(&format!(
            "{origin}sim/r2/{}.webp?",
            generation["id"].as_str().unwrap()
        )));
        let bytes = sim
            .http
            .get(img)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (width, height, pixels) = decode_webp(&bytes);
        // The requested size (the default 512×512).
        assert_eq!((width, height), (512, 512));
        let batch: u32 = generation["gen_metadata"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["type"] == "batch_index")
            .unwrap()["ref"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            pixels,
            sim::images::render_pixels_sized(prompt, "1234", batch, 512, 512)
        );
    }

    let (_, status) = sim.get(&format!("generate/status/{inline_request}")).await;
    let img = status["generations"][0]["img"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(img)
        .unwrap();
    assert_eq!(
        decode_webp(&bytes).2,
        sim::images::render_pixels_sized(prompt, "1234", 0, 512, 512)
    );

    let stats = sim.handle.stats();
    assert_eq!((stats.images_retrieved, stats.r2_downloads), (3, 2));
}

#[tokio::test]
async fn r2_urls_expire_and_cannot_be_forged() {
    let sim = Sim::start(SimConfig {
        r2_ttl: Duration::from_secs(1),
        ..fast_config()
    })
    .await;
    let id = sim.queue(json!({"prompt": "x"})).await;
    sim.wait_done(&id).await;
    let (_, status) = sim.get(&format!("generate/status/{id}")).await;
    let img = status["generations"][0]["img"].as_str().unwrap().to_owned();
    assert_eq!(
        sim.http.get(&img).send().await.unwrap().status(),
        StatusCode::OK
    );

    let forged = img.replace("expires=", "expires=9");
    assert_eq!(
        sim.http.get(&forged).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = sim.http.get(&img).send().await.unwrap().status();
        if status == StatusCode::FORBIDDEN {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(Instant::now() < deadline, "the URL never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A fresh status call mints a fresh URL.
    let (_, status) = sim.get(&format!("generate/status/{id}")).await;
    let fresh = status["generations"][0]["img"].as_str().unwrap();
    assert_eq!(
        sim.http.get(fresh).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn status_lists_only_finished_images_and_is_repeatable() {
    let sim = Sim::start(SimConfig {
        workers: 1,
        latency: LatencySpec::fixed(Duration::from_millis(300)),
        ..fast_config()
    })
    .await;
    let id = sim.queue(json!({"prompt": "x", "params": {"n": 2}})).await;
    sim.wait_stats("the first image", |stats| stats.images_generated == 1)
        .await;
    let (_, partial) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(partial["generations"].as_array().unwrap().len(), 1);
    assert_eq!(partial["finished"], 1);
    sim.wait_done(&id).await;
    let (_, first) = sim.get(&format!("generate/status/{id}")).await;
    let (_, second) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(first["generations"].as_array().unwrap().len(), 2);
    assert_eq!(
        first["generations"][0]["id"],
        second["generations"][0]["id"]
    );
}

// ----- stats, chaos, determinism -----

#[tokio::test]
async fn stats_count_calls_retrievals_and_leftovers() {
    let sim = Sim::start(fast_config()).await;
    let retrieved = sim
        .queue(json!({"prompt": "x", "r2": false, "params": {"n": 2}}))
        .await;
    let forgotten = sim.queue(json!({"prompt": "y"})).await;
    sim.wait_done(&retrieved).await;
    sim.wait_done(&forgotten).await;
    sim.get(&format!("generate/status/{retrieved}")).await;
    sim.get("generate/check/not-a-uuid").await;

    let stats: SimStats = sim
        .http
        .get(format!("{}sim/stats", sim.base.trim_end_matches("api/")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats.calls_with_status("POST /api/v2/generate/async", 202),
        2
    );
    assert_eq!(
        stats.calls_with_status("GET /api/v2/generate/status/{id}", 200),
        1
    );
    assert_eq!(
        stats.calls_with_status("GET /api/v2/generate/check/{id}", 404),
        1
    );
    assert_eq!(stats.requests_created, 2);
    assert_eq!(stats.requests_retrieved, 1);
    assert_eq!(stats.requests_never_retrieved, 1);
    assert_eq!(stats.images_generated, 3);
    assert_eq!(stats.images_retrieved, 2);
    assert_eq!(stats.images_never_retrieved, 1);
    assert_eq!(
        (
            stats.waiting_images,
            stats.processing_images,
            stats.live_requests
        ),
        (0, 0, 2)
    );
    // The direct snapshot is the same data (it does not count as a call).
    assert_eq!(sim.handle.stats().calls, stats.calls);
}

#[tokio::test]
async fn chaos_knobs_each_show() {
    let heartbeat = |sim: &Sim| sim.http.get(sim.url("status/heartbeat")).send();

    let errors = Sim::start(SimConfig {
        chaos_5xx: 1.0,
        ..fast_config()
    })
    .await;
    let status = heartbeat(&errors).await.unwrap().status();
    assert!(status.is_server_error(), "{status}");
    assert_eq!(errors.handle.stats().chaos.server_errors, 1);

    let drops = Sim::start(SimConfig {
        chaos_drop: 1.0,
        ..fast_config()
    })
    .await;
    assert!(heartbeat(&drops).await.is_err());
    assert_eq!(drops.handle.stats().chaos.dropped, 1);

    let broken = Sim::start(SimConfig {
        chaos_malformed: 1.0,
        ..fast_config()
    })
    .await;
    let response = heartbeat(&broken).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let slow = Sim::start(SimConfig {
        chaos_slow: 1.0,
        chaos_slow_delay: Duration::from_millis(300),
        ..fast_config()
    })
    .await;
    let started = Instant::now();
    assert_eq!(heartbeat(&slow).await.unwrap().status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(slow.handle.stats().chaos.slowed, 1);
}

/// What a run exposes that must repeat under one seed.
async fn observable_run(seed: u64) -> Vec<Value> {
    let sim = Sim::start(SimConfig {
        seed: Some(seed),
        fault_rate: 0.3,
        censor_rate: 0.3,
        latency: LatencySpec {
            min: Duration::from_millis(5),
            max: Duration::from_millis(40),
        },
        ..fast_config()
    })
    .await;
    let mut seen = Vec::new();
    for prompt in ["a", "b", "c"] {
        let id = sim
            .queue(json!({"prompt": prompt, "r2": false, "params": {"n": 4}}))
            .await;
        sim.wait_done(&id).await;
        let (_, mut status) = sim.get(&format!("generate/status/{id}")).await;
        let mut generations: Vec<Value> = status["generations"]
            .as_array_mut()
            .unwrap()
            .drain(..)
            .map(|generation| {
                json!([
                    generation["id"],
                    generation["seed"],
                    generation["censored"],
                    generation["img"]
                ])
            })
            .collect();
        generations.sort_by_key(|generation| generation[0].as_str().unwrap().to_owned());
        seen.push(json!({"id": id, "restarted": status["restarted"], "generations": generations}));
    }
    sim.handle.shutdown().await;
    seen
}

#[tokio::test]
async fn runs_are_reproducible_under_a_seed() {
    let (first, second, other) =
        tokio::join!(observable_run(42), observable_run(42), observable_run(43));
    assert_eq!(first, second);
    assert_ne!(first, other);
}

// ----- docs/horde-api.md §9.1: where a simulator could be kinder than the server -----

async fn find_user_body(sim: &Sim, key: &str) -> (StatusCode, Value) {
    let response = sim
        .http
        .get(sim.url("find_user"))
        .header("apikey", key)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn find_user_is_cached_per_key_so_a_new_request_shows_late() {
    let cache = Duration::from_millis(400);
    let sim = Sim::start(SimConfig {
        find_user_cache: cache,
        ..fast_config()
    })
    .await;
    let (_, before) = find_user_body(&sim, KEY).await;
    let filled = Instant::now();
    assert!(before.get("active_generations").is_none(), "{before}");
    let id = sim
        .queue(json!({"prompt": "x", "models": ["no such model"]}))
        .await;
    // Within the window: the very body the cache was filled with.
    let (_, cached) = find_user_body(&sim, KEY).await;
    if filled.elapsed() < cache {
        assert_eq!(cached, before);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, now) = find_user_body(&sim, KEY).await;
        if now.get("active_generations").is_some() {
            assert!(filled.elapsed() >= cache, "listed before the cache expired");
            assert_eq!(now["active_generations"], json!({"image": [id]}));
            break;
        }
        assert!(Instant::now() < deadline, "never listed: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn find_user_lists_every_live_request_in_the_real_shape() {
    let sim = Sim::start(SimConfig {
        find_user_cache: Duration::ZERO,
        ..fast_config()
    })
    .await;
    let (_, empty) = find_user_body(&sim, KEY).await;
    assert!(empty.get("active_generations").is_none(), "{empty}");
    assert_eq!(
        empty["usage"],
        json!({"megapixelsteps": null, "requests": null})
    );
    assert_eq!(
        empty["contributions"],
        json!({"megapixelsteps": null, "fulfillments": null})
    );
    assert!(empty["kudos_details"]["accumulated"].is_f64(), "{empty}");

    // Finished and retrieved requests stay listed until they expire.
    let done = sim.queue(json!({"prompt": "x"})).await;
    sim.wait_done(&done).await;
    sim.get(&format!("generate/status/{done}")).await;
    let open = sim
        .queue(json!({"prompt": "x", "models": ["no such model"]}))
        .await;
    let (_, user) = find_user_body(&sim, KEY).await;
    assert_eq!(user["active_generations"], json!({"image": [done, open]}));

    let (_, anonymous) = find_user_body(&sim, ANON).await;
    assert!(anonymous.get("active_generations").is_none());
}

#[tokio::test]
async fn an_unknown_key_is_echoed_by_find_user() {
    let sim = Sim::start(fast_config()).await;
    let (status, body) = find_user_body(&sim, "not-a-known-key-42").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"message": "User with api_key 'not-a-known-key-42' not found.", "rc": "UserNotFound"})
    );
}

#[tokio::test]
async fn wait_time_is_zero_for_small_jobs_that_still_wait() {
    // The default workers, latency and advertised speed (rate limits off only
    // to submit in a burst).
    let sim = Sim::start(SimConfig {
        seed: Some(3),
        no_rate_limits: true,
        ..SimConfig::default()
    })
    .await;
    let small = json!({"prompt": "x", "models": ["stable_diffusion"],
                       "params": {"n": 10, "width": 64, "height": 64, "steps": 5}});
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, _, body) = sim.submit(Some(ANON), small.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // 4 workers at 2 s an image: the last request's images wait for seconds.
    let (_, last) = sim.get(&format!("generate/check/{}", ids[3])).await;
    assert_eq!(last["waiting"], 10, "{last}");
    assert_eq!(
        (last["wait_time"].clone(), last["queue_position"].clone()),
        (json!(0), json!(3))
    );
    let (_, first) = sim.get(&format!("generate/check/{}", ids[0])).await;
    assert_eq!(
        (first["wait_time"].clone(), first["queue_position"].clone()),
        (json!(0), json!(0))
    );
    assert!(first["waiting"].as_u64().unwrap() > 0, "{first}");

    // Megapixel-steps, not images, drive it: 20 × 1024² × 30 steps = 629
    // MPS over 4 × 50 MPS/s.
    let (status, _, big) = sim
        .submit(
            Some(ANON),
            json!({"prompt": "x", "params": {"n": 20, "width": 1024, "height": 1024}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{big}");
    let (_, check) = sim
        .get(&format!("generate/check/{}", big["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (check["wait_time"].clone(), check["queue_position"].clone()),
        (json!(3), json!(4))
    );
}

#[tokio::test]
async fn retry_after_comes_with_every_answer_of_a_limited_route() {
    let sim = Sim::start(SimConfig {
        no_rate_limits: false,
        ..fast_config()
    })
    .await;
    let (status, headers, body) = sim.submit(Some(KEY), json!({"prompt": "x"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(header(&headers, "retry-after"), "1");
    assert_eq!(
        header(&headers, "content-type"),
        "application/json; charset=utf-8"
    );
    let id = body["id"].as_str().unwrap();
    let check = sim
        .http
        .get(sim.url(&format!("generate/check/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), StatusCode::OK);
    assert_eq!(header(check.headers(), "retry-after"), "1");
    let status = sim
        .http
        .get(sim.url(&format!("generate/status/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    assert_eq!(header(status.headers(), "retry-after"), "60");
    let cancel = sim
        .http
        .delete(sim.url(&format!("generate/status/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    assert_eq!(header(cancel.headers(), "retry-after"), "60");
}

#[tokio::test]
async fn kudos_figures_differ_like_the_real_servers() {
    let sim = Sim::start(fast_config()).await;
    let body = json!({"prompt": "x", "params": {"n": 3, "width": 64, "height": 64, "steps": 5}});
    let mut dry = body.clone();
    dry["dry_run"] = json!(true);
    let (status, _, priced) = sim.submit(Some(KEY), dry).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(priced, json!({"kudos": 14.0}));
    let (_, _, accepted) = sim.submit(Some(KEY), body).await;
    assert_eq!(accepted["kudos"], 3.0);
    let check = sim.wait_done(accepted["id"].as_str().unwrap()).await;
    assert_eq!(check["kudos"], 15.0);
}

#[tokio::test]
async fn a_request_flagged_faulted_mid_image_gets_that_image_later() {
    // One worker, seed 22: the first three attempts of the first request fault
    // and the fourth succeeds (the draws are a function of the seed alone).
    let sim = Sim::start(SimConfig {
        workers: 1,
        seed: Some(22),
        fault_rate: 0.5,
        latency: LatencySpec::fixed(Duration::from_millis(800)),
        cleanup_interval: Duration::from_millis(50),
        ..fast_config()
    })
    .await;
    let id = sim.queue(json!({"prompt": "x", "params": {"n": 4}})).await;
    sim.wait_stats("the faulted flag", |stats| stats.requests_faulted == 1)
        .await;
    let (_, at_done) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(
        (
            at_done["done"].clone(),
            at_done["faulted"].clone(),
            at_done["processing"].clone(),
            at_done["restarted"].clone()
        ),
        (json!(true), json!(true), json!(1), json!(3)),
        "{at_done}"
    );
    assert_eq!(at_done["generations"], json!([]));

    let stats = sim
        .wait_stats("the image in flight", |stats| stats.images_generated == 1)
        .await;
    assert_eq!(
        (
            stats.requests_orphaned,
            stats.requests_never_retrieved,
            stats.requests_retrieved
        ),
        (1, 1, 0)
    );
    let (_, later) = sim.get(&format!("generate/status/{id}")).await;
    assert_eq!(later["generations"].as_array().unwrap().len(), 1);
    assert_eq!(
        (later["finished"].clone(), later["processing"].clone()),
        (json!(1), json!(0))
    );
    let stats = sim.handle.stats();
    assert_eq!((stats.requests_orphaned, stats.requests_retrieved), (0, 1));
}

#[tokio::test]
async fn worker_lists_choose_who_serves_a_request() {
    let sim = Sim::start(fast_config()).await;
    let (status, workers) = sim.get("workers?type=image").await;
    assert_eq!(status, StatusCode::OK);
    let workers = workers.as_array().unwrap().clone();
    assert_eq!(workers.len(), 2);
    let ids: Vec<String> = workers
        .iter()
        .map(|worker| worker["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()));
    // Stable under the seed.
    let again = Sim::start(fast_config()).await;
    assert_eq!(again.get("workers?type=image").await.1, json!(workers));

    let served_by = |status: &Value| -> Vec<String> {
        status["generations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|generation| generation["worker_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let only = sim
        .queue(json!({"prompt": "x", "workers": [ids[1]], "params": {"n": 4}}))
        .await;
    let except = sim
        .queue(json!({"prompt": "x", "workers": [ids[1]], "worker_blacklist": true, "params": {"n": 4}}))
        .await;
    sim.wait_done(&only).await;
    sim.wait_done(&except).await;
    let (_, status) = sim.get(&format!("generate/status/{only}")).await;
    assert_eq!(served_by(&status), vec![ids[1].clone(); 4]);
    let (_, status) = sim.get(&format!("generate/status/{except}")).await;
    assert_eq!(served_by(&status), vec![ids[0].clone(); 4]);

    // Nobody left to serve it: accepted with the warning, and not possible.
    let (status, _, nobody) = sim
        .submit(
            Some(KEY),
            json!({"prompt": "x", "workers": ids, "worker_blacklist": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(nobody["warnings"][0]["code"], "NoAvailableWorker");
    let (_, check) = sim
        .get(&format!(
            "generate/check/{}",
            nobody["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(check["is_possible"], false);

    let unknown = "00000000-0000-4000-8000-000000000000";
    let (status, _, body) = sim
        .submit(Some(KEY), json!({"prompt": "x", "workers": [unknown]}))
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"message": format!("Worker with ID '{unknown}' not found."), "rc": "WorkerNotFound"})
        )
    );
}

#[tokio::test]
async fn images_have_the_requested_size() {
    let sim = Sim::start(fast_config()).await;
    let id = sim
        .queue(json!({"prompt": "wide", "r2": false,
                      "params": {"width": 192, "height": 128, "seed": "7"}}))
        .await;
    sim.wait_done(&id).await;
    let (_, status) = sim.get(&format!("generate/status/{id}")).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(status["generations"][0]["img"].as_str().unwrap())
        .unwrap();
    let (width, height, pixels) = decode_webp(&bytes);
    assert_eq!((width, height), (192, 128));
    assert_eq!(
        pixels,
        sim::images::render_pixels_sized("wide", "7", 0, 192, 128)
    );
}

#[tokio::test]
async fn submit_latency_answers_after_the_request_exists() {
    let sim = Sim::start(SimConfig {
        submit_latency: Duration::from_millis(600),
        ..fast_config()
    })
    .await;
    let started = Instant::now();
    let submit = sim
        .http
        .post(sim.url("generate/async"))
        .header("apikey", KEY)
        .header("Client-Agent", AGENT)
        .json(&json!({"prompt": "x"}))
        .send();
    let answer = tokio::spawn(submit);
    sim.wait_stats("the request to exist", |stats| stats.requests_created == 1)
        .await;
    assert!(!answer.is_finished(), "answered before the submit latency");
    let response = answer.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn a_lost_answer_is_carried_out_then_cut_off() {
    let sim = Sim::start(SimConfig {
        chaos_lost_answer: 1.0,
        ..fast_config()
    })
    .await;
    let sent = sim
        .http
        .post(sim.url("generate/async"))
        .header("apikey", KEY)
        .header("Client-Agent", AGENT)
        .json(&json!({"prompt": "x"}))
        .send()
        .await;
    let lost = match sent {
        Err(_) => true,
        Ok(response) => response.bytes().await.is_err(),
    };
    assert!(lost, "an answer arrived");
    let stats = sim.handle.stats();
    assert_eq!(stats.requests_created, 1);
    assert_eq!(
        (
            stats.chaos.lost_answers,
            stats.chaos.processed_then_lost,
            stats.chaos.dropped
        ),
        (1, 1, 0)
    );
    assert_eq!(stats.calls_with_status("POST /api/v2/generate/async", 0), 1);
}
