//! The `chimaera` binary, run as real processes (`CARGO_BIN_EXE_chimaera`), each test
//! with its own runtime instance (a temp config file in `CHI_SERVER_CONF`); and compose,
//! the library part behind `chimaera compose`, in process. No timing assertions: waits
//! are polling loops with generous deadlines.
use chimaera::compose::{self, ComposeError};
use chimaera::config::PoolSpec;
use chimaera::mod_name::{CreateParams, ModName, ModNameClient};
use chimaera::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// A runtime instance of one test: a temp directory holding its config file.
struct Instance {
    name: String,
    dir: PathBuf,
    conf: PathBuf,
}

impl Instance {
    /// An instance named after the test, configured by `yaml` (after the `instance:` line).
    fn new(tag: &str, yaml: &str) -> Instance {
        let name = format!("cli-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("chimaera-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("chimaera.yaml");
        std::fs::write(
            &conf,
            format!("instance: {name}\nstop_grace_period_ms: 2000\n{yaml}"),
        )
        .unwrap();
        Instance { name, dir, conf }
    }

    /// `chimaera ARGS` for this instance.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chimaera"));
        command
            .args(args)
            .env("CHI_SERVER_CONF", &self.conf)
            .env_remove("CHI_INSTANCE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs `chimaera ARGS` to the end.
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("chimaera runs")
    }

    /// A file in this instance's directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `chimaera runtime start` in the background; output goes to files.
    fn start(&self) -> RuntimeProcess {
        let stdout = self.dir.join("runtime.out");
        let stderr = self.dir.join("runtime.err");
        let child = self
            .command(&["runtime", "start"])
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("chimaera runtime start spawns");
        RuntimeProcess {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits until the runtime printed its `serving` line (its `compose:` pools exist
    /// from then on), then until `runtime status` answers; fails if the runtime exits.
    fn wait_ready(&self, runtime: &mut RuntimeProcess) -> Output {
        let deadline = Instant::now() + DEADLINE;
        let mut serving = false;
        loop {
            if let Some(status) = runtime.child.try_wait().unwrap() {
                panic!(
                    "runtime exited before it was ready ({status}):\n{}",
                    runtime.output()
                );
            }
            serving = serving
                || std::fs::read_to_string(&runtime.stdout)
                    .is_ok_and(|out| out.contains("serving (pid"));
            let mut last = None;
            if serving {
                let output = self.run(&["runtime", "status"]);
                if output.status.success() {
                    return output;
                }
                last = Some(text(&output));
            }
            assert!(
                Instant::now() < deadline,
                "runtime not ready after {DEADLINE:?}: {}\n{}",
                last.unwrap_or_default(),
                runtime.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Files of this instance left in the user directory (`/dev/shm/chimaera-{user}`):
    /// its lock file, its socket and any named segment.
    fn shm_files(&self) -> Vec<String> {
        let (dot, at) = (format!("{}.", self.name), format!("{}@", self.name));
        std::fs::read_dir(chimaera_core::shm::naming::user_dir())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| entry.file_name().into_string().ok())
                    .filter(|name| name.starts_with(&dot) || name.starts_with(&at))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `chimaera runtime start` child; killed if a test fails with it still running.
struct RuntimeProcess {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl RuntimeProcess {
    /// Waits for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "runtime still running after {DEADLINE:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it printed so far, for failure messages.
    fn output(&self) -> String {
        format!(
            "--- runtime stdout\n{}--- runtime stderr\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Exit status, stdout and stderr, for assertion messages.
fn text(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_config_exits_2_naming_the_key() {
    let instance = Instance::new("badkey", "workerz:\n  low_latency: 2\n");
    let output = instance.run(&["runtime", "start"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(stderr(&output).contains("workerz"), "{}", text(&output));

    let instance = Instance::new("badvalue", "queue_depth: 100\n");
    for args in [&["runtime", "start"][..], &["runtime", "status"]] {
        let output = instance.run(args);
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        assert!(stderr(&output).contains("queue_depth"), "{}", text(&output));
    }
    assert!(instance.shm_files().is_empty());
}

#[test]
fn a_bad_compose_entry_in_the_config_exits_2_before_serving() {
    let instance = Instance::new(
        "badboot",
        "compose:\n  - module: MOD_NAME\n    name: p\n    params:\n      labl: x\n",
    );
    let output = instance.run(&["runtime", "start"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let message = stderr(&output);
    assert!(
        message.contains("labl") && message.contains("`p`"),
        "{message}"
    );
    assert!(
        instance.shm_files().is_empty(),
        "{:?}",
        instance.shm_files()
    );
}

#[test]
fn unknown_subcommands_are_usage_errors() {
    let instance = Instance::new("usage", "");
    let output = instance.run(&["runtime", "restart"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let output = instance.run(&["--help"]);
    assert!(output.status.success(), "{}", text(&output));
    for command in ["runtime", "compose", "modules", "repo"] {
        assert!(stdout(&output).contains(command), "{}", text(&output));
    }
}

#[test]
fn modules_lists_the_linked_modules_and_their_methods() {
    let instance = Instance::new("modules", "");
    let output = instance.run(&["modules"]);
    assert!(output.status.success(), "{}", text(&output));
    let listing = stdout(&output);
    assert!(
        listing.contains("MOD_NAME (chimaera 1.0.0, composable)"),
        "{listing}"
    );
    assert!(listing.contains("kCustom") && listing.contains("fn custom"));
    assert!(listing.contains("admin (chimaera") && listing.contains("kStatus"));
}

#[test]
fn status_and_stop_without_a_runtime_exit_1() {
    let instance = Instance::new("norun", "");
    let output = instance.run(&["runtime", "status"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(stdout(&output).contains("not running"), "{}", text(&output));
    let output = instance.run(&["runtime", "stop"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(stderr(&output).contains("no runtime"), "{}", text(&output));
    let compose = instance.file(
        "pools.yaml",
        "compose:\n  - module: MOD_NAME\n    name: p\n",
    );
    let output = instance.run(&["compose", compose.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(stderr(&output).contains("no runtime"), "{}", text(&output));
}

#[test]
fn compose_rejects_a_bad_file_before_connecting() {
    let instance = Instance::new("badcompose", "");
    let cases = [
        ("compose:\n  - module: nosuch\n    name: p\n", "nosuch"),
        ("compose:\n  - module: admin\n    name: a\n", "admin pool"),
        (
            "compose:\n  - module: MOD_NAME\n    name: p\n    params: {label: x, labl: y}\n",
            "labl",
        ),
        ("compose: []\n", "lists no pool"),
        ("compose:\n  - module: MOD_NAME\n    nmae: p\n", "nmae"),
    ];
    for (yaml, expected) in cases {
        let file = instance.file("pools.yaml", yaml);
        let output = instance.run(&["compose", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{yaml}: {}", text(&output));
        assert!(
            stderr(&output).contains(expected),
            "{yaml}: {}",
            text(&output)
        );
    }
    let output = instance.run(&["compose", "/nonexistent/pools.yaml"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[test]
fn repo_check_passes_on_this_workspace() {
    let output = Command::new(env!("CARGO_BIN_EXE_chimaera"))
        .args(["repo", "check", "."])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let report = stdout(&output);
    for module in ["MOD_NAME", "admin"] {
        assert!(
            report.lines().any(|line| line.starts_with("ok")
                && line.contains(module)
                && line.contains("matches the linked build")),
            "{report}"
        );
    }
}

/// A repository in a temp dir: `files` are (relative path, text).
fn repository(tag: &str, files: &[(&str, &str)]) -> (Instance, PathBuf) {
    let instance = Instance::new(tag, "");
    let root = instance.dir.join("repo");
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    (instance, root)
}

fn repo_check(instance: &Instance, root: &Path) -> Output {
    instance.run(&["repo", "check", root.to_str().unwrap()])
}

#[test]
fn repo_check_reports_every_problem_of_a_broken_repository() {
    let (instance, root) = repository(
        "brokenrepo",
        &[
            (
                "chimaera_repo.yaml",
                "name: demo\nnamespace: demo\nversion: 0.1.0\nmodules:\n  - good\n  - stray_ns\n  - ghost\n  - good\n",
            ),
            (
                "chimods/good/chimaera_mod.yaml",
                "module_name: good\nnamespace: demo\nversion: 1.0.0\nkCreate: 0\nkDestroy: -1\nkPut: 10\n",
            ),
            (
                "stray_ns/chimaera_mod.yaml",
                "module_name: stray_ns\nnamespace: other\nversion: 1.0.0\nkCreate: 0\nkFast: 5\nkPut: 12\nkGet: 12\nkDestroy: 3\n",
            ),
            (
                "chimods/unlisted/chimaera_mod.yaml",
                "module_name: unlisted\nnamespace: demo\nversion: 1.0.0\nkCreate: 0\n",
            ),
        ],
    );
    let output = repo_check(&instance, &root);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let problems = stderr(&output);
    for expected in [
        "chimaera_repo.yaml:8:5: module `good` is listed twice",
        "stray_ns/chimaera_mod.yaml:2:12: namespace `other` differs from namespace `demo`",
        "stray_ns/chimaera_mod.yaml:5:8: custom method `kFast: 5` uses an id below 10",
        "stray_ns/chimaera_mod.yaml:7:7: `kPut` and `kGet` are both 12",
        "stray_ns/chimaera_mod.yaml:8:11: `kDestroy` is inherited with the fixed id 1, not 3",
        "chimaera_repo.yaml:7:5: module `ghost` is listed in chimaera_repo.yaml but has no manifest",
        "module `unlisted` is not listed",
        "repo check: 7 problem(s) found",
    ] {
        assert!(
            problems.contains(expected),
            "missing `{expected}`:\n{problems}"
        );
    }
    assert!(stdout(&output).contains("ok  good"), "{}", text(&output));

    let (instance, root) = repository("norepo", &[("README", "")]);
    let output = repo_check(&instance, &root);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(stderr(&output).contains("chimaera_repo.yaml: not found"));
}

#[test]
fn repo_check_compares_manifests_with_the_linked_build() {
    let (instance, root) = repository(
        "stalerepo",
        &[
            (
                "chimaera_repo.yaml",
                "namespace: chimaera\nmodules: [MOD_NAME]\n",
            ),
            (
                "chimods/MOD_NAME/chimaera_mod.yaml",
                "module_name: MOD_NAME\nnamespace: chimaera\nversion: 1.0.0\nkCreate: 0\nkCustom: 11\nkCoMutexTest: 20\nkCoRwLockTest: 21\nkWaitTest: -1\nkExtra: 30\n",
            ),
        ],
    );
    let output = repo_check(&instance, &root);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let problems = stderr(&output);
    for expected in [
        "chimods/MOD_NAME/chimaera_mod.yaml:5:10: `kCustom: 11`, but the linked module `MOD_NAME` has `kCustom` at 10",
        "chimods/MOD_NAME/chimaera_mod.yaml:9:9: `kExtra: 30`, but the linked module `MOD_NAME` has no such method",
        "chimods/MOD_NAME/chimaera_mod.yaml:8:12: no enabled `kWaitTest`, but the linked module `MOD_NAME` has it at 23",
    ] {
        assert!(
            problems.contains(expected),
            "missing `{expected}`:\n{problems}"
        );
    }
}

/// The whole life of a runtime process: start, status, compose, status, stop.
#[test]
fn start_status_compose_stop() {
    let instance = Instance::new("life", "");
    let mut runtime = instance.start();
    let status = instance.wait_ready(&mut runtime);
    let report = stdout(&status);
    assert!(
        report.contains(&format!("`{}` is up", instance.name)),
        "{report}"
    );
    assert!(report.contains("admin"), "{report}");
    let serving = std::fs::read_to_string(&runtime.stdout).unwrap();
    assert!(
        serving.contains(&format!(
            "chimaera runtime `{}` serving (pid {})",
            instance.name,
            runtime.child.id()
        )),
        "{}",
        runtime.output()
    );

    let pools = instance.file(
        "pools.yaml",
        "compose:\n  - module: MOD_NAME\n    name: composed\n    containers: 2\n    params:\n      label: from yaml\n",
    );
    for _ in 0..2 {
        // Composing twice is a get-or-create: the same pool.
        let output = instance.run(&["compose", pools.to_str().unwrap()]);
        assert!(output.status.success(), "{}", text(&output));
        assert!(
            stdout(&output).contains("pool `composed` (MOD_NAME, 2 container(s)): "),
            "{}",
            text(&output)
        );
    }
    let output = instance.run(&["runtime", "status"]);
    assert!(output.status.success(), "{}", text(&output));
    let report = stdout(&output);
    assert!(
        report
            .lines()
            .any(|line| line.contains("composed") && line.contains("MOD_NAME")),
        "{report}"
    );
    assert!(report.contains("workers:"), "{report}");

    let output = instance.run(&["runtime", "stop"]);
    assert!(output.status.success(), "{}", text(&output));
    let exit = runtime.wait_exit();
    assert!(exit.success(), "{exit}\n{}", runtime.output());
    assert!(
        instance.shm_files().is_empty(),
        "{:?}",
        instance.shm_files()
    );
    let output = instance.run(&["runtime", "status"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
}

/// `compose:` in the config creates pools at boot; SIGTERM stops the runtime cleanly.
#[test]
fn compose_at_boot_and_a_clean_stop_on_sigterm() {
    let instance = Instance::new(
        "boot",
        "compose:\n  - module: MOD_NAME\n    name: at_boot\n    params: {label: boot}\n",
    );
    let mut runtime = instance.start();
    let status = instance.wait_ready(&mut runtime);
    assert!(
        stdout(&status)
            .lines()
            .any(|line| line.contains("at_boot") && line.contains("MOD_NAME")),
        "{}",
        text(&status)
    );
    runtime.signal("TERM");
    let exit = runtime.wait_exit();
    assert!(exit.success(), "{exit}\n{}", runtime.output());
    assert!(
        instance.shm_files().is_empty(),
        "{:?}",
        instance.shm_files()
    );
}

// Compose in process: what `chimaera compose` and `runtime start` do with the entries.

fn spec(module: &str, name: &str, params: &str) -> PoolSpec {
    PoolSpec {
        module: module.into(),
        name: name.into(),
        containers: 1,
        params: params.parse().unwrap(),
    }
}

#[test]
fn compose_creates_the_pool_the_typed_client_would() {
    let builder = chimaera::builder();
    let specs = [spec("MOD_NAME", "yaml_pool", "{label: hello}")];
    let prepared = compose::prepare(builder.modules(), &specs).unwrap();
    let runtime = builder.start().unwrap();
    let chi = runtime.client();
    let info = prepared[0].create(&chi).unwrap();
    assert_eq!(
        (info.name.as_str(), info.module.as_str()),
        ("yaml_pool", "MOD_NAME")
    );
    // The typed client re-opens it with equal create params, and only with those.
    let same = CreateParams {
        label: "hello".into(),
    };
    let m = ModNameClient::create(&chi, PoolQuery::local(), "yaml_pool", same).unwrap();
    assert_eq!(m.pool_id(), info.id);
    assert_eq!(m.custom(PoolQuery::local(), "ok", 0).unwrap(), "ok");
    let other = CreateParams {
        label: "other".into(),
    };
    let err = ModNameClient::create(&chi, PoolQuery::local(), "yaml_pool", other).unwrap_err();
    assert!(matches!(err, TaskError::PoolMismatch { .. }), "{err}");
    // Empty params are the defaults.
    let defaults = compose::prepare(&builder_modules(), &[spec("MOD_NAME", "d", "{}")]).unwrap();
    defaults[0].create(&chi).unwrap();
    ModNameClient::create(&chi, PoolQuery::local(), "d", CreateParams::default()).unwrap();
}

fn builder_modules() -> Vec<chimaera_core::module::ModuleEntry> {
    chimaera::builder().modules().copied().collect()
}

#[test]
fn compose_errors_name_the_pool_and_the_module() {
    let modules = builder_modules();
    let err = |spec: PoolSpec| compose::prepare(&modules, &[spec]).unwrap_err();
    let unknown = err(spec("nosuch", "p1", "{}"));
    assert!(
        matches!(unknown, ComposeError::UnknownModule { .. }),
        "{unknown}"
    );
    assert!(
        unknown.to_string().contains("MOD_NAME"),
        "lists the linked: {unknown}"
    );
    assert!(matches!(
        err(spec("admin", "a", "{}")),
        ComposeError::Admin { .. }
    ));
    let bad = err(spec("MOD_NAME", "p2", "{labl: x}"));
    assert!(
        matches!(
            &bad,
            ComposeError::Params {
                source: TaskError::BadComposeParams { module, detail },
                ..
            } if module == "MOD_NAME" && detail.contains("labl")
        ),
        "{bad}"
    );
    let message = bad.to_string();
    assert!(
        message.contains("`p2`") && message.contains("MOD_NAME") && message.contains("labl"),
        "{message}"
    );
    let typed = err(spec("MOD_NAME", "p3", "{label: [1, 2]}"));
    assert!(
        matches!(
            typed,
            ComposeError::Params {
                source: TaskError::BadComposeParams { .. },
                ..
            }
        ),
        "{typed}"
    );

    // A module linked without `composable_module` cannot be composed.
    let plain = chimaera::Runtime::builder()
        .module::<chimaera::admin::Admin>()
        .module::<ModName>();
    let not = compose::prepare(plain.modules(), &[spec("MOD_NAME", "p4", "{}")]).unwrap_err();
    assert!(matches!(not, ComposeError::NotComposable { .. }), "{not}");
    assert!(not.to_string().contains("composable_module"), "{not}");

    // A pool that exists with other params is refused by the runtime, naming the pool.
    let runtime = chimaera::builder().start().unwrap();
    let chi = runtime.client();
    let first = compose::prepare(&modules, &[spec("MOD_NAME", "twice", "{label: a}")]).unwrap();
    first[0].create(&chi).unwrap();
    let second = compose::prepare(&modules, &[spec("MOD_NAME", "twice", "{label: b}")]).unwrap();
    let refused = second[0].create(&chi).unwrap_err();
    assert!(
        matches!(
            refused,
            ComposeError::Create {
                source: TaskError::PoolMismatch { .. },
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("`twice`"), "{refused}");
}
