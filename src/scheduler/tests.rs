//! The engine alone: driven against an in-memory ledger and sink and the
//! in-process simulated Horde, with no files and no binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Abort, Engine, KeyPool, Parts, RunConfig, RunStats, Stamped, Tuning};
use crate::horde::{ApiKey, ClientConfig, HordeClient};
use crate::manifest::{compile, CompileOptions, CompiledManifest, ManifestFile};
use crate::output::{ImageSink, MemorySink, Outcome};
use crate::sim::{LatencySpec, SimConfig, SimHandle};
use crate::store::{Ledger, MemoryLedger, RequestState};

/// Three jobs of two images, one request each.
const THREE_JOBS: &str = "version: 1\nname: engine\n\
    defaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\n\
    jobs:\n  - {name: a, prompt: 'a {red|green|blue} cone', images: 2}\n";

fn manifest(text: &str) -> Arc<CompiledManifest> {
    let path = Path::new("engine-test.yaml");
    let file = ManifestFile::parse(path, PathBuf::from("."), text.to_owned())
        .expect("the test manifest parses");
    Arc::new(compile(file, &CompileOptions::default()).expect("the test manifest compiles"))
}

async fn sim(latency: Duration) -> SimHandle {
    crate::sim::spawn(SimConfig {
        workers: 4,
        latency: LatencySpec {
            min: latency,
            max: latency,
        },
        no_rate_limits: true,
        seed: Some(5),
        ..SimConfig::default()
    })
    .await
    .expect("the sim starts on loopback")
}

fn tuning() -> Tuning {
    Tuning {
        submit_interval: Duration::from_millis(20),
        poll_floor: Duration::from_millis(100),
        ..Tuning::default()
    }
}

/// An engine and the receiving end of its events.
struct Tested {
    engine: Arc<Engine>,
    events: tokio::sync::mpsc::UnboundedReceiver<Stamped>,
}

impl Tested {
    /// Runs the engine to its end and folds what its events told: the run's
    /// figures come from nowhere else.
    async fn run(mut self) -> (Arc<Engine>, RunStats) {
        self.engine.run().await;
        let mut stats = RunStats::default();
        while let Ok(event) = self.events.try_recv() {
            stats.apply(&event);
        }
        (self.engine, stats)
    }
}

fn engine(
    sim: &SimHandle,
    ledger: Arc<dyn Ledger>,
    sink: Arc<MemorySink>,
    manifest: Arc<CompiledManifest>,
    stop: CancellationToken,
) -> Tested {
    engine_with_budget(sim, ledger, sink, manifest, stop, 30)
}

/// [`engine`] with a key whose budget is `capacity` images.
fn engine_with_budget(
    sim: &SimHandle,
    ledger: Arc<dyn Ledger>,
    sink: Arc<MemorySink>,
    manifest: Arc<CompiledManifest>,
    stop: CancellationToken,
    capacity: u32,
) -> Tested {
    let (sender, events) = tokio::sync::mpsc::unbounded_channel();
    let url = reqwest::Url::parse(&sim.base_url()).expect("the sim's URL parses");
    let client = HordeClient::new(ClientConfig::new(url, ApiKey::anonymous()))
        .expect("a client for the sim");
    let parts = Parts {
        client: client.clone(),
        keys: KeyPool::single(client, capacity),
        ledger,
        sink,
        manifest,
        events: sender,
    };
    let config = RunConfig {
        tuning: tuning(),
        ..RunConfig::default()
    };
    Tested {
        engine: Engine::new(parts, config, stop),
        events,
    }
}

/// Polls `condition` every 20 ms until it holds; panics after `deadline`.
async fn wait_until(what: &str, deadline: Duration, condition: impl Fn() -> bool) {
    let polled = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(deadline, polled).await.is_err() {
        panic!("waited {deadline:?} for {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stores_every_image_and_records_every_request_done() {
    let sim = sim(Duration::from_millis(10)).await;
    let ledger = Arc::new(MemoryLedger::new());
    let sink = Arc::new(MemorySink::new());
    let (_, stats) = engine(
        &sim,
        ledger.clone(),
        sink.clone(),
        manifest(THREE_JOBS),
        CancellationToken::new(),
    )
    .run()
    .await;
    let summary = stats.summary();
    assert_eq!((summary.jobs, summary.jobs_done), (3, 3), "{summary:?}");
    assert_eq!(summary.images_saved_now, 6, "{summary:?}");
    assert_eq!(stats.ending(), super::Ending::Complete);
    // Every request followed is released.
    assert_eq!(stats.submits, 3);
    assert!(stats.in_flight.is_empty(), "{:?}", stats.in_flight);
    assert_eq!(sink.images().len(), 6);
    let done = sink
        .outcomes()
        .iter()
        .filter(|o| matches!(o, Outcome::Done { files, .. } if files.len() == 2))
        .count();
    assert_eq!(done, 3);
    let records = ledger.records();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|(_, r)| r.state == RequestState::Done));
    assert_eq!(sim.stats().requests_never_retrieved, 0);

    // A second run over the same ledger has nothing to do and asks for nothing.
    let (_, stats) = engine_again(&sim, ledger.clone(), sink.clone()).run().await;
    let summary = stats.summary();
    assert_eq!(
        (summary.jobs_done, summary.images_saved_before),
        (3, 6),
        "{summary:?}"
    );
    assert_eq!(
        (summary.images_saved_now, stats.submits),
        (0, 0),
        "{summary:?}"
    );
    assert_eq!(sim.stats().requests_created, 3);

    // An image gone from the sink since is asked for again, and only that one.
    let (first, _) = sink.images().remove(0);
    sink.forget(&first).expect("a memory sink forgets");
    let (_, stats) = engine_again(&sim, ledger.clone(), sink.clone()).run().await;
    let summary = stats.summary();
    assert_eq!(summary.images_saved_now, 1, "{summary:?}");
    assert_eq!(summary.images_saved_before, 5, "{summary:?}");
    assert_eq!(sim.stats().requests_created, 4);
    assert_eq!(sink.images().len(), 6);
    sim.shutdown().await;
}

