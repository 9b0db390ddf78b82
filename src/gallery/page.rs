//! `report.html`: one static page, its CSS and JS inline, every link
//! relative to the output folder, so it opens from disk and moves with the
//! folder. Every piece of user or server text goes through [`escape`]; none
//! is ever placed inside the `<script>`.
//!
//! The page's JS filters and groups the jobs by model, job and label
//! (`data-f` holds each job's and image's facets as JSON), keeps the list of
//! ticked images in `#rejected` in the format `horde-batch reroll --from`
//! reads (one file name per line), and writes `data-images-ok="loaded/total"`
//! on `<body>` as images load. The URL fragment drives it for scripts and
//! tests: `#eager` loads every image now, `#tick=a,b` ticks those images
//! (names URI-encoded).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use super::grid::GridFile;
use super::pixels;
use super::{facets, value_text, Entry, FailedJob, PlanJob, ReportInput, CARD_SIZE};
use crate::output::{format_timestamp, JobResult};

/// `text` safe in HTML text and in a quoted attribute.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A relative file path as a URL: each component percent-encoded, so `#`,
/// `?`, `%` and spaces in a file name still name the file.
fn href(path: &str) -> String {
    path.split('/')
        .map(|part| {
            let mut encoded = String::new();
            for byte in part.bytes() {
                if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                    encoded.push(byte as char);
                } else {
                    let _ = write!(encoded, "%{byte:02X}");
                }
            }
            encoded
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One job section: the plan's job, or one known only from its files.
struct Section<'a> {
    key: String,
    name: String,
    wanted: u32,
    plan: Option<&'a PlanJob>,
    images: Vec<&'a Entry>,
    failure: Option<&'a FailedJob>,
}

pub(super) fn render(
    input: &ReportInput,
    entries: &[Entry],
    results: &HashMap<String, JobResult>,
    grids: &[GridFile],
) -> String {
    let sections = sections(input, entries);
    let mut html = String::with_capacity(4096 + entries.len() * 900);
    let title = if input.title.is_empty() {
        "horde-batch report".to_owned()
    } else {
        format!("{} — horde-batch report", input.title)
    };
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body data-images-ok=\"\">\n\
         <header><h1>{}</h1><p>Written {} · manifest <code>{}</code></p></header>\n",
        escape(&title),
        escape(&title),
        escape(&format_timestamp(std::time::SystemTime::now())),
        escape(&input.manifest),
    );
    summary(&mut html, input, entries, results);
    failures(&mut html, &input.failures);
    cull(&mut html, input);
    filters(&mut html, &sections);
    // The images first: the grids (one per image index and Z value) can be many.
    html.push_str("<main id=\"jobs\">\n");
    for (order, section) in sections.iter().enumerate() {
        job_section(&mut html, order, section, results);
    }
    html.push_str("</main>\n");
    grid_list(&mut html, grids);
    html.push_str("<script>");
    html.push_str(SCRIPT);
    html.push_str("</script>\n</body>\n</html>\n");
    html
}

/// Plan order first, then jobs known only from their files or failures.
fn sections<'a>(input: &'a ReportInput, entries: &'a [Entry]) -> Vec<Section<'a>> {
    let mut sections: Vec<Section<'a>> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for job in &input.plan {
        if at.contains_key(&job.key) {
            continue;
        }
        at.insert(job.key.clone(), sections.len());
        sections.push(Section {
            key: job.key.clone(),
            name: job.name.clone(),
            wanted: job.images,
            plan: Some(job),
            images: Vec::new(),
            failure: None,
        });
    }
    for entry in entries {
        let index = *at.entry(entry.row.job_key.clone()).or_insert_with(|| {
            sections.push(Section {
                key: entry.row.job_key.clone(),
                name: entry.row.job.clone(),
                wanted: 0,
                plan: None,
                images: Vec::new(),
                failure: None,
            });
            sections.len() - 1
        });
        sections[index].images.push(entry);
    }
    for failure in &input.failures {
        let index = *at.entry(failure.job_key.clone()).or_insert_with(|| {
            sections.push(Section {
                key: failure.job_key.clone(),
                name: failure.job.clone(),
                wanted: failure.images_wanted,
                plan: None,
                images: Vec::new(),
                failure: None,
            });
            sections.len() - 1
        });
        sections[index].failure = Some(failure);
    }
    for section in &mut sections {
        section.images.sort_by_key(|entry| entry.row.image_index);
    }
    sections
}

