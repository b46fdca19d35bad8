//! Planted files against the real `chimaera` binary and a real client: a symlink, a FIFO,
//! a hard link or another user's file where the runtime keeps its lock, socket or
//! directory. Each must give a clear error naming the path, and nothing may be followed,
//! truncated or waited on: every binary run here is bounded by a deadline and a run that
//! outlives it fails the test as a hang.
//!
//! Each test has its own instance; tests about the user directory itself also get their
//! own parent directory through `CHI_SHM_DIR`, so they never disturb the shared
//! `/dev/shm/chimaera-{user}`. Tests that hand a file to uid 65534 need root (CI runs as
//! root) and say so when skipped.
use chimaera::prelude::*;
use chimaera_core::shm::naming::{user_dir, user_dir_name, ShmName};
use chimaera_core::shm::{InstanceName, RuntimeDir};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Bounds every run of the binary: far beyond a healthy run, short of a CI timeout.
const DEADLINE: Duration = Duration::from_secs(60);
const NOBODY: u32 = 65534;
/// Small segments: these runtimes serve one client at most.
const SMALL: &str = "max_clients: 4\nqueue_depth: 16\nshm:\n  main_size: 1MiB\n  \
                     client_data_size: 1MiB\n  runtime_data_size: 1MiB\n";

/// One test's runtime instance: its config file, a scratch directory, and optionally a
/// parent directory of its own for the user directory (`CHI_SHM_DIR`).
struct Instance {
    name: InstanceName,
    scratch: PathBuf,
    conf: PathBuf,
    parent: Option<PathBuf>,
}

impl Instance {
    /// An instance whose files go to the usual user directory.
    fn new(tag: &str) -> Instance {
        let name = format!("files-{}-{tag}", std::process::id());
        let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&name);
        std::fs::create_dir_all(&scratch).unwrap();
        let conf = scratch.join("chimaera.yaml");
        std::fs::write(&conf, format!("instance: {name}\n{SMALL}")).unwrap();
        RuntimeDir::for_user().expect("the user directory is usable");
        Instance {
            name: InstanceName::new(&name).unwrap(),
            scratch,
            conf,
            parent: None,
        }
    }

    /// An instance whose user directory lives in a parent of its own (mode 755, ours).
    fn with_own_parent(tag: &str) -> Instance {
        let mut instance = Instance::new(tag);
        let parent = PathBuf::from(format!("/dev/shm/files-{}-{tag}", std::process::id()));
        std::fs::create_dir(&parent).unwrap();
        set_mode(&parent, 0o755);
        instance.parent = Some(parent);
        instance
    }

    /// The user directory this instance's runtime uses.
    fn user_dir(&self) -> PathBuf {
        match &self.parent {
            Some(parent) => parent.join(user_dir_name()),
            None => user_dir(),
        }
    }

    /// The path of one of the instance's files.
    fn path(&self, name: &ShmName) -> PathBuf {
        self.user_dir().join(name.as_str())
    }

    fn lock(&self) -> PathBuf {
        self.path(&ShmName::runtime_lock(&self.name))
    }

    fn socket(&self) -> PathBuf {
        self.path(&ShmName::socket(&self.name))
    }

    fn victim(&self) -> PathBuf {
        let path = self.scratch.join("victim");
        std::fs::write(&path, "precious").unwrap();
        set_mode(&path, 0o600);
        path
    }

    fn config(&self) -> RuntimeConfig {
        RuntimeConfig::from_file(&self.conf).unwrap()
    }

    /// `chimaera ARGS` for this instance; output to files in the scratch directory.
    fn command(&self, args: &[&str], log: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chimaera"));
        command
            .args(args)
            .env("CHI_SERVER_CONF", &self.conf)
            .env_remove("CHI_INSTANCE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.scratch.join(format!("{log}.out"))).unwrap())
            .stderr(std::fs::File::create(self.scratch.join(format!("{log}.err"))).unwrap());
        match &self.parent {
            Some(parent) => command.env("CHI_SHM_DIR", parent),
            None => command.env_remove("CHI_SHM_DIR"),
        };
        command
    }

    /// Runs `chimaera ARGS` to its end within [`DEADLINE`]; a run that does not end is
    /// killed and fails the test as a hang.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(args, &[])
    }

    /// [`run`](Self::run) with extra environment variables.
    fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let log = args.join("-");
        let mut command = self.command(args, &log);
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("chimaera runs");
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`chimaera {}` hung (killed after {DEADLINE:?})",
                    args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |ext| {
            std::fs::read_to_string(self.scratch.join(format!("{log}.{ext}"))).unwrap_or_default()
        };
        Run {
            status,
            stdout: read("out"),
            stderr: read("err"),
        }
    }

    /// Starts `chimaera runtime start` and waits for its `serving` line.
    fn serve(&self) -> Serving {
        let mut child = self
            .command(&["runtime", "start"], "serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("chimaera runtime start spawns");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let started = stdout
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("serving (pid"));
        let serving = Serving(child);
        assert!(
            started,
            "the runtime did not start: {}",
            std::fs::read_to_string(self.scratch.join("serve.err")).unwrap_or_default()
        );
        serving
    }

    /// `chimaera runtime stop`, which must succeed.
    fn stop(&self, mut serving: Serving) {
        let stop = self.run(&["runtime", "stop"]);
        assert!(stop.status.success(), "stop failed: {stop:?}");
        assert!(serving.0.wait().unwrap().success());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
        match &self.parent {
            Some(parent) => {
                // Undo what a test did to the user directory so it can be removed.
                let _ = std::fs::set_permissions(self.user_dir(), PermissionsExt::from_mode(0o700));
                let _ = std::fs::remove_dir_all(parent);
            }
            None => {
                for name in [
                    ShmName::runtime_lock(&self.name),
                    ShmName::socket(&self.name),
                ] {
                    let _ = std::fs::remove_file(self.path(&name));
                }
                for file in chimaera_core::shm::dir::instance_files(&self.name).unwrap_or_default()
                {
                    let _ = std::fs::remove_file(file);
                }
            }
        }
    }
}

