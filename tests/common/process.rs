//! Child processes: the `horde-batch` binary run to its end (bounded) with its
//! output checked, signalled and waited for; test bodies run as children of
//! their parent test; tools (Python, Chromium) a test may need.
//!
//! Every wait here has a deadline, and a child that outlives it is killed
//! before the test fails. What a run wrote to disk is [`crate::common::Batch`]'s.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{poll_until, BIN};

/// Every run a test starts ends within this, or the test fails (and kills it).
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

// ------------------------------------------------------- signals and exits

/// Sends `signal` (`"INT"`, `"KILL"`, …) to `child`.
#[track_caller]
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("`kill` runs");
    assert!(status.success(), "kill -{signal} {}: {status}", child.id());
}

/// Waits for `child` to exit and returns its exit code (128 + the signal for
/// a signal). Past `deadline` it kills the child and fails the test.
#[track_caller]
pub fn wait_exit(child: &mut Child, deadline: Duration) -> i32 {
    match exit_within(child, deadline) {
        Ok(code) => code,
        Err(waited) => panic!("process {} did not exit within {waited:.1?}", child.id()),
    }
}

/// The exit code within `deadline`, or the time waited after killing a child
/// that outlived it.
fn exit_within(child: &mut Child, deadline: Duration) -> Result<i32, Duration> {
    use std::os::unix::process::ExitStatusExt;
    let mut exited = None;
    let waited = poll_until(deadline, || {
        exited = child.try_wait().expect("the child can be waited for");
        exited.is_some()
    });
    match (exited, waited) {
        (Some(status), _) => Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))),
        (None, Err(waited)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(waited)
        }
        (None, Ok(())) => unreachable!("the poll ends when the child has exited"),
    }
}

// ---------------------------------------------------------- bounded runs

/// How a child process ended.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end, capturing its output; kills it and fails the
/// test if it takes longer than `deadline`.
#[track_caller]
pub fn run_bounded(command: &mut Command, deadline: Duration) -> Finished {
    run_with_input(command, None, deadline)
}

