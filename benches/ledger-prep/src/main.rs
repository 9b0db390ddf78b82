//! `ledger-prep MANIFEST OUT_DIR DONE_JOBS`: builds the "half done" state of
//! the resume benchmark (benches/run.sh).
//!
//! A real run of the first few jobs of MANIFEST must already have finished in
//! OUT_DIR (ledger in `OUT_DIR/.horde-batch`). This tool extends it to the
//! first DONE_JOBS jobs of MANIFEST by cloning what that run wrote for one of
//! its images — the ledger record, the image, the sidecar, the
//! `metadata.jsonl` row and the `results.jsonl` row — with each job's own key,
//! prompt, file name and ids — and writes the settled prefix a run that had
//! done them would have written. The outcome is what a run that had finished the
//! first DONE_JOBS jobs would leave behind, without the 700 ms per submit that
//! a real run of 50,000 one-image requests would take (about 10 hours).
//!
//! Only one-image jobs are supported (each job is one slot, slot 0). Jobs that
//! already have a ledger record are left as they are. It never talks HTTP and
//! writes files plainly (one `sync` at the end is the caller's job): the
//! benchmark measures reading this state, not writing it.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use horde_batch::manifest::{self, CompileOptions, ManifestFile};
use horde_batch::output::{FilenameTemplate, NameFields, INDEX_FILE, RESULTS_FILE};
use horde_batch::scheduler::prefix::{file_for, SettledPrefix};
use horde_batch::store::{RequestKey, RequestRecord, RequestState, SavedImage, Store};
use serde_json::Value;

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [manifest, out, done] = args.as_slice() else {
        eprintln!("usage: ledger-prep MANIFEST OUT_DIR DONE_JOBS");
        return ExitCode::from(2);
    };
    let done: usize = match done.parse() {
        Ok(done) => done,
        Err(error) => {
            eprintln!("ledger-prep: DONE_JOBS `{done}`: {error}");
            return ExitCode::from(2);
        }
    };
    match prepare(Path::new(manifest), Path::new(out), done) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledger-prep: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What the real run wrote for one image, to be cloned for every other job.
struct Sample {
    record: RequestRecord,
    webp: Vec<u8>,
    sidecar: Value,
    index_row: Value,
    result_row: Value,
}