/// A serving runtime; killed if the test ends without stopping it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts a failed run whose stderr says every one of `words`.
    fn fails_saying(&self, words: &[&str]) {
        assert!(!self.status.success(), "expected a failure: {self:?}");
        for word in words {
            assert!(
                self.stderr.contains(word),
                "stderr lacks `{word}`: {self:?}"
            );
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, PermissionsExt::from_mode(mode)).unwrap();
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o600),
        0,
    )
    .unwrap();
}

/// Why a client cannot attach to `config`'s runtime; fails the test if it can.
fn connect_error(config: &RuntimeConfig) -> String {
    match Client::connect_to(config) {
        Ok(_) => panic!("a client attached to `{}`", config.instance),
        Err(err) => err.to_string(),
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn a_symlink_at_the_lock_is_refused_by_start_and_status_and_not_followed() {
    let instance = Instance::new("locklink");
    let victim = instance.victim();
    std::os::unix::fs::symlink(&victim, instance.lock()).unwrap();
    let lock = instance.lock().display().to_string();

    instance
        .run(&["runtime", "start"])
        .fails_saying(&["symbolic link", &lock]);
    instance
        .run(&["runtime", "status"])
        .fails_saying(&["symbolic link", &lock]);
    instance
        .run(&["runtime", "stop"])
        .fails_saying(&["symbolic link", &lock]);
    // No runtime started, so a client finds none; it never touches the lock file.
    let err = connect_error(&instance.config());
    assert!(err.contains("no chimaera runtime is running"), "{err}");

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(std::fs::symlink_metadata(instance.lock())
        .unwrap()
        .is_symlink());
}

#[test]
fn a_fifo_at_the_lock_is_refused_without_hanging() {
    let instance = Instance::new("lockfifo");
    mkfifo(&instance.lock());
    instance.run(&["runtime", "status"]).fails_saying(&["FIFO"]);
    instance.run(&["runtime", "start"]).fails_saying(&["FIFO"]);
    let err = connect_error(&instance.config());
    assert!(err.contains("no chimaera runtime is running"), "{err}");
}

#[test]
fn a_hard_link_at_the_lock_is_not_truncated() {
    let instance = Instance::new("lockhard");
    // Same file system as the user directory, so it can be linked in.
    let victim = user_dir().with_file_name(format!("files-{}-victim", std::process::id()));
    std::fs::write(&victim, "precious").unwrap();
    set_mode(&victim, 0o600);
    std::fs::hard_link(&victim, instance.lock()).unwrap();
    instance
        .run(&["runtime", "start"])
        .fails_saying(&["hard links"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    std::fs::remove_file(victim).unwrap();
}

#[test]
fn a_lock_file_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a file to uid {NOBODY}");
        return;
    }
    let instance = Instance::new("lockowner");
    std::fs::write(instance.lock(), "").unwrap();
    set_mode(&instance.lock(), 0o600);
    std::os::unix::fs::chown(instance.lock(), Some(NOBODY), Some(NOBODY)).unwrap();
    instance
        .run(&["runtime", "start"])
        .fails_saying(&["owned by uid 65534"]);
    instance
        .run(&["runtime", "status"])
        .fails_saying(&["owned by uid 65534"]);
    assert_eq!(std::fs::metadata(instance.lock()).unwrap().len(), 0);
}

#[test]
fn a_client_refuses_a_planted_socket_of_a_live_runtime() {
    let instance = Instance::new("socket");
    let serving = instance.serve();
    let config = instance.config();
    Client::connect_to(&config).expect("a client attaches to the healthy runtime");

    // Another process of the user swaps the socket for a link to a victim file.
    let victim = instance.victim();
    let socket = instance.socket();
    std::fs::remove_file(&socket).unwrap();
    std::os::unix::fs::symlink(&victim, &socket).unwrap();
    let err = connect_error(&config);
    assert!(
        err.contains("not a socket") && err.contains(&*socket.to_string_lossy()),
        "{err}"
    );
    instance
        .run(&["runtime", "status"])
        .fails_saying(&["not a socket"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // Then for a FIFO: refused, and nobody waits for a writer.
    std::fs::remove_file(&socket).unwrap();
    mkfifo(&socket);
    let err = connect_error(&config);
    assert!(err.contains("not a socket"), "{err}");

    // No client can reach the runtime now, so stop it by SIGTERM (the same clean stop):
    // it serves on, stops, and removes every name it owns, the planted one included.
    let mut serving = serving;
    let sent = Command::new("kill")
        .args(["-TERM", &serving.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(serving.0.wait().unwrap().success());
    assert!(!instance.lock().exists());
    let left = chimaera_core::shm::dir::instance_files(&instance.name).unwrap();
    assert!(left.is_empty(), "left: {left:?}");
}

#[test]
fn a_killed_runtimes_files_are_replaced_but_a_planted_link_stops_the_next_start() {
    let instance = Instance::new("stale");
    let mut serving = instance.serve();
    serving.0.kill().unwrap(); // SIGKILL: the lock file and the socket stay
    serving.0.wait().unwrap();
    assert!(instance.socket().exists());

    let victim = instance.victim();
    let socket = instance.socket();
    std::fs::remove_file(&socket).unwrap();
    std::os::unix::fs::symlink(&victim, &socket).unwrap();
    instance
        .run(&["runtime", "start"])
        .fails_saying(&["symbolic link", &socket.to_string_lossy()]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // Once the link is gone, the next start replaces the dead runtime's files.
    std::fs::remove_file(&socket).unwrap();
    let serving = instance.serve();
    Client::connect_to(&instance.config()).expect("attaches to the new runtime");
    instance.stop(serving);
}

#[test]
fn the_user_directory_goes_where_chi_shm_dir_says_and_holds_nothing_after_a_stop() {
    let instance = Instance::with_own_parent("parent");
    let serving = instance.serve();
    let meta = std::fs::symlink_metadata(instance.user_dir()).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert!(instance.lock().exists() && instance.socket().exists());
    let status = instance.run(&["runtime", "status"]);
    assert!(status.status.success(), "{status:?}");
    assert!(status.stdout.contains("is up"), "{status:?}");
    instance.stop(serving);
    let left: Vec<_> = std::fs::read_dir(instance.user_dir()).unwrap().collect();
    assert!(left.is_empty(), "left: {left:?}");
}

#[test]
fn a_user_directory_open_to_others_is_refused_not_repaired() {
    let instance = Instance::with_own_parent("dirmode");
    std::fs::create_dir(instance.user_dir()).unwrap();
    set_mode(&instance.user_dir(), 0o777);
    instance
        .run(&["runtime", "start"])
        .fails_saying(&["mode 777", &instance.user_dir().to_string_lossy()]);
    instance
        .run(&["runtime", "status"])
        .fails_saying(&["mode 777"]);
    let meta = std::fs::metadata(instance.user_dir()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o777);
    assert_eq!(std::fs::read_dir(instance.user_dir()).unwrap().count(), 0);
}

#[test]
fn a_symlinked_user_directory_is_refused_and_not_followed() {
    let instance = Instance::with_own_parent("dirlink");
    let elsewhere = instance.scratch.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    set_mode(&elsewhere, 0o700);
    std::os::unix::fs::symlink(&elsewhere, instance.user_dir()).unwrap();
    instance
        .run(&["runtime", "start"])
        .fails_saying(&["symbolic link", &instance.user_dir().to_string_lossy()]);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn a_user_directory_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a directory to uid {NOBODY}");
        return;
    }
    let instance = Instance::with_own_parent("dirowner");
    std::fs::create_dir(instance.user_dir()).unwrap();
    set_mode(&instance.user_dir(), 0o700);
    std::os::unix::fs::chown(instance.user_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
    instance
        .run(&["runtime", "start"])
        .fails_saying(&["owned by uid 65534"]);
    assert_eq!(std::fs::read_dir(instance.user_dir()).unwrap().count(), 0);
}

#[test]
fn a_directory_named_after_another_user_but_not_theirs_is_not_trusted() {
    if !is_root() {
        eprintln!("skipped: needs root (and the user `nobody`, uid {NOBODY})");
        return;
    }
    if chimaera_core::shm::naming::user_tag_of(NOBODY) != "nobody" {
        eprintln!("skipped: uid {NOBODY} is not called `nobody` here");
        return;
    }
    let instance = Instance::with_own_parent("trap");
    let serving = instance.serve();
    // Someone other than `nobody` (here: us) made `chimaera-nobody` and listens in it,
    // hoping a client told to reach nobody's runtime hands it its tasks.
    let parent = instance.parent.clone().unwrap();
    let trap = parent.join("chimaera-nobody");
    std::fs::create_dir(&trap).unwrap();
    set_mode(&trap, 0o711);
    let socket = trap.join(ShmName::socket(&instance.name).as_str());
    let _impostor = std::os::unix::net::UnixListener::bind(&socket).unwrap();

    instance
        .run_with_env(&["runtime", "status"], &[("CHI_RUNTIME_USER", "nobody")])
        .fails_saying(&["not by the user `nobody`", &trap.to_string_lossy()]);
    instance.stop(serving);
    let _ = std::fs::remove_dir_all(&trap);
}