fn summary(
    html: &mut String,
    input: &ReportInput,
    entries: &[Entry],
    results: &HashMap<String, JobResult>,
) {
    let mut rows: Vec<(String, String)> = Vec::new();
    let censored = entries.iter().filter(|e| e.row.censored).count();
    let wanted: u64 = input.plan.iter().map(|job| u64::from(job.images)).sum();
    if let Some(status) = &input.status {
        let state = if status.active {
            "a run is active"
        } else if status.finished {
            "finished"
        } else if status.jobs > 0 && status.jobs_done + status.jobs_failed == status.jobs {
            "ended, with failed jobs"
        } else {
            "not finished (stopped, or not run to the end yet)"
        };
        rows.push(("State".into(), state.into()));
        rows.push((
            "Images".into(),
            format!(
                "{} saved of {} wanted",
                status.images_saved, status.images_wanted
            ),
        ));
        rows.push((
            "Jobs".into(),
            format!(
                "{} done, {} failed, of {}",
                status.jobs_done, status.jobs_failed, status.jobs
            ),
        ));
        let failed: Vec<String> = status
            .failures
            .iter()
            .map(|(class, count)| format!("{class}: {count}"))
            .collect();
        rows.push((
            "Failed jobs by class".into(),
            if failed.is_empty() {
                "none".into()
            } else {
                failed.join(", ")
            },
        ));
        rows.push((
            "Kudos charged".into(),
            format!("{:.1}", status.kudos_charged),
        ));
        rows.push(("429 answers".into(), status.rate_limited_429s.to_string()));
        let requests: u64 = status.requests_by_state.values().sum();
        if requests > 0 && status.images_saved > 0 {
            rows.push((
                "Ledger requests per saved image".into(),
                format!("{:.2}", requests as f64 / status.images_saved as f64),
            ));
        }
    }
    rows.push((
        "Images in the folder".into(),
        format!(
            "{} ({} censored) of {} the plan wants",
            entries.len(),
            censored,
            wanted
        ),
    ));
    let (attempts, images) = results.values().fold((0u64, 0u64), |(a, i), result| {
        (
            a + u64::from(result.attempts),
            i + result.images.len() as u64,
        )
    });
    if images > 0 {
        rows.push((
            "Horde requests per image (finished jobs)".into(),
            format!("{:.2}", attempts as f64 / images as f64),
        ));
    }
    if let Some(span) = duration(entries) {
        rows.push((
            "Duration (first submit to last image)".into(),
            humantime::format_duration(span).to_string(),
        ));
    }
    html.push_str("<section id=\"summary\"><h2>Summary</h2><table>\n");
    for (name, value) in rows {
        let _ = writeln!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&name),
            escape(&value)
        );
    }
    html.push_str("</table></section>\n");
}

/// From the earliest submit to the latest image of the sidecars, to the second.
fn duration(entries: &[Entry]) -> Option<std::time::Duration> {
    let parse = |text: &str| humantime::parse_rfc3339(text).ok();
    let sidecars = entries.iter().filter_map(|e| e.sidecar.as_ref());
    let start = sidecars
        .clone()
        .filter_map(|s| parse(&s.submitted_at))
        .min()?;
    let end = sidecars.filter_map(|s| parse(&s.completed_at)).max()?;
    let span = end.duration_since(start).ok()?;
    Some(std::time::Duration::from_secs(span.as_secs()))
}

