//! Tests of the simulated Horde's alchemy (the interrogation API) over real
//! HTTP against a `horde-batch sim` child: each rule the sim copies from the
//! real server (docs/horde-api.md §10 (alchemy)) gets a test that would fail
//! if the sim were kinder than the server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::{stat, wait_until, Sim};

const KEY: &str = "alchemy-key-0001";
const DEADLINE: Duration = Duration::from_secs(20);

/// One HTTP answer: status, headers (lowercase names) and body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

/// A raw HTTP/1.1 call with `Connection: close` (no client library in the way).
#[track_caller]
fn call(sim: &Sim, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let authority = sim
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&authority).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// `POST /api/v2/interrogate/async` with `body`, as `key` (none: no header).
#[track_caller]
fn post(sim: &Sim, key: Option<&str>, body: &Value) -> Answer {
    let headers: Vec<(&str, &str)> = key.map(|key| ("apikey", key)).into_iter().collect();
    call(
        sim,
        "POST",
        "/api/v2/interrogate/async",
        &headers,
        &body.to_string(),
    )
}

/// Posts and expects a 202: the request id.
#[track_caller]
fn interrogate(sim: &Sim, body: Value) -> String {
    let answer = post(sim, Some(KEY), &body);
    assert_eq!(answer.status, 202, "{}", answer.json());
    let id = answer.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(answer.json(), json!({ "id": id }));
    id
}

#[track_caller]
fn status(sim: &Sim, id: &str) -> Answer {
    call(
        sim,
        "GET",
        &format!("/api/v2/interrogate/status/{id}"),
        &[],
        "",
    )
}

#[track_caller]
fn cancel(sim: &Sim, id: &str) -> Value {
    let answer = call(
        sim,
        "DELETE",
        &format!("/api/v2/interrogate/status/{id}"),
        &[],
        "",
    );
    assert_eq!(answer.status, 200, "{}", answer.json());
    answer.json()
}

/// Polls the status until `condition` holds on it; returns that status.
#[track_caller]
fn wait_status(sim: &Sim, id: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until(what, DEADLINE, || {
        last = status(sim, id).json();
        condition(&last)
    });
    last
}

/// The entry of form `name` in a status body (the first one, for duplicates).
#[track_caller]
fn form<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["forms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|form| form["form"] == name)
        .unwrap_or_else(|| panic!("no form {name} in {status}"))
}

/// A PNG of `width`×`height` with a gradient (distinct pixels), its bytes.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    })
    .write_to(&mut out, image::ImageFormat::Png)
    .unwrap();
    out.into_inner()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn forms(names: &[&str]) -> Value {
    Value::Array(names.iter().map(|name| json!({ "name": name })).collect())
}

/// A fast sim with one registered key and no rate limits, plus `extra` flags.
fn fast_sim(extra: &[&str]) -> Sim {
    let base = [
        "--seed",
        "7",
        "--api-key",
        KEY,
        "--workers",
        "0",
        "--no-rate-limits",
    ];
    let form_time: &[&str] = if extra.contains(&"--alchemy-form-time") {
        &[]
    } else {
        &["--alchemy-form-time", "50ms"]
    };
    Sim::start(&[&base[..], form_time, extra].concat())
}

fn user_kudos(sim: &Sim) -> f64 {
    sim.get_json("/sim/users")["users"][1]["kudos"]
        .as_f64()
        .unwrap()
}

