//! The typed Horde client (`horde_batch::horde`) against the simulated Horde
//! (`horde_batch::sim`) over loopback: the two halves of one contract.
//!
//! The simulator shares no code with the client, so every test here checks
//! that what one side sends the other side reads the same way: each endpoint
//! the client has, and each failure class as [`HordeError::class`] reports it
//! for the answers the simulator really gives.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use horde_batch::horde::{
    ApiKey, ClientConfig, FailureClass, GenerationParams, GenerationRequest, HordeClient,
    HordeError, HordeErrorKind, ImageSource, Operation, RequestCheck, SharedKeyInput,
    TransportStage,
};
use horde_batch::output::verify_webp;
use horde_batch::sim::{self, LatencySpec, SimApiKey, SimConfig, SimHandle, SimStats};
use reqwest::Url;

const KEY: &str = "client-sim-key-0001";
const OTHER_KEY: &str = "client-sim-key-0002";
const MODEL: &str = "stable_diffusion";
const UNSERVED_MODEL: &str = "no such model";
const SUBMIT: &str = "POST /api/v2/generate/async";
const IMAGE_LIMIT: usize = 1024 * 1024;
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// A fast, limit-free simulator with one registered key; tests turn on what they test.
fn fast_config() -> SimConfig {
    SimConfig {
        workers: 2,
        latency: LatencySpec::fixed(Duration::from_millis(20)),
        seed: Some(11),
        no_rate_limits: true,
        api_keys: vec![SimApiKey::new(KEY), SimApiKey::new(OTHER_KEY)],
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> SimHandle {
    sim::spawn(config).await.expect("simulator starts")
}

/// A client of `sim` with `key` and short transport timeouts.
fn client_with(sim: &SimHandle, key: ApiKey) -> HordeClient {
    let mut config = ClientConfig::new(Url::parse(&sim.base_url()).unwrap(), key);
    config.contact = "tests@example.org".into();
    config.connect_timeout = Duration::from_secs(2);
    config.read_timeout = Duration::from_secs(5);
    HordeClient::new(config).unwrap()
}

/// A client of `sim` with the registered key.
fn client(sim: &SimHandle) -> HordeClient {
    client_with(sim, ApiKey::new(KEY))
}

fn request(n: u32) -> GenerationRequest {
    GenerationRequest::new("a lighthouse", vec![MODEL.into()], GenerationParams::new(n))
}

/// A request no simulated worker serves: it stays waiting until cancelled or expired.
fn unserved_request(n: u32) -> GenerationRequest {
    GenerationRequest::new(
        "a lighthouse",
        vec![UNSERVED_MODEL.into()],
        GenerationParams::new(n),
    )
}

fn expect_err<T: Debug>(result: Result<T, HordeError>) -> HordeError {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(err) => err,
    }
}

/// Status, rc and class of an API error in one comparable tuple.
fn summary(err: &HordeError) -> (Option<u16>, Option<&str>, FailureClass) {
    (err.status(), err.rc(), err.class())
}

/// Polls `/check` through the client until `done`, within 10 s.
async fn wait_done(client: &HordeClient, id: &str) -> RequestCheck {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let check = client.check(id).await.unwrap();
        if check.done {
            return check;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} never finished: {check:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the simulator's counters satisfy `condition`, within 10 s.
async fn wait_stats(sim: &SimHandle, what: &str, condition: impl Fn(&SimStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = sim.stats();
        if condition(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ----- endpoints -----

#[tokio::test]
async fn submit_check_status_hand_out_r2_urls_that_download_as_webp() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let accepted = client.submit(&request(2)).await.unwrap();
    assert!(!accepted.id.is_empty());
    assert!(accepted.kudos > 0.0, "{accepted:?}");
    assert!(!accepted.has_no_available_worker() && accepted.message.is_none());

    let check = wait_done(&client, &accepted.id).await;
    assert_eq!(
        (
            check.finished,
            check.waiting,
            check.processing,
            check.faulted
        ),
        (2, 0, 0, false)
    );
    assert!(check.is_possible && check.kudos > 0.0, "{check:?}");

    let status = client.status(&accepted.id).await.unwrap();
    assert!(status.check.done);
    assert_eq!(status.generations.len(), 2);
    let origin = sim.base_url().trim_end_matches("api/").to_owned();
    let mut batch_indexes = BTreeSet::new();
    for generation in &status.generations {
        assert_eq!(generation.model, MODEL);
        assert!(!generation.seed.is_empty() && !generation.worker_id.is_empty());
        assert!(!generation.censored);
        batch_indexes.insert(generation.batch_index().expect("batch_index metadata"));
        let ImageSource::Url(url) = generation.image_source() else {
            panic!("r2 defaults to true, so img is a URL: {:?}", generation.img);
        };
        assert!(url.starts_with(&format!("{origin}sim/r2/{}.webp?", generation.id)));
        let bytes = client
            .download_image(&url, IMAGE_LIMIT, DOWNLOAD_TIMEOUT)
            .await
            .unwrap();
        let info = verify_webp(&bytes).unwrap();
        // The requested size (the default 512×512).
        assert_eq!((info.width, info.height), (512, 512));
    }
    assert_eq!(batch_indexes, BTreeSet::from([0, 1]));

    let stats = sim.stats();
    assert_eq!(
        (
            stats.requests_created,
            stats.requests_retrieved,
            stats.r2_downloads,
            stats.images_retrieved
        ),
        (1, 1, 2, 2)
    );
}

#[tokio::test]
async fn image_downloads_refused_by_storage_or_too_large_are_classified() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let id = client.submit(&request(1)).await.unwrap().id;
    wait_done(&client, &id).await;
    let status = client.status(&id).await.unwrap();
    let ImageSource::Url(url) = status.generations[0].image_source() else {
        panic!("expected a URL: {:?}", status.generations[0].img);
    };

    // A tampered signature: object storage answers 403, which means "get a fresh link".
    let forged = url.replace("expires=", "expires=9");
    let err = expect_err(
        client
            .download_image(&forged, IMAGE_LIMIT, DOWNLOAD_TIMEOUT)
            .await,
    );
    assert_eq!(err.endpoint.operation, Operation::DownloadImage);
    assert_eq!(
        (err.status(), err.class()),
        (Some(403), FailureClass::Expired)
    );
    assert!(!err.to_string().contains("signature="), "{err}");

    let err = expect_err(client.download_image(&url, 16, DOWNLOAD_TIMEOUT).await);
    assert_eq!(err.kind, HordeErrorKind::BodyTooLarge { limit: 16 });
    assert_eq!(err.class(), FailureClass::Permanent);

    // Storage served the oversized download; only the client gave up on it.
    let stats = sim.stats();
    assert_eq!((stats.r2_refused, stats.r2_downloads), (1, 1));
}

#[tokio::test]
async fn base64_delivery_decodes_to_webp() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let mut inline = request(1);
    inline.r2 = false;
    let id = client.submit(&inline).await.unwrap().id;
    wait_done(&client, &id).await;

    let status = client.status(&id).await.unwrap();
    assert_eq!(status.generations.len(), 1);
    let ImageSource::Base64(encoded) = status.generations[0].image_source() else {
        panic!(
            "r2: false delivers base64, got {:?}",
            status.generations[0].img
        );
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let info = verify_webp(&bytes).unwrap();
    assert_eq!((info.width, info.height), (512, 512));
    let stats = sim.stats();
    assert_eq!((stats.images_retrieved, stats.r2_downloads), (1, 0));
}

#[tokio::test]
async fn dry_run_prices_without_creating_a_request_and_submit_never_dry_runs() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let kudos = client.dry_run(&request(3)).await.unwrap();
    assert!(kudos > 0.0, "{kudos}");
    // What the live server answered for this request (docs/horde-api.md §9); the 202 says 6 per image.
    assert_eq!(kudos, 21.0);
    let stats = sim.stats();
    assert_eq!(stats.requests_created, 0);
    assert_eq!(stats.calls_with_status(SUBMIT, 200), 1);

    // A request that asks for a dry run is still queued by submit.
    let mut flagged = request(1);
    flagged.dry_run = true;
    let accepted = client.submit(&flagged).await.unwrap();
    assert!(!accepted.id.is_empty());
    let stats = sim.stats();
    assert_eq!(stats.requests_created, 1);
    assert_eq!(stats.calls_with_status(SUBMIT, 202), 1);
}

#[tokio::test]
async fn cancel_answers_the_status_before_it_and_the_request_stays_readable() {
    let sim = start(SimConfig {
        workers: 1,
        latency: LatencySpec::fixed(Duration::from_millis(400)),
        ..fast_config()
    })
    .await;
    let client = client(&sim);
    let id = client.submit(&request(3)).await.unwrap().id;
    wait_stats(&sim, "a worker to pick an image", |stats| {
        stats.processing_images == 1
    })
    .await;

    let before = client.cancel(&id).await.unwrap();
    assert_eq!(
        (
            before.check.processing,
            before.check.waiting,
            before.check.finished,
            before.check.done
        ),
        (1, 2, 0, false)
    );
    assert!(before.generations.is_empty());
    assert_eq!(sim.stats().requests_cancelled, 1);

    // Still readable, and the image in flight still lands.
    client.status(&id).await.unwrap();
    let check = wait_done(&client, &id).await;
    assert_eq!((check.finished, check.waiting), (1, 0));
    let after = client.status(&id).await.unwrap();
    assert_eq!(after.generations.len(), 1);
    // Cancelling again is harmless and counted once.
    let again = client.cancel(&id).await.unwrap();
    assert!(again.check.done);
    assert_eq!(sim.stats().requests_cancelled, 1);
}

#[tokio::test]
async fn find_user_describes_anonymous_and_registered_users() {
    // Without the 30 s cache, so the new request shows at once (see
    // find_user_is_cached_for_thirty_seconds_by_default).
    let sim = start(SimConfig {
        user_concurrency: 7,
        user_kudos: 1234.0,
        find_user_cache: Duration::ZERO,
        ..fast_config()
    })
    .await;
    let anonymous = client_with(&sim, ApiKey::anonymous());
    assert!(anonymous.is_anonymous());
    let user = anonymous.find_user().await.unwrap();
    assert!(user.username.starts_with("Anonymous"), "{user:?}");
    assert_eq!(user.id, 0);
    assert!(user.concurrency > 0);

    let registered = client(&sim);
    let user = registered.find_user().await.unwrap();
    assert_eq!((user.concurrency, user.kudos), (7, 1234.0));
    assert!(user.id > 0 && !user.username.is_empty(), "{user:?}");
    assert!(user.active_generations.image.is_empty());

    let id = registered.submit(&unserved_request(1)).await.unwrap().id;
    let user = registered.find_user().await.unwrap();
    assert_eq!(user.active_generations.image, vec![id]);
}

#[tokio::test]
async fn find_user_is_cached_for_thirty_seconds_by_default() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let before = client.find_user().await.unwrap();
    assert!(before.active_generations.image.is_empty());
    client.submit(&unserved_request(1)).await.unwrap();
    // The cached answer: neither the new request nor its 3 kudos of tax show.
    let after = client.find_user().await.unwrap();
    assert_eq!(after, before);
}

#[tokio::test]
async fn models_list_the_served_model_and_heartbeat_is_ok() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let models = client.models().await.unwrap();
    let served = models
        .iter()
        .find(|model| model.name == MODEL)
        .unwrap_or_else(|| panic!("{MODEL} missing from {models:?}"));
    assert_eq!((served.count, served.kind.as_str()), (2, "image"));
    assert!(models.iter().all(|model| model.name != UNSERVED_MODEL));

    let heartbeat = client.heartbeat().await.unwrap();
    assert_eq!(heartbeat.message, "OK");
    assert!(!heartbeat.version.is_empty());
}

#[tokio::test]
async fn shared_key_lifecycle_create_get_update_use_delete() {
    let sim = start(fast_config()).await;
    let owner = client(&sim);
    let created = owner
        .create_shared_key(&SharedKeyInput {
            kudos: Some(500),
            name: Some("batch-tests".into()),
            max_image_steps: Some(40),
            ..SharedKeyInput::default()
        })
        .await
        .unwrap();
    assert!(!created.id.is_anonymous());
    assert_eq!(
        (
            created.kudos,
            created.name.as_str(),
            created.max_image_steps,
            created.utilized
        ),
        (500, "batch-tests", 40, 0)
    );
    assert_eq!((created.expiry, created.max_image_pixels), (None, -1));

    // Reading needs no key.
    let anonymous = client_with(&sim, ApiKey::anonymous());
    assert_eq!(anonymous.shared_key(&created.id).await.unwrap(), created);

    let updated = owner
        .update_shared_key(
            &created.id,
            &SharedKeyInput {
                kudos: Some(400),
                expiry: Some(2),
                ..SharedKeyInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((updated.kudos, updated.name.as_str()), (400, "batch-tests"));
    let expiry = updated.expiry.expect("an expiry in two days").system_time();
    let in_two_days = SystemTime::now() + Duration::from_secs(2 * 86_400);
    let skew = match expiry.duration_since(in_two_days) {
        Ok(late) => late,
        Err(early) => early.duration(),
    };
    assert!(skew <= Duration::from_secs(60), "expiry {expiry:?}");
    // Someone else cannot change it.
    let stranger = client_with(&sim, ApiKey::new(OTHER_KEY));
    let err = expect_err(
        stranger
            .update_shared_key(
                &created.id,
                &SharedKeyInput {
                    kudos: Some(1),
                    ..SharedKeyInput::default()
                },
            )
            .await,
    );
    assert_eq!(
        summary(&err),
        (Some(403), Some("Forbidden"), FailureClass::Auth)
    );
    assert!(
        !err.to_string().contains(created.id.expose_secret()),
        "{err}"
    );
    // An empty change is a payload error.
    let err = expect_err(
        owner
            .update_shared_key(&created.id, &SharedKeyInput::default())
            .await,
    );
    assert_eq!(
        summary(&err),
        (
            Some(400),
            Some("NoSharedKeyModSelected"),
            FailureClass::Permanent
        )
    );

    // The shared key works as an apikey and is charged for what it queues.
    let borrower = client_with(&sim, created.id.clone());
    let id = borrower.submit(&request(1)).await.unwrap().id;
    wait_done(&borrower, &id).await;
    let used = owner.shared_key(&created.id).await.unwrap();
    assert!(used.utilized > 0, "{used:?}");
    assert!(used.kudos < 400, "{used:?}");
    // find_user with a shared key describes its owner.
    let as_owner = borrower.find_user().await.unwrap();
    assert!(
        as_owner.username.ends_with(" (Shared Key: batch-tests)"),
        "{as_owner:?}"
    );
    assert_eq!(as_owner.id, owner.find_user().await.unwrap().id);
    // expiry -1 clears the expiry.
    let cleared = owner
        .update_shared_key(
            &created.id,
            &SharedKeyInput {
                expiry: Some(-1),
                ..SharedKeyInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.expiry, None);

    owner.delete_shared_key(&created.id).await.unwrap();
    let err = expect_err(owner.shared_key(&created.id).await);
    assert_eq!(
        summary(&err),
        (Some(401), Some("InvalidAPIKey"), FailureClass::Auth)
    );
    let err = expect_err(borrower.submit(&request(1)).await);
    assert_eq!(
        summary(&err),
        (Some(401), Some("InvalidAPIKey"), FailureClass::Auth)
    );
}

// ----- failure classes -----

#[tokio::test]
async fn schema_validation_errors_are_permanent_with_their_field_map() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let err = expect_err(client.submit(&request(21)).await);
    assert_eq!(summary(&err), (Some(400), None, FailureClass::Permanent));
    assert_eq!(err.message(), Some("Input payload validation failed"));
    let HordeErrorKind::Api {
        errors,
        retry_after,
        ..
    } = &err.kind
    else {
        panic!("expected an API error: {err:?}");
    };
    assert_eq!(
        errors.get("params.n").map(String::as_str),
        Some("21 is greater than the maximum of 20")
    );
    // flask-limiter puts Retry-After on every answer of a limited route (docs/horde-api.md
    // §9.1); on a 400 it means nothing, so the client does not read it as a wait.
    assert_eq!(*retry_after, None);
    assert!(!err.outcome_unknown());
    assert!(err.to_string().contains("params.n"), "{err}");

    // The dry run goes through the same validation.
    let err = expect_err(client.dry_run(&request(21)).await);
    assert_eq!(summary(&err), (Some(400), None, FailureClass::Permanent));
    assert_eq!(sim.stats().requests_created, 0);
}

#[tokio::test]
async fn payload_return_codes_are_permanent() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    let cases = [
        (
            GenerationParams::new(1).with("cfg_scale", 7.555),
            "BadCFGDecimals",
            "cfg_scale must be rounded to 2 decimal places",
        ),
        (
            GenerationParams::new(1).with("loras", serde_json::json!([{}, {}, {}, {}, {}, {}])),
            "TooManyLoras",
            "You cannot request more than 5 loras per generation.",
        ),
    ];
    for (params, rc, message) in cases {
        let body = GenerationRequest::new("x", vec![MODEL.into()], params);
        let err = expect_err(client.submit(&body).await);
        assert_eq!(
            summary(&err),
            (Some(400), Some(rc), FailureClass::Permanent)
        );
        assert_eq!(err.message(), Some(message));
        // Sent on every answer of the route (docs/horde-api.md §9.1), meaningless on a 400:
        // only a 429's or 503's Retry-After is a wait.
        assert_eq!(err.retry_after(), None);
        assert!(!err.outcome_unknown());
    }
    assert_eq!(sim.stats().requests_created, 0);
}

#[tokio::test]
async fn unknown_key_is_an_auth_failure() {
    let sim = start(fast_config()).await;
    let stranger = client_with(&sim, ApiKey::new("not-a-registered-key"));
    let err = expect_err(stranger.submit(&request(1)).await);
    assert_eq!(
        summary(&err),
        (Some(401), Some("InvalidAPIKey"), FailureClass::Auth)
    );
    assert!(
        err.message()
            .unwrap()
            .contains("No user matching sent API Key"),
        "{err}"
    );
    assert!(!format!("{err} {err:?} {stranger:?}").contains("not-a-registered-key"));

    let err = expect_err(stranger.dry_run(&request(1)).await);
    assert_eq!(err.class(), FailureClass::Auth);
    // find_user answers an unknown key with 404 UserNotFound: still Auth.
    let err = expect_err(stranger.find_user().await);
    assert_eq!(
        summary(&err),
        (Some(404), Some("UserNotFound"), FailureClass::Auth)
    );
    // Only a registered user may create shared keys; the anonymous one is refused.
    let anonymous = client_with(&sim, ApiKey::anonymous());
    let err = expect_err(
        anonymous
            .create_shared_key(&SharedKeyInput::default())
            .await,
    );
    assert_eq!(
        summary(&err),
        (Some(403), Some("AnonForbidden"), FailureClass::Auth)
    );
}

#[tokio::test]
async fn a_burst_of_four_submits_gets_two_rate_limited() {
    let sim = start(SimConfig {
        no_rate_limits: false,
        ..fast_config()
    })
    .await;
    let client = client(&sim);
    let body = unserved_request(1);
    let answers = futures::future::join_all((0..4).map(|_| client.submit(&body))).await;
    let (accepted, limited): (Vec<_>, Vec<_>) = answers.into_iter().partition(Result::is_ok);
    assert_eq!((accepted.len(), limited.len()), (2, 2));
    for err in limited.into_iter().map(expect_err) {
        assert_eq!(summary(&err), (Some(429), None, FailureClass::RateLimited));
        assert_eq!(err.message(), Some("2 per 1 second"));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(err.concurrency_limit(), None);
        assert!(!err.outcome_unknown());
    }
    let stats = sim.stats();
    assert_eq!((stats.rate_limited, stats.requests_created), (2, 2));
}

#[tokio::test]
async fn polling_past_the_check_and_status_limits_is_rate_limited() {
    let sim = start(SimConfig {
        no_rate_limits: false,
        ..fast_config()
    })
    .await;
    let client = client(&sim);
    let id = client.submit(&unserved_request(1)).await.unwrap().id;

    for _ in 0..10 {
        client.check(&id).await.unwrap();
    }
    let err = expect_err(client.check(&id).await);
    assert_eq!(summary(&err), (Some(429), None, FailureClass::RateLimited));
    assert_eq!(err.message(), Some("10 per 1 second"));
    assert!(err.retry_after().is_some(), "{err:?}");

    for _ in 0..10 {
        client.status(&id).await.unwrap();
    }
    let err = expect_err(client.status(&id).await);
    assert_eq!(summary(&err), (Some(429), None, FailureClass::RateLimited));
    assert_eq!(err.message(), Some("10 per 1 minute"));
    let retry_after = err.retry_after().expect("a limiter 429 has Retry-After");
    assert!(
        (Duration::from_secs(59)..=Duration::from_secs(60)).contains(&retry_after),
        "{retry_after:?}"
    );
    // DELETE of the same id is counted separately, so a cancel still gets through.
    client.cancel(&id).await.unwrap();
    assert_eq!(sim.stats().rate_limited, 2);
}

#[tokio::test]
async fn too_many_prompts_is_concurrency_full_with_the_limit() {
    const LIMIT: u32 = 4;
    let sim = start(SimConfig {
        workers: 1,
        latency: LatencySpec::fixed(Duration::from_secs(5)),
        user_concurrency: LIMIT,
        ..fast_config()
    })
    .await;
    let client = client(&sim);
    let first = client.submit(&request(3)).await.unwrap().id;

    // 2 or 3 images wait (the worker may have taken one); 3 more exceed 4.
    let err = expect_err(client.submit(&request(3)).await);
    assert_eq!(
        summary(&err),
        (
            Some(429),
            Some("TooManyPrompts"),
            FailureClass::ConcurrencyFull
        )
    );
    assert_eq!(err.concurrency_limit(), Some(LIMIT));
    assert!(
        err.message().unwrap().contains("exceeded user limit (4)"),
        "{err}"
    );
    // The real server was seen sending "Retry-After: 0" here (docs/horde-api.md §9.1).
    assert_eq!(err.retry_after(), Some(Duration::ZERO));
    assert!(!err.outcome_unknown());
    assert_eq!(sim.stats().too_many_prompts, 1);

    // One more image still fits, whether or not the worker took one already.
    client.submit(&request(1)).await.unwrap();
    // Cancelling frees the budget at once.
    client.cancel(&first).await.unwrap();
    client.submit(&request(2)).await.unwrap();
}

#[tokio::test]
async fn missing_upfront_kudos_is_the_kudos_class() {
    let sim = start(SimConfig {
        user_kudos: 10.0,
        ..fast_config()
    })
    .await;
    let client = client(&sim);
    // slow_workers=false always needs upfront kudos: 2 × (5.67 × 1.2 + 1) + 1 = 16.6 > 10.
    let mut fast_only = request(2);
    fast_only.slow_workers = false;
    let err = expect_err(client.submit(&fast_only).await);
    assert_eq!(
        summary(&err),
        (Some(403), Some("KudosUpfront"), FailureClass::Kudos)
    );
    assert!(
        err.message().unwrap().contains("requires 16.6 kudos"),
        "{err}"
    );
    assert!(!err.outcome_unknown());

    // allow_downgrade shrinks the request instead of refusing it.
    fast_only.allow_downgrade = true;
    client.submit(&fast_only).await.unwrap();

    // A shared key without enough kudos is the same class.
    let key = client
        .create_shared_key(&SharedKeyInput {
            kudos: Some(5),
            name: Some("tiny".into()),
            ..SharedKeyInput::default()
        })
        .await
        .unwrap();
    let borrower = client_with(&sim, key.id);
    let err = expect_err(borrower.submit(&request(3)).await);
    assert_eq!(
        summary(&err),
        (
            Some(403),
            Some("SharedKeyInsufficientKudos"),
            FailureClass::Kudos
        )
    );
    let empty = client
        .create_shared_key(&SharedKeyInput {
            kudos: Some(0),
            name: Some("empty".into()),
            ..SharedKeyInput::default()
        })
        .await
        .unwrap();
    let err = expect_err(client_with(&sim, empty.id).submit(&request(1)).await);
    assert_eq!(
        summary(&err),
        (Some(403), Some("SharedKeyEmpty"), FailureClass::Kudos)
    );
    assert_eq!(sim.stats().requests_created, 1);
}

#[tokio::test]
async fn unknown_request_ids_are_expired() {
    let sim = start(fast_config()).await;
    let client = client(&sim);
    for id in ["00000000-0000-4000-8000-000000000000", "not-a-uuid"] {
        let err = expect_err(client.check(id).await);
        assert_eq!(
            summary(&err),
            (Some(404), Some("RequestNotFound"), FailureClass::Expired)
        );
        assert_eq!(err.endpoint.request_id.as_deref(), Some(id));
        assert!(err.message().unwrap().contains(id), "{err}");
        let err = expect_err(client.status(id).await);
        assert_eq!(err.class(), FailureClass::Expired);
        let err = expect_err(client.cancel(id).await);
        assert_eq!(err.class(), FailureClass::Expired);
    }
}

#[tokio::test]
async fn an_expired_request_answers_request_not_found() {
    let sim = start(SimConfig {
        expiry: Duration::from_millis(500),
        cleanup_interval: Duration::from_millis(50),
        ..fast_config()
    })
    .await;
    let client = client(&sim);
    let accepted = client.submit(&unserved_request(1)).await.unwrap();
    assert!(accepted.has_no_available_worker(), "{accepted:?}");
    assert!(accepted.message.is_some());
    let id = accepted.id;
    assert!(!client.check(&id).await.unwrap().is_possible);
    wait_stats(&sim, "the request to expire", |stats| {
        stats.requests_expired == 1
    })
    .await;

    let err = expect_err(client.status(&id).await);
    assert_eq!(
        summary(&err),
        (Some(404), Some("RequestNotFound"), FailureClass::Expired)
    );
    let err = expect_err(client.cancel(&id).await);
    assert_eq!(err.class(), FailureClass::Expired);

    // /check answers are cached for a second, so it may still say "waiting" for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match client.check(&id).await {
            Err(err) => break err,
            Ok(check) => {
                assert!(Instant::now() < deadline, "check never expired: {check:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        summary(&err),
        (Some(404), Some("RequestNotFound"), FailureClass::Expired)
    );
}

#[tokio::test]
async fn server_errors_are_transient_and_leave_a_submit_unknown() {
    let sim = start(SimConfig {
        chaos_5xx: 1.0,
        ..fast_config()
    })
    .await;
    let client = client(&sim);

    // The chaos status varies per call (500 JSON, or a proxy's 502/503/504 HTML page).
    let mut statuses = BTreeSet::new();
    for _ in 0..8 {
        let err = expect_err(client.heartbeat().await);
        let status = err.status().expect("the server answered");
        assert!((500..=599).contains(&status), "{err}");
        assert_eq!((err.rc(), err.class()), (None, FailureClass::Transient));
        assert!(!err.message().unwrap_or_default().is_empty());
        assert!(!err.outcome_unknown(), "a heartbeat is idempotent");
        statuses.insert(status);
    }
    // Deterministic under the seed: both the JSON 500 and a proxy's HTML page were seen.
    assert!(
        statuses.contains(&500) && statuses.len() > 1,
        "{statuses:?}"
    );

    let err = expect_err(client.submit(&request(1)).await);
    assert!((500..=599).contains(&err.status().unwrap()), "{err}");
    assert_eq!(err.class(), FailureClass::Transient);
    assert!(err.outcome_unknown(), "a 5xx submit may have been queued");
    assert_eq!(err.retry_after(), None);

    let err = expect_err(client.check("00000000-0000-4000-8000-000000000000").await);
    assert_eq!(err.class(), FailureClass::Transient);
    assert!(!err.outcome_unknown());
    assert_eq!(sim.stats().chaos.server_errors, 10);
}

#[tokio::test]
async fn dropped_connections_are_transient_and_leave_a_submit_unknown() {
    let sim = start(SimConfig {
        chaos_drop: 1.0,
        ..fast_config()
    })
    .await;
    let client = client(&sim);

    let err = expect_err(client.submit(&request(1)).await);
    let HordeErrorKind::Transport { stage, .. } = &err.kind else {
        panic!("expected a transport error: {err:?}");
    };
    assert_ne!(*stage, TransportStage::Connect, "{err}");
    assert_eq!((err.status(), err.class()), (None, FailureClass::Transient));
    assert!(err.outcome_unknown(), "the submit may have been queued");

    let err = expect_err(client.heartbeat().await);
    assert_eq!(err.class(), FailureClass::Transient);
    assert!(!err.outcome_unknown());
    assert_eq!(sim.stats().chaos.dropped, 2);
}

#[tokio::test]
async fn malformed_bodies_are_transient_and_leave_a_submit_unknown() {
    let sim = start(SimConfig {
        chaos_malformed: 1.0,
        ..fast_config()
    })
    .await;
    let client = client(&sim);
    let err = expect_err(client.submit(&request(1)).await);
    let HordeErrorKind::Decode { status, .. } = &err.kind else {
        panic!("expected a decode error: {err:?}");
    };
    assert!((200..300).contains(status), "{err}");
    assert_eq!(err.class(), FailureClass::Transient);
    assert!(err.outcome_unknown());

    let err = expect_err(client.heartbeat().await);
    assert_eq!(err.class(), FailureClass::Transient);
    assert!(!err.outcome_unknown());
    assert_eq!(sim.stats().chaos.malformed, 2);
}

#[tokio::test]
async fn a_submit_that_times_out_is_transient_and_may_have_been_queued() {
    let sim = start(SimConfig {
        chaos_slow: 1.0,
        chaos_slow_delay: Duration::from_secs(3),
        ..fast_config()
    })
    .await;
    let mut config = ClientConfig::new(Url::parse(&sim.base_url()).unwrap(), ApiKey::new(KEY));
    config.read_timeout = Duration::from_millis(300);
    let client = HordeClient::new(config).unwrap();

    let err = expect_err(client.submit(&request(1)).await);
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.class(), FailureClass::Transient);
    assert!(err.outcome_unknown());
    // The slow knob answers late but acts at once: the request really was queued.
    assert_eq!(sim.stats().requests_created, 1);

    let err = expect_err(client.heartbeat().await);
    assert!(err.is_timeout(), "{err:?}");
    assert!(!err.outcome_unknown());
}