fn failures(html: &mut String, failed: &[FailedJob]) {
    html.push_str("<section id=\"failures\"><h2>Failed jobs</h2>\n");
    if failed.is_empty() {
        html.push_str("<p>None.</p>\n");
    }
    let mut by_class: BTreeMap<&str, Vec<&FailedJob>> = BTreeMap::new();
    for job in failed {
        by_class.entry(&job.class).or_default().push(job);
    }
    for (class, jobs) in by_class {
        let _ = writeln!(
            html,
            "<h3 class=\"failure-class\">{} <small>({} job(s))</small></h3><ul>",
            escape(class),
            jobs.len()
        );
        for job in jobs {
            let _ = writeln!(
                html,
                "<li class=\"failure\" data-job-key=\"{key}\"><a href=\"#job-{key}\">{}</a> \
                 ({} of {} images, failed {} time(s)): <span class=\"message\">{}</span></li>",
                escape(&job.job),
                job.images_saved,
                job.images_wanted,
                job.failures,
                escape(&job.message),
                key = escape(&job.job_key),
            );
        }
        html.push_str("</ul>\n");
    }
    html.push_str("<p>Retry only these with <code>horde-batch run MANIFEST --retry-failed</code>.</p></section>\n");
}

fn grid_list(html: &mut String, grids: &[GridFile]) {
    if grids.is_empty() {
        return;
    }
    html.push_str("<section id=\"grids\"><h2>X/Y/Z grids</h2><div class=\"grids\">\n");
    for grid in grids {
        let _ = writeln!(
            html,
            "<figure class=\"grid\"><a href=\"{src}\"><img src=\"{src}\" loading=\"lazy\" alt=\"{title}\"></a>\
             <figcaption>{title}</figcaption></figure>",
            src = escape(&href(&grid.file)),
            title = escape(&grid.title),
        );
    }
    html.push_str("</div></section>\n");
}

fn cull(html: &mut String, input: &ReportInput) {
    let manifest = if input.manifest.is_empty() {
        "MANIFEST"
    } else {
        &input.manifest
    };
    let _ = writeln!(
        html,
        "<section id=\"cull\"><h2>Rejected images</h2>\
         <p>Tick the images to reject. Save this list as <code>rejected.txt</code> and run \
         <code>horde-batch reroll {} --from rejected.txt</code>: they move to <code>.rejected/</code> \
         and the next run makes them again under the same names.</p>\
         <textarea id=\"rejected\" readonly rows=\"6\" cols=\"80\"></textarea><br>\
         <button type=\"button\" id=\"copy\">Copy</button> \
         <button type=\"button\" id=\"download\">Download rejected.txt</button> \
         <button type=\"button\" id=\"clear\">Untick all</button> \
         <span id=\"ticked\">0 ticked</span></section>",
        escape(manifest)
    );
}

