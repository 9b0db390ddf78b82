//! The layer in front of every `/api/v2` call: counts each answered call by
//! endpoint and status, adds the headers every real answer carries
//! (`Horde-Node`, CORS), and plays the chaos knobs.
//!
//! Chaos is decided per call from the run seed and the call's arrival
//! number, so a sequential client sees the same failures on every run.
//! A 5xx or a dropped connection may come after the call took effect (half
//! of them do): a proxy can lose the answer of a submit the server accepted,
//! and a client must survive that. A lost answer (`--chaos-lost-answer`)
//! always comes after the call took effect. This module must not touch state beyond
//! counting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use futures::stream;

use super::config::SimConfig;
use super::det::{Det, Part};
use super::routes::{json_response, set_header, App};

/// Largest answer body the malformed knob buffers.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Chaos rates and the call counter that keys their draws.
pub(crate) struct ChaosSettings {
    det: Det,
    server_error: f64,
    drop: f64,
    slow: f64,
    slow_delay: Duration,
    malformed: f64,
    lost_answer: f64,
    calls: AtomicU64,
}

impl ChaosSettings {
    pub(crate) fn new(config: &SimConfig, det: Det) -> Self {
        Self {
            det,
            server_error: config.chaos_5xx,
            drop: config.chaos_drop,
            slow: config.chaos_slow,
            slow_delay: config.chaos_slow_delay,
            malformed: config.chaos_malformed,
            lost_answer: config.chaos_lost_answer,
            calls: AtomicU64::new(0),
        }
    }
}

enum Mischief {
    None,
    ServerError {
        status: u16,
    },
    Drop,
    /// Processed in full, then the connection closes without the answer.
    LostAnswer,
    Malformed,
}

/// Middleware for `/api/v2/*`: chaos, accounting, common headers.
pub(crate) async fn api_layer(State(app): State<App>, request: Request, next: Next) -> Response {
    let endpoint = format!(
        "{} {}",
        request.method(),
        route_template(request.uri().path())
    );
    let chaos = &app.chaos;
    let call = chaos.calls.fetch_add(1, Ordering::Relaxed);
    let draw = |tag: &str| chaos.det.unit(tag, &[Part::Num(call)]);
    let mischief = if draw("chaos-drop") < chaos.drop {
        Mischief::Drop
    } else if draw("chaos-lost-answer") < chaos.lost_answer {
        Mischief::LostAnswer
    } else if draw("chaos-5xx") < chaos.server_error {
        let statuses = [500, 502, 503, 504];
        let pick = (draw("chaos-5xx-status") * statuses.len() as f64) as usize;
        Mischief::ServerError {
            status: statuses[pick.min(statuses.len() - 1)],
        }
    } else if draw("chaos-malformed") < chaos.malformed {
        Mischief::Malformed
    } else {
        Mischief::None
    };
    let slow = draw("chaos-slow") < chaos.slow;
    let process_anyway = draw("chaos-process-anyway") < 0.5;

    let answer = match mischief {
        Mischief::ServerError { .. } | Mischief::Drop if !process_anyway => None,
        _ => Some(next.run(request).await),
    };
    if slow {
        app.shared.lock().stats_mut().chaos.slowed += 1;
        tokio::time::sleep(chaos.slow_delay).await;
    }

    let lost_after_processing = answer.is_some();
    let mut response = match mischief {
        Mischief::None => answer.expect("calls without mischief are always processed"),
        Mischief::ServerError { status } => {
            let mut stats = app.shared.lock();
            stats.stats_mut().chaos.server_errors += 1;
            if lost_after_processing {
                stats.stats_mut().chaos.processed_then_lost += 1;
            }
            server_error(status)
        }
        Mischief::Drop | Mischief::LostAnswer => {
            {
                let mut stats = app.shared.lock();
                if matches!(mischief, Mischief::Drop) {
                    stats.stats_mut().chaos.dropped += 1;
                } else {
                    stats.stats_mut().chaos.lost_answers += 1;
                }
                if lost_after_processing {
                    stats.stats_mut().chaos.processed_then_lost += 1;
                }
                stats.record_call(endpoint, 0);
            }
            return dropped_connection();
        }
        Mischief::Malformed => {
            app.shared.lock().stats_mut().chaos.malformed += 1;
            let original = answer.expect("malformed answers are always processed");
            malformed(original).await
        }
    };
    set_header(&mut response, "horde-node", "horde-batch-sim".to_owned());
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    app.shared
        .lock()
        .record_call(endpoint, response.status().as_u16());
    response
}

/// The route a path belongs to, with the id segment as `{id}`.
fn route_template(path: &str) -> String {
    const WITH_ID: &[&str] = &[
        "/api/v2/generate/check/",
        "/api/v2/generate/status/",
        "/api/v2/interrogate/status/",
        "/api/v2/sharedkeys/",
    ];
    for prefix in WITH_ID {
        if let Some(id) = path.strip_prefix(prefix) {
            if !id.is_empty() && !id.contains('/') {
                return format!("{prefix}{{id}}");
            }
        }
    }
    const PLAIN: &[&str] = &[
        "/api/v2/generate/async",
        "/api/v2/interrogate/async",
        "/api/v2/find_user",
        "/api/v2/status/models",
        "/api/v2/status/heartbeat",
        "/api/v2/sharedkeys",
        "/api/v2/workers",
    ];
    if PLAIN.contains(&path) {
        path.to_owned()
    } else {
        "<unmatched>".to_owned()
    }
}

fn server_error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == 500 {
        return json_response(
            code,
            &serde_json::json!({"message": "Internal Server Error"}),
        );
    }
    // What a reverse proxy in front of the app answers.
    let reason = code.canonical_reason().unwrap_or("Error");
    let html = format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = code;
    set_header(&mut response, "content-type", "text/html".to_owned());
    response
}

/// An answer whose body fails before its first byte: hyper then closes the
/// connection without sending a complete response.
fn dropped_connection() -> Response {
    let failing = stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "chaos: connection dropped",
        ))
    });
    Response::new(Body::from_stream(failing))
}

/// A 200 whose JSON body is cut in half.
async fn malformed(original: Response) -> Response {
    let bytes = axum::body::to_bytes(original.into_body(), MAX_BODY)
        .await
        .unwrap_or_default();
    let cut = if bytes.len() < 2 {
        Bytes::from_static(b"{\"message\": ")
    } else {
        bytes.slice(..bytes.len() / 2)
    };
    let mut response = Response::new(Body::from(cut));
    set_header(
        &mut response,
        "content-type",
        "application/json; charset=utf-8".to_owned(),
    );
    response
}