#[test]
fn a_request_reaches_done_with_every_result_shape() {
    let sim = fast_sim(&[]);
    let source = png(64, 48);
    let id = interrogate(
        &sim,
        json!({"source_image": b64(&source), "unknown_key": 1, "trusted_workers": false,
               "forms": [{"name": "caption"}, {"name": "interrogation"}, {"name": "nsfw"},
                         {"name": "aesthetic", "payload": {"anything": 3}}, {"name": "GFPGAN"}]}),
    );
    let done = wait_status(&sim, &id, "done", |s| s["state"] == "done");
    assert_eq!(done["forms"].as_array().unwrap().len(), 5);
    for entry in done["forms"].as_array().unwrap() {
        let keys: BTreeSet<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, BTreeSet::from(["form", "result", "state"]), "{entry}");
        assert_eq!(entry["state"], "done");
    }
    let caption = form(&done, "caption")["result"]["caption"]
        .as_str()
        .unwrap();
    // Derived from the server's re-encoding, never from the client's bytes.
    assert!(!caption.contains(&sha256_hex(&source)[..8]), "{caption}");
    assert!(caption.contains("(64x48)"), "{caption}");
    assert!(form(&done, "nsfw")["result"]["nsfw"].is_boolean());
    assert!(form(&done, "aesthetic")["result"]["aesthetic"].is_f64());
    let details = &form(&done, "interrogation")["result"]["interrogation"];
    for field in [
        "tags",
        "sites",
        "artists",
        "flavors",
        "mediums",
        "movements",
        "techniques",
    ] {
        assert!(details[field].is_array(), "{field} in {details}");
    }
    let tag = &details["tags"][0];
    assert!(
        tag["text"].is_string() && tag["confidence"].is_f64(),
        "{tag}"
    );
    assert!(form(&done, "GFPGAN")["result"]["GFPGAN"]
        .as_str()
        .unwrap()
        .contains("&Expires="));

    let stats = sim.stats();
    assert_eq!(stat(&stats, "alchemy_requests_created"), 1);
    assert_eq!(stat(&stats, "alchemy_forms_delivered"), 5);
    assert_eq!(stat(&stats, "alchemy_forms_open"), 0);
    assert_eq!(stat(&stats, "alchemy_forms_unretrieved"), 0);
    // caption, nsfw, aesthetic 3 each; interrogation 5; GFPGAN on one tile 5.
    assert_eq!(stats["alchemy_kudos_charged"].as_f64(), Some(19.0));
    assert_eq!(user_kudos(&sim), 100_000.0 - 19.0);
    assert_eq!(stats["calls"]["POST /api/v2/interrogate/async"]["202"], 1);
}

#[test]
fn forms_are_listed_in_a_new_order_on_every_read() {
    let sim = fast_sim(&["--alchemists", "0"]);
    let id = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)),
               "forms": forms(&["caption", "nsfw", "describe", "palette", "aesthetic", "GFPGAN"])}),
    );
    let orders: BTreeSet<Vec<String>> = (0..8)
        .map(|_| {
            let body = status(&sim, &id).json();
            assert_eq!(body["state"], "waiting");
            body["forms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|form| form["form"].as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    assert!(orders.len() > 1, "the same order on 8 reads: {orders:?}");
}

#[test]
fn delete_cancels_what_is_not_done_and_charges_a_form_in_progress() {
    let sim = fast_sim(&["--alchemists", "1", "--alchemy-form-time", "400ms"]);
    let id = interrogate(
        &sim,
        json!({"source_image": b64(&png(16, 16)),
               "forms": forms(&["caption", "interrogation", "describe"])}),
    );
    wait_status(&sim, &id, "caption done, interrogation processing", |s| {
        form(s, "caption")["state"] == "done" && form(s, "interrogation")["state"] == "processing"
    });
    let cancelled = cancel(&sim, &id);
    assert_eq!(cancelled["state"], "partial", "{cancelled}");
    assert!(form(&cancelled, "caption")["result"]["caption"].is_string());
    for name in ["interrogation", "describe"] {
        assert_eq!(
            form(&cancelled, name),
            &json!({"form": name, "state": "cancelled"})
        );
    }
    // caption 3, and interrogation 5 though it was never delivered.
    assert_eq!(sim.stats()["alchemy_kudos_charged"].as_f64(), Some(8.0));
    assert_eq!(cancel(&sim, &id)["state"], "partial", "idempotent");
    assert_eq!(status(&sim, &id).json()["state"], "partial");

    // The alchemist's later submit of the cancelled form is refused: once it
    // has moved on to the next request, nothing more was delivered or charged.
    let next = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)), "forms": forms(&["nsfw"])}),
    );
    let done = wait_status(&sim, &next, "the next request done", |s| {
        s["state"] == "done"
    });
    let after = cancel(&sim, &next);
    assert_eq!(
        after["state"], "done",
        "DELETE on a done request changes nothing"
    );
    assert_eq!(form(&after, "nsfw"), form(&done, "nsfw"));
    let stats = sim.stats();
    assert_eq!(stat(&stats, "alchemy_forms_delivered"), 2);
    assert_eq!(stats["alchemy_kudos_charged"].as_f64(), Some(11.0));
    assert_eq!(stat(&stats, "alchemy_requests_cancelled"), 1);
    assert_eq!(user_kudos(&sim), 100_000.0 - 11.0);
}

