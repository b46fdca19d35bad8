//! The harness shared by the integration tests that start a real runtime process
//! (included with `mod support;`; cargo does not build `tests/support/` as a test target).
//!
//! Invariants:
//! - Each [`RuntimeProcess`] has its own instance (`t<pid>-<test>`) and its own config
//!   file, so tests run in parallel and test binaries never share an instance.
//! - [`RuntimeProcess::start`] returns only once a client can connect: the runtime serves.
//! - Dropping a [`RuntimeProcess`] kills the runtime and removes every file of its
//!   instance (the ones `instance_files` lists and the runtime lock a killed runtime
//!   leaves) and its config file: a test leaves nothing in /dev/shm, even when it fails.
//! - Deadlines only bound how long a broken build can hang; nothing here asserts timing.
// Each test file uses a different part of the harness (bulk.rs starts runtimes but no
// client children, pinning.rs never reads usage, ...), so the parts one file leaves
// unused must not warn there.
#![allow(dead_code)]

use chimaera::prelude::*;
use chimaera::RuntimeBuilder;
use chimaera_core::shm::InstanceName;
use chimaera_core::transport::shm::server::{usage, ShmUsage};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// The environment variable that tells a re-run of a test binary which child it plays.
pub(crate) const ROLE: &str = "CHI_TEST_ROLE";

/// How long a broken build may hang before a test gives up.
pub(crate) const HANG: Duration = Duration::from_secs(30);

/// How long a runtime may take to serve (a loaded machine builds and links slowly).
const STARTUP: Duration = Duration::from_secs(60);

/// Which program serves as the runtime process.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Server {
    /// `chimaera runtime start`.
    Chimaera,
    /// The test binary re-run as its `runtime_child_entry` test, with [`ROLE`] set.
    TestBinary,
}

/// How to start a runtime process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Launch {
    pub server: Server,
    /// Limits the runtime's address space to this many KiB (`ulimit -v`), so an
    /// allocation the size a client claims fails outright.
    pub address_space_kib: Option<u64>,
    /// Sends the runtime's stderr to /dev/null (for tests whose runtime reports faults
    /// they provoke on purpose).
    pub quiet_stderr: bool,
}

impl Launch {
    pub(crate) const CHIMAERA: Launch = Launch {
        server: Server::Chimaera,
        address_space_kib: None,
        quiet_stderr: false,
    };
    pub(crate) const TEST_BINARY: Launch = Launch {
        server: Server::TestBinary,
        ..Launch::CHIMAERA
    };
}

/// Writes the config file of the instance of `test` (`instance:` followed by
/// `extra_yaml`) and reads it back.
pub(crate) fn write_config(test: &str, extra_yaml: &str) -> (RuntimeConfig, PathBuf) {
    let instance = format!("t{}-{test}", std::process::id());
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{instance}.yaml"));
    std::fs::write(&path, format!("instance: {instance}\n{extra_yaml}")).unwrap();
    let config = RuntimeConfig::from_file(&path).expect("test config is valid");
    (config, path)
}

/// The test binary re-run as its test `entry` (an ignored test) playing `role`, for the
/// instance of the config at `config_path`.
pub(crate) fn test_binary_child(config_path: &PathBuf, entry: &str, role: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env("CHI_SERVER_CONF", config_path)
        .env_remove("CHI_INSTANCE");
    command
}

/// A runtime child process, killed and its files removed when the test ends.
pub(crate) struct RuntimeProcess {
    /// `None` once killed, or taken by a test that waits for the exit itself.
    pub child: Option<Child>,
    pub config: RuntimeConfig,
    pub config_path: PathBuf,
    launch: Launch,
}

impl RuntimeProcess {
    /// Starts `chimaera runtime start` for the instance of `test`.
    pub(crate) fn start(test: &str, extra_yaml: &str) -> RuntimeProcess {
        Self::start_with(test, extra_yaml, Launch::CHIMAERA)
    }

    pub(crate) fn start_with(test: &str, extra_yaml: &str, launch: Launch) -> RuntimeProcess {
        let (config, config_path) = write_config(test, extra_yaml);
        let mut runtime = RuntimeProcess {
            child: None,
            config,
            config_path,
            launch,
        };
        runtime.spawn();
        runtime
    }