fn prepare(manifest_path: &Path, out: &Path, done: usize) -> Result<(), Error> {
    let file = ManifestFile::load(manifest_path)?;
    let compiled = manifest::compile(
        file,
        &CompileOptions {
            max_jobs: Some(u64::MAX),
        },
    )?;
    let template = FilenameTemplate::parse(&compiled.output.filename)?;
    let store = Store::open(&out.join(".horde-batch"))?;
    let sample = sample(&store, out)?;
    let seed = text(&sample.sidecar, "seed")?;
    let model = text(&sample.sidecar, "model")?;

    let mut index = BufWriter::new(OpenOptions::new().append(true).open(out.join(INDEX_FILE))?);
    let mut results = BufWriter::new(
        OpenOptions::new()
            .append(true)
            .open(out.join(RESULTS_FILE))?,
    );
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    let (mut cloned, mut kept) = (0usize, 0usize);
    let mut settled = SettledPrefix::default();
    for (ordinal, job) in compiled.jobs().enumerate().take(done) {
        settled.keys.push(job.key.0);
        settled.jobs_done += 1;
        settled.images_saved += 1;
        if job.images != 1 {
            return Err(format!(
                "job {} asks for {} images; only one-image jobs are supported",
                job.key, job.images
            )
            .into());
        }
        let job_key = job.key.to_string();
        let key = RequestKey::new(job_key.clone(), 0);
        if store.get(&key)?.is_some() {
            kept += 1;
            continue;
        }
        let param = |name: &str| job.params.get(name).and_then(Value::as_u64).unwrap_or(0) as u32;
        let rel = template.render(&NameFields {
            manifest: compiled.name(),
            job: &job.name,
            key: &job_key,
            index: 0,
            seed: &seed,
            model: &model,
            width: param("width"),
            height: param("height"),
            id: job.id.as_deref().unwrap_or(&job_key),
        })?;
        let file_name = format!("{rel}.webp");
        let horde_id = format!("00000000-0000-4000-8000-{ordinal:012}");
        let generation_id = format!("00000000-0000-4000-9000-{ordinal:012}");

        let mut record = sample.record.clone();
        record.job_key = job_key.clone();
        record.slot = 0;
        record.images = BTreeMap::from([(
            0,
            SavedImage {
                generation_id: generation_id.clone(),
                file_name: file_name.clone(),
                censored: false,
            },
        )]);
        record.assigned.clear();
        record.horde_ids = vec![horde_id.clone()];
        store.put(&key, &record)?;

        let image_path = out.join(&file_name);
        if let Some(dir) = image_path.parent() {
            if !made_dirs.iter().any(|made| made == dir) {
                fs::create_dir_all(dir)?;
                made_dirs.push(dir.to_path_buf());
            }
        }
        fs::write(&image_path, &sample.webp)?;
        let mut sidecar = sample.sidecar.clone();
        set(&mut sidecar, "file_name", &file_name);
        set(&mut sidecar, "job_key", &job_key);
        set(&mut sidecar, "prompt", &job.prompt);
        set(&mut sidecar, "horde_request_id", &horde_id);
        set(&mut sidecar, "generation_id", &generation_id);
        let mut sidecar_json = serde_json::to_vec_pretty(&sidecar)?;
        sidecar_json.push(b'\n');
        fs::write(out.join(format!("{rel}.json")), sidecar_json)?;

        let mut row = sample.index_row.clone();
        set(&mut row, "file_name", &file_name);
        set(&mut row, "text", &job.prompt);
        set(&mut row, "job_key", &job_key);
        set(&mut row, "horde_request_id", &horde_id);
        set(&mut row, "generation_id", &generation_id);
        serde_json::to_writer(&mut index, &row)?;
        index.write_all(b"\n")?;

        let mut result = sample.result_row.clone();
        set(&mut result, "job_key", &job_key);
        result["images"] = Value::from(vec![file_name]);
        serde_json::to_writer(&mut results, &result)?;
        results.write_all(b"\n")?;
        cloned += 1;
    }
    index.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    results
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    tokio::runtime::Builder::new_current_thread()
        .build()?
        .block_on(store.flush())?;
    // What a run that settled these jobs leaves beside its ledger (it writes
    // it every 30 s and when it ends).
    file_for(store.dir(), &compiled.expansion_fingerprint(), None).store(&settled)?;
    println!(
        "ledger-prep: {} jobs done ({kept} from the real run, {cloned} cloned); {} records in the ledger",
        kept + cloned,
        store.len()
    );
    Ok(())
}

/// The first finished one-image record of the real run, and its files and rows.
fn sample(store: &Store, out: &Path) -> Result<Sample, Error> {
    let (_, record) = store
        .iter()
        .filter_map(Result::ok)
        .find(|(_, record)| matches!(record.state, RequestState::Done) && record.images.len() == 1)
        .ok_or("the ledger has no finished one-image request to clone; run a few jobs first")?;
    let image = record
        .images
        .values()
        .next()
        .expect("the record was chosen for having one image");
    let webp = fs::read(out.join(&image.file_name))?;
    let sidecar_path = out.join(image.file_name.replace(".webp", ".json"));
    let sidecar = serde_json::from_slice(&fs::read(&sidecar_path)?)?;
    let index_row = row_where(&out.join(INDEX_FILE), "file_name", &image.file_name)?;
    let result_row = row_where(&out.join(RESULTS_FILE), "job_key", &record.job_key)?;
    Ok(Sample {
        record,
        webp,
        sidecar,
        index_row,
        result_row,
    })
}

fn row_where(path: &Path, field: &str, value: &str) -> Result<Value, Error> {
    let text = fs::read_to_string(path)?;
    for line in text.lines() {
        let row: Value = serde_json::from_str(line)?;
        if row.get(field).and_then(Value::as_str) == Some(value) {
            return Ok(row);
        }
    }
    Err(format!("{} has no row with {field} = {value}", path.display()).into())
}

fn text(value: &Value, field: &str) -> Result<String, Error> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("the sample sidecar has no text field `{field}`").into())
}

fn set(value: &mut Value, field: &str, text: &str) {
    value[field] = Value::from(text);
}