#[test]
fn a_done_request_expires_into_a_404() {
    let sim = fast_sim(&["--alchemy-expiry", "1s", "--cleanup-interval", "200ms"]);
    let id = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)), "forms": forms(&["caption"])}),
    );
    wait_status(&sim, &id, "done", |s| s["state"] == "done");
    let mut gone = None;
    wait_until("the request deleted", DEADLINE, || {
        let answer = status(&sim, &id);
        let done = answer.status == 404;
        gone = Some(answer);
        done
    });
    let gone = gone.unwrap().json();
    assert_eq!(gone["rc"], "RequestNotFound");
    assert_eq!(
        gone["message"],
        format!(
            "Interrogation with ID '{id}' not found. You have requested this URI \
             [/api/v2/interrogate/status/{id}] but did you mean \
             /api/v2/interrogate/status/<string:id> ?"
        )
    );
    let delete = call(
        &sim,
        "DELETE",
        &format!("/api/v2/interrogate/status/{id}"),
        &[],
        "",
    );
    assert_eq!(delete.status, 404);
}

#[test]
fn a_form_nobody_serves_waits_silently() {
    let sim = fast_sim(&[]);
    let unserved = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)), "forms": forms(&["describe"])}),
    );
    let untrusted_only = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)), "trusted_workers": true, "forms": forms(&["caption"])}),
    );
    let served = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)), "forms": forms(&["caption"])}),
    );
    wait_status(&sim, &served, "the later request done", |s| {
        s["state"] == "done"
    });
    let body = status(&sim, &unserved).json();
    assert_eq!(
        body,
        json!({"state": "waiting", "forms": [{"form": "describe", "state": "waiting"}]})
    );
    // The simulated alchemists are not trusted: they never serve it.
    assert_eq!(status(&sim, &untrusted_only).json()["state"], "waiting");
    assert_eq!(stat(&sim.stats(), "alchemy_forms_open"), 2);
}

#[test]
fn a_form_faulted_four_times_is_faulted_and_free() {
    let sim = fast_sim(&["--alchemy-fault-form", "aesthetic"]);
    let id = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)), "forms": forms(&["aesthetic"])}),
    );
    let body = wait_status(&sim, &id, "faulted", |s| s["state"] == "faulted");
    assert_eq!(
        body["forms"],
        json!([{"form": "aesthetic", "state": "faulted"}])
    );
    let stats = sim.stats();
    assert_eq!(stats["alchemy_kudos_charged"].as_f64(), Some(0.0));
    assert_eq!(stat(&stats, "alchemy_forms_delivered"), 0);

    // A request without forms is faulted at once, and never charged.
    let empty = interrogate(&sim, json!({"source_image": b64(&png(8, 8))}));
    assert_eq!(
        status(&sim, &empty).json(),
        json!({"state": "faulted", "forms": []})
    );
}

#[test]
fn too_many_forms_are_refused_at_concurrency_times_ten() {
    let sim = Sim::start(&[
        "--api-key",
        &format!("{KEY},concurrency=1"),
        "--alchemists",
        "0",
        "--workers",
        "0",
    ]);
    let source = b64(&png(8, 8));
    interrogate(
        &sim,
        json!({"source_image": source, "forms": forms(&["caption"; 6])}),
    );
    let refused = post(
        &sim,
        Some(KEY),
        &json!({"source_image": source, "forms": forms(&["nsfw"; 5])}),
    );
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.json(),
        json!({"message": "Parallel requests (11) exceeded user limit (10). Please try again later or request to increase your concurrency.", "rc": "TooManyPrompts"})
    );
    assert_eq!(stat(&sim.stats(), "alchemy_requests_created"), 1);
    interrogate(
        &sim,
        json!({"source_image": source, "forms": forms(&["nsfw"; 4])}),
    );
}

#[test]
fn the_91st_post_in_a_minute_is_rate_limited() {
    let sim = Sim::start(&["--api-key", KEY, "--alchemists", "0", "--workers", "0"]);
    let first = post(&sim, Some(KEY), &json!({"source_image": b64(&png(8, 8))}));
    assert_eq!(first.status, 202);
    assert_eq!(first.headers["x-ratelimit-limit"], "90");
    assert_eq!(first.headers["x-ratelimit-remaining"], "89");
    assert!(first.headers.contains_key("retry-after"));
    // Invalid POSTs use up the budget too.
    for _ in 1..90 {
        assert_eq!(post(&sim, None, &json!({})).status, 400);
    }
    let limited = post(&sim, Some(KEY), &json!({"source_image": b64(&png(8, 8))}));
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json(), json!({"message": "90 per 1 minute"}));
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    assert!(limited.headers.contains_key("retry-after"));
}