#[track_caller]
fn run_with_input(command: &mut Command, stdin: Option<Vec<u8>>, deadline: Duration) -> Finished {
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = match command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("{command:?} does not start: {e}"),
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A thread, so a child that does not read cannot block the deadline.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let code = exit_within(&mut child, deadline);
    let stdout = stdout.join().expect("the stdout reader does not panic");
    let stderr = stderr.join().expect("the stderr reader does not panic");
    match code {
        Ok(code) => Finished {
            code,
            stdout,
            stderr,
        },
        Err(waited) => panic!("{command:?} did not end within {waited:.1?}; its stderr:\n{stderr}"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Fails the test if horde-batch panicked.
#[track_caller]
pub fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "horde-batch panicked:\n{stderr}"
    );
}

/// Runs `command` to its end (bounded by [`RUN_LIMIT`]), asserts it
/// succeeded (showing its stderr if not) and returns its stdout.
#[track_caller]
pub fn stdout_of_success(command: &mut Command) -> Vec<u8> {
    let finished = run_bounded(command.stdin(Stdio::null()), RUN_LIMIT);
    assert_eq!(
        finished.code, 0,
        "{command:?} failed; its stderr:\n{}",
        finished.stderr
    );
    finished.stdout.into_bytes()
}

// ------------------------------------------------------ the command builder

/// One `horde-batch` invocation and everything expected of it, checked at
/// once by [`HordeBatch::run`]:
///
/// ```ignore
/// let plan = HordeBatch::new()
///     .args(["plan", "manifests/quickstart.yaml"])
///     .stdout_contains("3 jobs")
///     .run();
/// ```
///
/// Unless told otherwise it expects exit status 0, reads no stdin, runs
/// without the user's `AI_HORDE_API_KEY`/`AI_HORDE_URL`, and must end within
/// [`RUN_LIMIT`]. Whatever the expectations, horde-batch must not panic.
#[must_use = "a HordeBatch runs nothing until `.run()`"]
pub struct HordeBatch {
    command: Command,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
    status: i32,
    stdout: Option<String>,
    stdout_contains: Vec<String>,
    stderr_contains: Vec<String>,
}

impl HordeBatch {
    /// `horde-batch` with no arguments yet.
    pub fn new() -> HordeBatch {
        let mut command = Command::new(BIN);
        command
            .env_remove("AI_HORDE_API_KEY")
            .env_remove("AI_HORDE_URL")
            .stdin(Stdio::null());
        HordeBatch::from_command(command)
    }

    /// A prepared command, e.g. [`crate::common::Batch::command`]'s.
    pub fn from_command(command: Command) -> HordeBatch {
        HordeBatch {
            command,
            stdin: None,
            deadline: RUN_LIMIT,
            status: 0,
            stdout: None,
            stdout_contains: Vec::new(),
            stderr_contains: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> HordeBatch {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> HordeBatch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> HordeBatch {
        self.command.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> HordeBatch {
        self.command.env_remove(key);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> HordeBatch {
        self.command.current_dir(dir);
        self
    }

    /// Bytes written to its stdin (then closed).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> HordeBatch {
        self.stdin = Some(input.into());
        self
    }

    /// How long it may take instead of [`RUN_LIMIT`].
    pub fn deadline(mut self, deadline: Duration) -> HordeBatch {
        self.deadline = deadline;
        self
    }

    /// The exit status expected (0 unless set).
    pub fn status(mut self, code: i32) -> HordeBatch {
        self.status = code;
        self
    }

    /// Its whole stdout, exactly.
    pub fn stdout(mut self, exact: impl Into<String>) -> HordeBatch {
        self.stdout = Some(exact.into());
        self
    }

    /// Text its stdout contains (each call adds one).
    pub fn stdout_contains(mut self, text: impl Into<String>) -> HordeBatch {
        self.stdout_contains.push(text.into());
        self
    }

    /// Text its stderr contains (each call adds one).
    pub fn stderr_contains(mut self, text: impl Into<String>) -> HordeBatch {
        self.stderr_contains.push(text.into());
        self
    }

    /// Runs it to its end and checks every expectation, failing the test
    /// with all that differ and the whole output; returns the output for
    /// further checks.
    #[track_caller]
    pub fn run(mut self) -> Finished {
        let finished = run_with_input(&mut self.command, self.stdin, self.deadline);
        let mut failures = Vec::new();
        if finished.code != self.status {
            failures.push(format!(
                "exit status {}, expected {}",
                finished.code, self.status
            ));
        }
        if let Some(expected) = &self.stdout {
            if &finished.stdout != expected {
                failures.push(format!("stdout is not exactly:\n{expected}"));
            }
        }
        for text in &self.stdout_contains {
            if !finished.stdout.contains(text.as_str()) {
                failures.push(format!("stdout lacks {text:?}"));
            }
        }
        for text in &self.stderr_contains {
            if !finished.stderr.contains(text.as_str()) {
                failures.push(format!("stderr lacks {text:?}"));
            }
        }
        if finished.stderr.contains("panicked") {
            failures.push("horde-batch panicked".to_owned());
        }
        assert!(
            failures.is_empty(),
            "{:?}:\n- {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.command,
            failures.join("\n- "),
            finished.stdout,
            finished.stderr
        );
        finished
    }
}

// ------------------------------------------------------ test child processes

/// The test binary running only the `#[ignore]`d test `name` (e.g.
/// `"store::crash_child"`): a child process its parent test kills or lets
/// crash. Ignored, the child is not counted as a passed test in a normal run;
/// the parent gives it its inputs through environment variables (read with
/// [`child_env`]).
pub fn test_child(name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary has a path"));
    command.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

/// The environment variable `var` of a [`test_child`], which its parent sets:
/// run on its own (`--ignored`), the child fails instead of passing empty.
#[track_caller]
pub fn child_env(var: &str) -> OsString {
    // `match`, not `unwrap_or_else`: a closure would hide the caller's line.
    match std::env::var_os(var) {
        Some(value) => value,
        None => {
            panic!("{var} is unset: this test is the child process of another test, which runs it")
        }
    }
}

// -------------------------------------------------- tools a test may need

/// A test that needs a tool this machine may lack (Chromium, a Python
/// package) skips, saying so, unless `HORDE_BATCH_REQUIRE_TOOLS` is set
/// (`.ci/run` installs the tools and sets it): then a missing tool fails it.
#[track_caller]
pub fn skip_without(tool: &str, install: &str) {
    assert!(
        std::env::var_os("HORDE_BATCH_REQUIRE_TOOLS").is_none(),
        "HORDE_BATCH_REQUIRE_TOOLS is set but {tool} is not installed ({install})"
    );
    eprintln!("skipped: {tool} is not installed ({install})");
}

/// The Python that can import `module`: `HORDE_BATCH_PYTHON`, else `python3`.
pub fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("HORDE_BATCH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    has.then_some(python)
}