    /// Starts the runtime process (again, after [`RuntimeProcess::kill`]) and waits until
    /// it serves.
    pub(crate) fn spawn(&mut self) {
        let mut command = match self.launch.server {
            Server::Chimaera => self.chimaera(&["runtime", "start"]),
            Server::TestBinary => {
                test_binary_child(&self.config_path, "runtime_child_entry", "runtime")
            }
        };
        if let Some(kib) = self.launch.address_space_kib {
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
            let mut limited = Command::new("sh");
            limited
                .args(["-c", &format!("ulimit -v {kib} && exec \"$0\" \"$@\"")])
                .arg(program)
                .args(args);
            for (key, value) in command.get_envs() {
                match value {
                    Some(value) => limited.env(key, value),
                    None => limited.env_remove(key),
                };
            }
            command = limited;
        }
        command.stdout(Stdio::null());
        if self.launch.quiet_stderr {
            command.stderr(Stdio::null());
        }
        self.child = Some(command.spawn().expect("spawn the runtime"));
        let deadline = Instant::now() + STARTUP;
        while let Err(err) = Client::connect_to(&self.config) {
            assert!(Instant::now() < deadline, "runtime never came up: {err}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client::connect_to(&self.config).expect("connect")
    }

    pub(crate) fn instance(&self) -> &InstanceName {
        &self.config.instance
    }

    pub(crate) fn usage(&self) -> ShmUsage {
        usage(self.instance()).expect("segments readable")
    }

    /// Kills the runtime process (SIGKILL) and reaps it; its files stay until drop.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `chimaera` binary with `args`, for this runtime's instance.
    pub(crate) fn chimaera(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chimaera"));
        command
            .args(args)
            .env("CHI_SERVER_CONF", &self.config_path)
            .env_remove("CHI_INSTANCE");
        command
    }

    /// The test binary re-run as its `client_child_entry` test playing `role`, a client
    /// of this runtime.
    pub(crate) fn client_child_command(&self, role: &str) -> Command {
        test_binary_child(&self.config_path, "client_child_entry", role)
    }

    /// Runs a client child playing `role`, its stdout piped (see [`wait_for_line`]).
    pub(crate) fn client_child(&self, role: &str) -> Child {
        self.client_child_with(role, &[])
    }

    /// Runs a client child playing `role` with extra environment variables `env`.
    pub(crate) fn client_child_with(&self, role: &str, env: &[(&str, &str)]) -> Child {
        self.client_child_command(role)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a client child")
    }

    /// Runs a client child playing `role` as uid and gid 65534 (`nobody`), with extra
    /// environment variables `env`, its stdout piped: the tests run as root (the
    /// runtime's owner) and drop privileges for a client without admin rights, which
    /// the runtime's config must list (`access: uids: [65534]`) to serve it.
    pub(crate) fn client_child_as_nobody(&self, role: &str, env: &[(&str, &str)]) -> Child {
        self.client_child_as(65534, role, env)
    }

    /// Runs a client child playing `role` as uid and gid `uid` (see
    /// [`client_child_as_nobody`](Self::client_child_as_nobody)); the uid need not have
    /// an account.
    pub(crate) fn client_child_as(&self, uid: u32, role: &str, env: &[(&str, &str)]) -> Child {
        use std::os::unix::process::CommandExt;
        self.client_child_command(role)
            .env("CHI_RUNTIME_USER", chimaera_core::shm::naming::user_tag())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("spawn a client child as another uid")
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        self.kill();
        if let Ok(files) = chimaera_core::shm::dir::instance_files(self.instance()) {
            for file in files {
                let _ = std::fs::remove_file(file);
            }
        }
        // The runtime's lock file too (a killed runtime leaves it; `instance_files`
        // lists everything else).
        let _ =
            std::fs::remove_file(chimaera_core::shm::ShmName::runtime_lock(self.instance()).path());
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// The body of a `runtime_child_entry` test: in a runtime child (the role set), serves
/// the chimods `add_modules` registers for the instance of `CHI_SERVER_CONF` until
/// killed; in any other run of the test binary, returns at once.
pub(crate) fn serve_as_runtime_child(add_modules: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) {
    if std::env::var(ROLE).is_err() {
        return;
    }
    let config = RuntimeConfig::from_env().expect("config");
    let runtime = add_modules(chimaera::builder().config(config))
        .serve()
        .expect("serve");
    runtime.wait();
}

/// Reads `child`'s piped stdout until a line contains `wanted`.
pub(crate) fn wait_for_line(child: &mut Child, wanted: &str) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if line.expect("child output").contains(wanted) {
            // Keep draining in the background so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return;
        }
    }
    panic!("child exited before printing {wanted:?}");
}

/// In a client child's entry (an ignored test the parent test re-runs): the role the
/// child plays and its client of the runtime; `None` when the entry runs as an ordinary
/// test (no role set), which then does nothing.
pub(crate) fn client_child() -> Option<(String, Client)> {
    let role = std::env::var(ROLE).ok()?;
    let chi = Client::connect().expect("the child connects");
    Some((role, chi))
}

/// Waits for `child` to print a line containing `wanted` (see [`wait_for_line`]), then
/// to exit successfully: a child whose checks all passed.
pub(crate) fn wait_for_success(mut child: Child, wanted: &str) {
    wait_for_line(&mut child, wanted);
    let status = child.wait().expect("wait for the child");
    assert!(
        status.success(),
        "the child printed {wanted:?}, then exited with {status}"
    );
}

/// Polls `done` until it holds; fails the test after [`HANG`].
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `work` on a thread and returns its value; fails the test if it has not
/// finished within a minute (a hang, not a slow machine).
pub(crate) fn within<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    match result.recv_timeout(Duration::from_secs(60)) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} hangs"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Wakes the thread that polls, so a plain thread can await without an executor.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` to its end on this thread, parking between polls: `.await` with no
/// executor at all.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

/// A local TCP port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` from `127.0.0.1:port`: the status line and the body.
pub(crate) fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}