#[test]
fn the_11th_status_read_in_a_second_is_rate_limited() {
    let sim = Sim::start(&["--api-key", KEY, "--alchemists", "0", "--workers", "0"]);
    let id = interrogate(
        &sim,
        json!({"source_image": b64(&png(8, 8)), "forms": forms(&["caption"])}),
    );
    let statuses: Vec<u16> = (0..10).map(|_| status(&sim, &id).status).collect();
    assert_eq!(statuses, [200; 10]);
    let limited = status(&sim, &id);
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json(), json!({"message": "10 per 1 second"}));
    assert!(limited.headers.contains_key("retry-after"));
    // Another path has its own window.
    assert_eq!(
        status(&sim, "00000000-0000-4000-8000-000000000000").status,
        404
    );
}

#[test]
fn post_processed_images_download_until_their_url_expires() {
    let sim = fast_sim(&["--alchemy-url-ttl", "2s"]);
    let id = interrogate(
        &sim,
        json!({"source_image": b64(&png(40, 30)),
               "forms": forms(&["RealESRGAN_x2plus", "4x_AnimeSharp", "strip_background"])}),
    );
    let done = wait_status(&sim, &id, "done", |s| s["state"] == "done");
    let path_of = |name: &str| {
        let url = form(&done, name)["result"][name]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(url.starts_with(&sim.url.replace("/api/", "/")), "{url}");
        assert!(
            url.contains("?AWSAccessKeyId=") && url.contains("&Signature="),
            "{url}"
        );
        format!("/{}", url.splitn(4, '/').nth(3).unwrap())
    };
    for (name, size, alpha) in [
        ("RealESRGAN_x2plus", (80, 60), false),
        ("4x_AnimeSharp", (160, 120), false),
        ("strip_background", (40, 30), true),
    ] {
        let answer = call(&sim, "GET", &path_of(name), &[], "");
        assert_eq!(answer.status, 200, "{name}");
        assert_eq!(answer.headers["content-type"], "image/webp");
        let image =
            image::load_from_memory_with_format(&answer.body, image::ImageFormat::WebP).unwrap();
        assert_eq!((image.width(), image.height()), size, "{name}");
        assert_eq!(image.color().has_alpha(), alpha, "{name}");
    }
    let path = path_of("RealESRGAN_x2plus");
    let bare = path.split('?').next().unwrap().to_owned();
    assert_eq!(call(&sim, "GET", &bare, &[], "").status, 403);
    let tampered = path.replace("&Signature=", "&Signature=x");
    assert_eq!(call(&sim, "GET", &tampered, &[], "").status, 403);

    // Refused once it expired; every read hands out the same URL.
    let mut last = None;
    wait_until("the URL expired", DEADLINE, || {
        let answer = call(&sim, "GET", &path, &[], "");
        let expired = answer.status == 403;
        last = Some(answer);
        expired
    });
    let body = String::from_utf8(last.unwrap().body).unwrap();
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(stat(&sim.stats(), "alchemy_urls_expired") >= 1);
    let reread = status(&sim, &id).json();
    assert_eq!(
        form(&reread, "RealESRGAN_x2plus"),
        form(&done, "RealESRGAN_x2plus")
    );
}

#[test]
fn costs_follow_the_table_and_are_keyed_by_the_clients_bytes() {
    let sim = fast_sim(&["--alchemy-form-time", "20ms"]);
    let small = png(8, 8);
    let large = png(1100, 600);
    let cases = [
        (
            json!({"source_image": b64(&small), "slow_workers": false,
                "forms": forms(&["caption", "interrogation"])}),
            2.0 + 4.0,
        ),
        (
            json!({"source_image": b64(&small), "forms": forms(&["nsfw", "nsfw"])}),
            3.0 + 3.0,
        ),
        (
            json!({"source_image": b64(&large), "forms": forms(&["GFPGAN"])}),
            20.0,
        ),
        (
            json!({"source_image": b64(&large), "slow_workers": false, "forms": forms(&["NMKD_Siax"])}),
            19.0,
        ),
        (json!({"source_image": b64(&small), "forms": []}), 0.0),
    ];
    let mut expected = 0.0;
    for (body, cost) in cases {
        let id = interrogate(&sim, body);
        wait_status(&sim, &id, "finished", |s| {
            s["state"] == "done" || s["state"] == "faulted"
        });
        expected += cost;
        assert_eq!(
            sim.stats()["alchemy_kudos_charged"].as_f64(),
            Some(expected)
        );
    }
    let charged = &sim.stats()["alchemy_charged"];
    assert_eq!(
        charged[sha256_hex(&small)],
        json!({"caption": 1, "interrogation": 1, "nsfw": 2})
    );
    assert_eq!(
        charged[sha256_hex(&large)],
        json!({"GFPGAN": 1, "NMKD_Siax": 1})
    );
    assert_eq!(charged.as_object().unwrap().len(), 2);
}