fn filters(html: &mut String, sections: &[Section<'_>]) {
    let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for section in sections {
        for (facet, value) in section_facets(section) {
            values.entry(facet).or_default().insert(value);
        }
        for entry in &section.images {
            for (facet, value) in entry_facets(entry) {
                values.entry(facet).or_default().insert(value);
            }
        }
    }
    html.push_str("<section id=\"filters\"><h2>Jobs</h2><p>\n");
    for (facet, options) in &values {
        let _ = write!(
            html,
            "<label>{} <select data-facet=\"{}\"><option value=\"\">all</option>",
            escape(facet.strip_prefix("label:").unwrap_or(facet)),
            escape(facet)
        );
        for option in options {
            let _ = write!(html, "<option>{}</option>", escape(option));
        }
        html.push_str("</select></label>\n");
    }
    html.push_str("<label>group by <select id=\"group\"><option value=\"\">plan order</option>");
    for facet in values.keys() {
        let _ = write!(
            html,
            "<option value=\"{}\">{}</option>",
            escape(facet),
            escape(facet.strip_prefix("label:").unwrap_or(facet))
        );
    }
    html.push_str("</select></label>\n<label><input type=\"checkbox\" id=\"problems\"> only failed, missing or censored</label></p></section>\n");
}

fn section_facets(section: &Section<'_>) -> BTreeMap<String, String> {
    match (section.plan, section.images.first()) {
        (Some(plan), _) => facets(&plan.name, &plan.models.join(", "), &plan.labels),
        (None, Some(entry)) => entry_facets(entry),
        (None, None) => facets(&section.name, "", &Default::default()),
    }
}

fn entry_facets(entry: &Entry) -> BTreeMap<String, String> {
    facets(&entry.row.job, &entry.row.model, &entry.labels())
}

fn facets_attribute(facets: &BTreeMap<String, String>) -> String {
    escape(&serde_json::to_string(facets).unwrap_or_else(|_| "{}".to_owned()))
}

fn job_section(
    html: &mut String,
    order: usize,
    section: &Section<'_>,
    results: &HashMap<String, JobResult>,
) {
    let saved: BTreeSet<u32> = section.images.iter().map(|e| e.row.image_index).collect();
    let missing: Vec<u32> = (0..section.wanted).filter(|i| !saved.contains(i)).collect();
    let (state, class) = match (section.failure, results.contains_key(&section.key)) {
        (Some(failure), _) => (format!("failed: {}", failure.class), "failed"),
        (None, _) if missing.is_empty() => ("done".to_owned(), "done"),
        (None, true) => ("images missing (rerolled?)".to_owned(), "missing"),
        (None, false) => ("not finished".to_owned(), "pending"),
    };
    let problem = class != "done" || section.images.iter().any(|e| e.row.censored);
    let _ = writeln!(
        html,
        "<section class=\"job {class}\" id=\"job-{key}\" data-job-key=\"{key}\" data-order=\"{order}\" \
         data-problem=\"{problem}\" data-f=\"{f}\">\
         <h3>{name} <span class=\"state\">{state}</span> <small class=\"key\">{key}</small></h3>",
        key = escape(&section.key),
        f = facets_attribute(&section_facets(section)),
        name = escape(&section.name),
        state = escape(&state),
    );
    if let Some(plan) = section.plan {
        let mut about: Vec<String> = plan
            .labels
            .iter()
            .map(|(name, value)| format!("{name}: {}", value_text(value)))
            .collect();
        about.push(format!("model: {}", plan.models.join(", ")));
        let _ = writeln!(
            html,
            "<p class=\"about\">{} · {} of {} images</p>",
            escape(&about.join(" · ")),
            section.images.len(),
            section.wanted
        );
    }
    if let Some(failure) = section.failure {
        let _ = writeln!(
            html,
            "<p class=\"failure-message\">{}: {}</p>",
            escape(&failure.class),
            escape(&failure.message)
        );
    }
    html.push_str("<div class=\"cards\">\n");
    for entry in &section.images {
        card(html, entry);
    }
    for index in missing {
        let _ = writeln!(
            html,
            "<figure class=\"card absent {class}\"><div class=\"placeholder\">{}</div>\
             <figcaption>#{index}</figcaption></figure>",
            escape(&state)
        );
    }
    html.push_str("</div></section>\n");
}

fn card(html: &mut String, entry: &Entry) {
    let row = &entry.row;
    let sidecar = entry.sidecar.as_ref();
    let censored = if row.censored { " censored" } else { "" };
    let _ = write!(
        html,
        "<figure class=\"card{censored}\" data-file=\"{file}\" data-f=\"{f}\"><a href=\"{link}\">",
        file = escape(&row.file_name),
        f = facets_attribute(&entry_facets(entry)),
        link = escape(&href(&row.file_name)),
    );
    // The image itself, scaled by the browser and loaded only near the
    // viewport; the index row's size keeps the layout still while it loads.
    let (width, height) = pixels::fit_within(row.width, row.height, CARD_SIZE);
    let _ = write!(
        html,
        "<img src=\"{src}\" width=\"{width}\" height=\"{height}\" loading=\"lazy\" \
         decoding=\"async\" alt=\"{alt}\">",
        src = escape(&href(&row.file_name)),
        alt = escape(&row.file_name)
    );
    html.push_str("</a>");
    if row.censored {
        html.push_str("<span class=\"badge\">censored</span>");
    }
    let _ = write!(
        html,
        "<label class=\"reject\"><input type=\"checkbox\" class=\"tick\" value=\"{}\"> reject</label>",
        escape(&row.file_name)
    );
    let worker = sidecar.map_or(String::new(), |s| {
        if s.worker_name.is_empty() {
            s.worker_id.clone()
        } else {
            s.worker_name.clone()
        }
    });
    let _ = write!(
        html,
        "<figcaption><b>#{}</b> seed <code class=\"seed\">{}</code> · <span class=\"model\">{}</span> · \
         worker <span class=\"worker\">{}</span><p class=\"prompt\">{}</p>",
        row.image_index,
        escape(&row.seed),
        escape(&row.model),
        escape(&worker),
        escape(&row.text),
    );
    if !row.negative_prompt.is_empty() {
        let _ = write!(
            html,
            "<p class=\"negative\">Negative: {}</p>",
            escape(&row.negative_prompt)
        );
    }
    let params = sidecar
        .map(|s| serde_json::to_string_pretty(&s.params).unwrap_or_default())
        .unwrap_or_else(|| {
            format!(
                "{}×{}, {} steps, cfg {}, {}",
                row.width, row.height, row.steps, row.cfg_scale, row.sampler_name
            )
        });
    let _ = writeln!(
        html,
        "<details><summary>parameters</summary><pre>{}</pre></details><a class=\"file\" href=\"{}\">{}</a></figcaption></figure>",
        escape(&params),
        escape(&href(&row.file_name)),
        escape(&row.file_name),
    );
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
table{border-collapse:collapse}th,td{text-align:left;padding:2px 12px 2px 0;vertical-align:top}
section.job{border-top:1px solid #ccc;padding:4px 0}
section.job h3{margin:6px 0}.state{font-size:.8em;padding:1px 6px;border-radius:3px;background:#dfd}
section.failed .state{background:#fcc}section.pending .state,section.missing .state{background:#ffd}
.key{color:#888;font-weight:normal}.about{margin:2px 0;color:#555;font-size:.9em}
.failure-message,.message{color:#a00}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{margin:0;width:200px;background:#fff;border:1px solid #ddd;padding:4px;font-size:.8em;position:relative}
.card img{display:block;max-width:192px;height:auto;background:#eee}
.card.censored{border:2px solid #c00}.card.censored img{filter:blur(3px) grayscale(1)}
.badge{position:absolute;top:6px;left:6px;background:#c00;color:#fff;padding:1px 4px;border-radius:3px}
.card.absent{border:2px dashed #c88;background:#fee}.card.pending,.card.missing{border-color:#cc8;background:#ffe}
.placeholder{width:192px;height:96px;display:flex;align-items:center;justify-content:center;color:#a00}
.prompt,.negative{margin:2px 0;word-break:break-word}.negative{color:#666}
pre{white-space:pre-wrap;word-break:break-all;font-size:.9em}
.card:has(.tick:checked){outline:3px solid #e60}
.grids{display:flex;flex-wrap:wrap;gap:12px}.grid img{max-width:480px;height:auto}
h2.group{margin-top:1.5em;border-bottom:2px solid #888}
#filters label{margin-right:1em}
"#;

const SCRIPT: &str = r#"
(function () {
  'use strict';
  var ticks = Array.prototype.slice.call(document.querySelectorAll('input.tick'));
  var list = document.getElementById('rejected');
  function ticked() { return ticks.filter(function (t) { return t.checked; }).map(function (t) { return t.value; }); }
  function updateList() {
    var names = ticked();
    list.textContent = names.length ? names.join('\n') + '\n' : '';
    list.value = list.textContent;
    document.getElementById('ticked').textContent = names.length + ' ticked';
    document.body.setAttribute('data-ticked', String(names.length));
  }
  ticks.forEach(function (t) { t.addEventListener('change', updateList); });
  document.getElementById('clear').addEventListener('click', function () {
    ticks.forEach(function (t) { t.checked = false; }); updateList();
  });
  document.getElementById('copy').addEventListener('click', function () {
    var text = list.value;
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).catch(function () { list.select(); document.execCommand('copy'); });
    } else { list.select(); document.execCommand('copy'); }
  });
  document.getElementById('download').addEventListener('click', function () {
    var a = document.createElement('a');
    a.href = 'data:text/plain;charset=utf-8,' + encodeURIComponent(list.value);
    a.download = 'rejected.txt';
    document.body.appendChild(a); a.click(); a.remove();
  });

  function facets(el) {
    if (!el._f) { try { el._f = JSON.parse(el.getAttribute('data-f') || '{}'); } catch (e) { el._f = {}; } }
    return el._f;
  }
  var selects = Array.prototype.slice.call(document.querySelectorAll('select[data-facet]'));
  var problems = document.getElementById('problems');
  var sections = Array.prototype.slice.call(document.querySelectorAll('section.job'));
  function filter() {
    var want = {};
    selects.forEach(function (s) { if (s.value !== '') { want[s.getAttribute('data-facet')] = s.value; } });
    function match(el) { var f = facets(el); return Object.keys(want).every(function (k) { return f[k] === want[k]; }); }
    sections.forEach(function (section) {
      var cards = section.querySelectorAll('.card[data-f]');
      var any = false;
      if (cards.length) {
        Array.prototype.forEach.call(cards, function (c) { var m = match(c); c.hidden = !m; any = any || m; });
      } else { any = match(section); }
      if (problems.checked && section.getAttribute('data-problem') !== 'true') { any = false; }
      section.hidden = !any;
    });
  }
  selects.forEach(function (s) { s.addEventListener('change', filter); });
  problems.addEventListener('change', filter);
  var main = document.getElementById('jobs');
  var group = document.getElementById('group');
  group.addEventListener('change', function () {
    var key = group.value;
    Array.prototype.forEach.call(main.querySelectorAll('h2.group'), function (h) { h.remove(); });
    function order(s) { return Number(s.getAttribute('data-order')); }
    function value(s) { var v = facets(s)[key]; return v === undefined ? '' : v; }
    sections.sort(function (a, b) {
      if (key !== '') { var va = value(a), vb = value(b); if (va < vb) { return -1; } if (va > vb) { return 1; } }
      return order(a) - order(b);
    });
    var last = null;
    sections.forEach(function (s) {
      if (key !== '' && value(s) !== last) {
        last = value(s);
        var h = document.createElement('h2');
        h.className = 'group';
        h.textContent = key.replace(/^label:/, '') + ': ' + last;
        main.appendChild(h);
      }
      main.appendChild(s);
    });
  });

  var images = Array.prototype.slice.call(document.images);
  function countImages() {
    var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.body.setAttribute('data-images-ok', ok + '/' + images.length);
  }
  images.forEach(function (i) { i.addEventListener('load', countImages); i.addEventListener('error', countImages); });
  window.addEventListener('load', countImages);

  // The fragment: `eager` loads every image now; `tick=a,b` ticks those files.
  location.hash.replace(/^#/, '').split('&').forEach(function (part) {
    if (part === 'eager') { images.forEach(function (i) { i.loading = 'eager'; }); }
    if (part.indexOf('tick=') === 0) {
      var names = part.slice(5).split(',').map(decodeURIComponent);
      ticks.forEach(function (t) { if (names.indexOf(t.value) >= 0) { t.checked = true; } });
    }
  });
  updateList();
  countImages();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn href_percent_encodes_each_component() {
        assert_eq!(href("a b/c#1?.webp"), "a%20b/c%231%3F.webp");
    }
}