fn engine_again(sim: &SimHandle, ledger: Arc<MemoryLedger>, sink: Arc<MemorySink>) -> Tested {
    engine(
        sim,
        ledger,
        sink,
        manifest(THREE_JOBS),
        CancellationToken::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_run_cancels_everything_on_the_horde() {
    // Slow images: the stop comes while every request is still on the Horde.
    let sim = sim(Duration::from_secs(30)).await;
    let ledger = Arc::new(MemoryLedger::new());
    let stop = CancellationToken::new();
    let tested = engine(
        &sim,
        ledger.clone(),
        Arc::new(MemorySink::new()),
        manifest(THREE_JOBS),
        stop.clone(),
    );
    let run = tokio::spawn(tested.run());
    // Three ids recorded, not three requests created on the sim: a stop drops
    // a submit whose answer is still on its way (the next run looks for it).
    wait_until("three requests followed", Duration::from_secs(10), || {
        ledger
            .records()
            .iter()
            .filter(|(_, r)| matches!(r.state, RequestState::Submitted { .. }))
            .count()
            >= 3
    })
    .await;
    stop.cancel();
    let (_, stats) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("a stop is prompt")
        .expect("the run task ends normally");
    let summary = stats.summary();
    assert!(summary.interrupted, "{summary:?}");
    assert_eq!(summary.jobs_unfinished, 3, "{summary:?}");
    assert_eq!(stats.ending(), super::Ending::Interrupted);
    let stats = sim.stats();
    assert_eq!(stats.requests_cancelled, 3, "{stats:?}");
    assert_eq!(stats.requests_never_retrieved, 0, "{stats:?}");
    assert!(ledger
        .records()
        .iter()
        .all(|(_, r)| matches!(r.state, RequestState::Cancelled { .. })));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_ledger_stops_the_run_without_a_panic_or_a_lost_request() {
    let sim = sim(Duration::from_millis(10)).await;
    // The intent of the first submit is written, then the disk is full.
    let ledger = Arc::new(MemoryLedger::failing_after(1));
    let sink = Arc::new(MemorySink::new());
    let tested = engine(
        &sim,
        ledger.clone(),
        sink.clone(),
        manifest(THREE_JOBS),
        CancellationToken::new(),
    );
    let (engine, stats) = tokio::time::timeout(Duration::from_secs(20), tested.run())
        .await
        .expect("a ledger failure ends the run");
    let summary = stats.summary();
    assert!(
        matches!(engine.aborted(), Some(Abort::Ledger(_))),
        "{:?}",
        engine.aborted()
    );
    assert!(summary.abort.is_some(), "{summary:?}");
    assert!(matches!(
        stats.ending(),
        super::Ending::Aborted(Abort::Ledger(_))
    ));
    assert_eq!(summary.jobs_done, 0, "{summary:?}");
    assert!(sink.images().is_empty());
    // The one request whose id could not be recorded was cancelled, not orphaned.
    let stats = sim.stats();
    assert_eq!(stats.requests_created, 1, "{stats:?}");
    assert_eq!(stats.requests_never_retrieved, 0, "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_less_free_room_than_a_request_gets_a_part_of_it() {
    let sim = sim(Duration::from_millis(10)).await;
    let ledger = Arc::new(MemoryLedger::new());
    let sink = Arc::new(MemorySink::new());
    // Three requests of 4 for a key of 6: 4 go, and 2 of the second fill the
    // free room at once instead of waiting for room for all 4. The third, the
    // run's last, goes whole: a part of it would leave its rest for later.
    let three_requests_of_four = "version: 1\nname: parts\n\
        defaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\n\
        run: {max_n: 4}\n\
        jobs:\n  - {name: a, prompt: 'a {red|green|blue} cone', images: 4}\n";
    let (_, stats) = engine_with_budget(
        &sim,
        ledger.clone(),
        sink.clone(),
        manifest(three_requests_of_four),
        CancellationToken::new(),
        6,
    )
    .run()
    .await;
    let summary = stats.summary();
    assert_eq!(
        (summary.jobs_done, summary.images_saved_now),
        (3, 12),
        "{summary:?}"
    );
    assert_eq!(stats.ending(), super::Ending::Complete);
    // The part and the rest of the slot are one slot's two requests, not a
    // request that came back short.
    assert_eq!(stats.submits, 4, "{summary:?}");
    assert_eq!(stats.resubmits, 0, "{summary:?}");
    let records = ledger.records();
    let mut ids: Vec<usize> = records.iter().map(|(_, r)| r.horde_ids.len()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 1, 2], "one slot went in two parts");
    assert!(records
        .iter()
        .all(|(_, r)| r.state == RequestState::Done && r.missing_indices().is_empty()));
    assert_eq!(sim.stats().requests_never_retrieved, 0);
    sim.shutdown().await;
}
