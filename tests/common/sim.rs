//! A simulated Horde for the tests: `horde-batch sim` as a child process,
//! started on a free loopback port and killed when dropped, and what it
//! reports (`/sim/stats`, `/sim/users`, …) read over a plain socket.
//!
//! It does not run horde-batch against the sim: that is
//! [`crate::common::Batch`]'s.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::{BIN, TEST_FIND_USER_CACHE};

/// A `horde-batch sim` child process.
pub struct Sim {
    pub child: Child,
    pub url: String,
    /// Rate limits are off: runs against it submit and check faster.
    pub(super) unlimited: bool,
}

impl Sim {
    /// Starts `horde-batch sim` with `args`, its `find_user` cache scaled to
    /// [`TEST_FIND_USER_CACHE`] unless `args` set it.
    #[track_caller]
    pub fn start(args: &[&str]) -> Sim {
        let mut command = Command::new(BIN);
        command.args(["sim", "--port", "0"]);
        if !args.contains(&"--find-user-cache") {
            command.args(["--find-user-cache", TEST_FIND_USER_CACHE]);
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sim starts");
        // Its first line names the address it listens on.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("the sim prints its address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Sim {
            child,
            url,
            unlimited: false,
        }
    }

    /// A sim with its rate limits off, for tests about something else: runs
    /// against it (through [`crate::common::Batch::command`]) submit every
    /// 50 ms and may check a request every 200 ms. The limits have tests of
    /// their own.
    #[track_caller]
    pub fn unlimited(args: &[&str]) -> Sim {
        let mut sim = Sim::start(&[args, &["--no-rate-limits"]].concat());
        sim.unlimited = true;
        sim
    }

    /// `GET /sim/stats`, over a plain socket.
    #[track_caller]
    pub fn stats(&self) -> Value {
        self.get_json("/sim/stats")
    }

    /// `GET path` on the sim (e.g. `/sim/users`), over a plain socket: the JSON body.
    #[track_caller]
    pub fn get_json(&self, path: &str) -> Value {
        self.plain_call("GET", path, "")
    }

    /// `POST path` with a JSON `body` on the sim (e.g. `/sim/revoke`): the JSON answer.
    #[track_caller]
    pub fn post_json(&self, path: &str, body: &Value) -> Value {
        self.plain_call("POST", path, &body.to_string())
    }

    #[track_caller]
    fn plain_call(&self, method: &str, path: &str, body: &str) -> Value {
        let authority = self
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let mut stream = std::net::TcpStream::connect(authority).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let Some((_, answer)) = response.split_once("\r\n\r\n") else {
            panic!("{method} {path}: no HTTP body in {response:?}");
        };
        match serde_json::from_str(answer) {
            Ok(value) => value,
            Err(e) => panic!("{method} {path}: {e}: {answer}"),
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The counter `name` of a `/sim/stats` answer.
#[track_caller]
pub fn stat(stats: &Value, name: &str) -> u64 {
    match stats[name].as_u64() {
        Some(value) => value,
        None => panic!("no counter {name} in {stats}"),
    }
}