#[test]
fn workers_lists_alchemists_by_type() {
    let sim = Sim::start(&["--workers", "1", "--alchemists", "2", "--no-rate-limits"]);
    let list = |query: &str| call(&sim, "GET", &format!("/api/v2/workers{query}"), &[], "").json();
    let alchemists = list("?type=interrogation");
    assert_eq!(alchemists.as_array().unwrap().len(), 2);
    for alchemist in alchemists.as_array().unwrap() {
        assert_eq!(alchemist["type"], "interrogation");
        assert_eq!(alchemist["performance"], "2.0 seconds per form");
        let forms = alchemist["forms"].as_array().unwrap();
        assert!(forms.contains(&json!("caption")) && forms.contains(&json!("RealESRGAN_x2plus")));
        assert!(!forms.contains(&json!("describe")));
    }
    let images = list("?type=image");
    assert_eq!(images.as_array().unwrap().len(), 1);
    assert_eq!(images[0]["type"], "image");
    assert_eq!(list("").as_array().unwrap().len(), 3);
}

#[test]
fn bad_requests_get_the_servers_answers() {
    let sim = Sim::start(&[
        "--api-key",
        KEY,
        "--alchemists",
        "0",
        "--workers",
        "0",
        "--no-rate-limits",
    ]);
    let image = b64(&png(8, 8));
    let bad = |key: Option<&str>, body: Value| {
        let answer = post(&sim, key, &body);
        (answer.status, answer.json())
    };
    let validation = |field: &str, message: &str| json!({"errors": { field: message }, "message": "Input payload validation failed"});
    assert_eq!(
        bad(None, json!({"source_image": image})),
        (
            400,
            validation(
                "apikey",
                "A User API key Missing required parameter in the HTTP headers"
            )
        )
    );
    let (status, body) = bad(Some("unknown-key"), json!({"source_image": image}));
    assert_eq!((status, body["rc"].as_str()), (401, Some("InvalidAPIKey")));
    let (status, body) = bad(
        Some(KEY),
        json!({"source_image": image, "forms": [{"name": "bogus"}]}),
    );
    assert_eq!(status, 400);
    assert!(
        body["errors"]["forms.0.name"]
            .as_str()
            .unwrap()
            .starts_with("'bogus' is not one of ['caption', "),
        "{body}"
    );
    assert_eq!(
        bad(
            Some(KEY),
            json!({"source_image": image, "forms": [{"payload": {}}]})
        ),
        (
            400,
            validation("forms.0.name", "'name' is a required property")
        )
    );
    assert_eq!(
        bad(
            Some(KEY),
            json!({"source_image": image, "forms": "caption"})
        ),
        (400, validation("forms", "'caption' is not of type 'array'"))
    );
    assert_eq!(
        bad(Some(KEY), json!({"forms": forms(&["caption"])})),
        (
            400,
            validation(
                "source_image",
                "Missing required parameter in the JSON body"
            )
        )
    );
    let rc = |body: Value| {
        let (status, answer) = bad(Some(KEY), body);
        (
            status,
            answer["rc"].as_str().unwrap_or_default().to_owned(),
            answer["message"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (status, code, message) = rc(json!({"source_image": b64(b"not an image")}));
    assert_eq!((status, code.as_str()), (400, "ImageValidationFailed"));
    assert!(
        message.starts_with("Image validation failed. Please ensure"),
        "{message}"
    );
    let mut flat = std::io::Cursor::new(Vec::new());
    image::GrayImage::new(3073, 3072)
        .write_to(&mut flat, image::ImageFormat::Png)
        .unwrap();
    let (status, code, _) = rc(json!({"source_image": b64(flat.get_ref())}));
    assert_eq!(
        (status, code.as_str()),
        (400, "SourceImageResolutionExceeded")
    );
    let (status, code, message) =
        rc(json!({"source_image": image, "webhook": "http://example.invalid/hook"}));
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (
            400,
            "BadRequest",
            "webhooks need to point to an https endpoint."
        )
    );
    let (status, code, message) = rc(json!({"source_image": "https://example.invalid/a.png"}));
    assert_eq!((status, code.as_str()), (400, "ImageValidationFailed"));
    assert!(
        message.ends_with("Something went wrong when retrieving image url."),
        "{message}"
    );
    assert_eq!(stat(&sim.stats(), "alchemy_requests_created"), 0);
    // The anonymous key may interrogate.
    let anon = post(
        &sim,
        Some("0000000000"),
        &json!({"source_image": image, "forms": forms(&["caption"])}),
    );
    assert_eq!(anon.status, 202);
}

/// SHA-256 as lowercase hex, as the sim keys `alchemy_charged`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
