//! The operators' tools, run as real processes against real runtime processes (the
//! shared harness, `tests/support`): global flags and where bad values came from,
//! completions, `runtime status --json` against its schema, `pool list|info|destroy`,
//! `runtime clean` after a SIGKILL, the Prometheus endpoint, and `monitor` in a real
//! terminal (tmux). Every test has its own instance; nothing asserts timing.
mod support;

use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::{free_port, http_get, wait_until, RuntimeProcess};

fn text(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `chimaera ARGS` with no configuration from the environment but `env`.
fn chimaera(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chimaera"))
        .args(args)
        .env_remove("CHI_SERVER_CONF")
        .env_remove("CHI_INSTANCE")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("chimaera runs")
}

fn run(runtime: &RuntimeProcess, args: &[&str]) -> Output {
    runtime
        .chimaera(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("chimaera runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A MOD_NAME pool `name` with `tasks` `custom` calls run on it.
fn pool_with_tasks(client: &Client, name: &str, tasks: u32) -> ModNameClient {
    let pool = ModNameClient::create(client, PoolQuery::local(), name, CreateParams::default())
        .expect("pool created");
    for i in 0..tasks {
        pool.custom(PoolQuery::local(), "x", i).expect("task runs");
    }
    pool
}

#[test]
fn the_global_flags_show_their_variables_in_help() {
    for args in [&["--help"][..], &["runtime", "status", "--help"]] {
        let output = chimaera(args, &[]);
        assert!(output.status.success(), "{}", text(&output));
        let help = stdout(&output);
        for wanted in [
            "--config <FILE>",
            "CHI_SERVER_CONF",
            "--instance <NAME>",
            "CHI_INSTANCE",
            "--log <FILTER>",
            "RUST_LOG",
        ] {
            assert!(help.contains(wanted), "{args:?} lacks {wanted}:\n{help}");
        }
    }
    let help = stdout(&chimaera(&["--help"], &[]));
    for command in ["runtime", "pool", "monitor", "completions"] {
        assert!(help.contains(command), "{help}");
    }
}

/// Arguments, environment, words the error must name, words it must not.
type Case<'a> = (
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    &'a [&'a str],
    &'a [&'a str],
);

#[test]
fn errors_name_where_the_bad_value_came_from() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("list.yaml");
    std::fs::write(&list, "- a\n- b\n").unwrap();
    let list = list.to_str().unwrap();
    let missing = "/nonexistent/chimaera.yaml";
    let cases: [Case; 7] = [
        // A path from argv is not the variable's.
        (
            &["compose", missing],
            &[],
            &["FILE argument"],
            &["CHI_SERVER_CONF"],
        ),
        (
            &["--config", missing, "runtime", "status"],
            &[],
            &["--config"],
            &["CHI_SERVER_CONF"],
        ),
        (
            &["runtime", "status"],
            &[("CHI_SERVER_CONF", missing)],
            &["CHI_SERVER_CONF"],
            &["--config"],
        ),
        (
            &["runtime", "status", "--instance", "a/b"],
            &[],
            &["--instance", "a/b"],
            &["CHI_INSTANCE"],
        ),
        (
            &["runtime", "status"],
            &[("CHI_INSTANCE", "a/b")],
            &["CHI_INSTANCE"],
            &["--instance"],
        ),
        // A list where the config's mapping belongs: what belongs there, no internal name.
        (
            &["--config", list, "runtime", "status"],
            &[],
            &["a mapping of config keys", list, "--config"],
            &["FileConfig", "struct"],
        ),
        (
            &["--log", "a=b=c", "modules"],
            &[],
            &["--log", "a=b=c"],
            &["RUST_LOG"],
        ),
    ];
    for (args, env, wanted, unwanted) in cases {
        let output = chimaera(args, env);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let message = stderr(&output);
        assert!(message.starts_with("chimaera: "), "{message}");
        for word in wanted {
            assert!(
                message.contains(word),
                "{args:?} {env:?}: no {word}: {message}"
            );
        }
        for word in unwanted {
            assert!(
                !message.contains(word),
                "{args:?} {env:?}: {word} in {message}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_flag_wins_over_its_variable() {
    let output = chimaera(
        &["runtime", "status", "--json", "--instance", "ops-flag"],
        &[("CHI_INSTANCE", "ops-env")],
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["instance"], "ops-flag", "{}", text(&output));
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef chimaera"),
        ("fish", "complete -c chimaera"),
        ("elvish", "chimaera"),
        ("powershell", "chimaera"),
    ] {
        let output = chimaera(&["completions", shell], &[]);
        assert!(output.status.success(), "{shell}: {}", text(&output));
        let script = stdout(&output);
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["runtime", "status", "destroy", "instance"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let output = chimaera(&["completions", "tcsh"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

/// Checks that `value[key]` exists and has the JSON type `kind`; returns it.
fn field<'a>(value: &'a Value, key: &str, kind: &str) -> &'a Value {
    let field = value
        .get(key)
        .unwrap_or_else(|| panic!("no `{key}` in {value}"));
    let ok = match kind {
        "u64" => field.is_u64(),
        "string" => field.is_string(),
        "bool" => field.is_boolean(),
        "array" => field.is_array(),
        "object" => field.is_object(),
        "null" => field.is_null(),
        other => panic!("unknown kind {other}"),
    };
    assert!(ok, "`{key}` is not {kind}: {field}");
    field
}

fn array<'a>(value: &'a Value, key: &str) -> &'a Vec<Value> {
    field(value, key, "array").as_array().unwrap()
}

#[test]
fn status_json_follows_schema_1_and_leaves_itself_out() {
    let runtime = RuntimeProcess::start("status_json", "");
    let client = runtime.client();
    let pool = pool_with_tasks(&client, "counted", 25);
    // A run killed by a stack overflow counts as failed, and is no longer in flight.
    let overflow = pool.overflow_test(PoolQuery::local(), &mut [0u8; 16], false, 0, true);
    assert!(
        matches!(overflow, Err(TaskError::StackOverflow { .. })),
        "{overflow:?}"
    );

    let output = run(&runtime, &["runtime", "status", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let status: Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(field(&status, "schema", "u64"), 1);
    assert_eq!(
        field(&status, "instance", "string"),
        runtime.instance().as_str()
    );
    assert_eq!(field(&status, "running", "bool"), true);
    field(&status, "pid", "u64");
    let tasks = field(&status, "tasks", "object");
    // The status query is neither in flight nor a client: only this test's client is.
    assert_eq!(field(tasks, "in_flight", "u64"), 0, "{status}");
    assert!(field(tasks, "completed", "u64").as_u64().unwrap() >= 25);
    field(tasks, "periodic", "u64");
    // A poller and a spare per worker, and the stack the overflow leaked for good.
    let coroutines = field(&status, "coroutines", "object");
    let live = field(coroutines, "live", "u64").as_u64().unwrap();
    let max = field(coroutines, "max", "u64").as_u64().unwrap();
    let workers = runtime.config.workers() as u64;
    assert!(live > 2 * workers && live < max, "{coroutines}");
    assert_eq!(max, runtime.config.coroutine_budget() as u64);
    assert_eq!(field(&status, "clients", "u64"), 1, "{status}");
    // Only the owner connected: no uid with quotas.
    let uids = field(&status, "uids", "array").as_array().unwrap();
    assert!(uids.is_empty(), "{status}");
    // A single node: node 0, no cluster.
    assert_eq!(field(&status, "node", "u64"), 0);
    assert!(array(&status, "nodes").is_empty(), "{status}");
    let workers = array(&status, "workers");
    assert_eq!(workers.len(), runtime.config.workers());
    for worker in workers {
        field(worker, "id", "u64");
        field(worker, "tasks_run", "u64");
        field(worker, "queued", "u64");
    }
    let pools = array(&status, "pools");
    let pool = pools
        .iter()
        .find(|pool| pool["name"] == "counted")
        .expect("the pool is listed");
    field(pool, "id", "string");
    assert_eq!(field(pool, "module", "string"), "MOD_NAME");
    field(pool, "queued", "u64");
    // The owner's pool is shared: private to no uid.
    field(pool, "private_to", "null");
    let containers = array(pool, "containers");
    assert_eq!(containers.len(), 1);
    for container in containers {
        field(container, "id", "u64");
        let lanes = array(container, "lanes");
        assert!(!lanes.is_empty());
        for lane in lanes {
            field(lane, "id", "u64");
            field(lane, "worker", "u64");
            field(lane, "queued", "u64");
            let priority = field(lane, "priority", "string");
            assert!(priority == "low_latency" || priority == "high_latency");
        }
    }
    let methods = array(pool, "methods");
    let custom = methods
        .iter()
        .find(|method| method["name"] == "kCustom")
        .expect("kCustom listed");
    field(custom, "id", "u64");
    assert_eq!(field(custom, "completed", "u64"), 25);
    assert_eq!(field(custom, "failed", "u64"), 0);
    assert_eq!(field(custom, "in_flight", "u64"), 0);
    let latency = field(custom, "latency_ns", "object");
    assert_eq!(field(latency, "count", "u64"), 25);
    let [p50, p90, p99, max] =
        ["p50", "p90", "p99", "max"].map(|key| field(latency, key, "u64").as_u64().unwrap());
    field(latency, "mean", "u64");
    assert!(
        0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{latency}"
    );
    let overflowed = methods
        .iter()
        .find(|method| method["name"] == "kOverflowTest")
        .expect("kOverflowTest listed");
    assert_eq!(
        (
            &overflowed["completed"],
            &overflowed["failed"],
            &overflowed["in_flight"]
        ),
        (&Value::from(0), &Value::from(1), &Value::from(0)),
        "{overflowed}"
    );
    let admin = pools
        .iter()
        .find(|pool| pool["id"] == "1.0")
        .expect("admin");
    let own = array(admin, "methods")
        .iter()
        .find(|method| method["name"] == "kStatus")
        .expect("kStatus listed");
    assert_eq!(
        field(own, "in_flight", "u64"),
        0,
        "the query leaves itself out"
    );
    let shm = field(&status, "shm", "object");
    assert_eq!(field(shm, "serving", "bool"), true);
    assert_eq!(
        field(shm, "max_clients", "u64"),
        u64::from(runtime.config.max_clients)
    );
    for key in [
        "main_size",
        "client_data_size",
        "runtime_data_size",
        "per_client_bytes",
        "committed_bytes",
        "output_bytes_in_use",
    ] {
        field(shm, key, "u64");
    }
    assert_eq!(field(shm, "client_areas_in_use", "u64"), 1, "{shm}");
    assert_eq!(shm["committed_bytes"], shm["per_client_bytes"]);

    // The text form says the same without counting itself.
    let output = run(&runtime, &["runtime", "status"]);
    let report = stdout(&output);
    assert!(
        report.contains("0 in flight") && report.contains("clients attached: 1"),
        "{report}"
    );
    assert!(report.contains("kCustom"), "{report}");
}

#[test]
fn pool_list_info_and_destroy() {
    let runtime = RuntimeProcess::start("pool_verbs", "");
    let client = runtime.client();
    let doomed = pool_with_tasks(&client, "doomed", 3);
    let _kept = pool_with_tasks(&client, "kept", 0);

    let list = run(&runtime, &["pool", "list"]);
    assert!(list.status.success(), "{}", text(&list));
    for name in ["admin", "doomed", "kept"] {
        assert!(stdout(&list).contains(name), "{}", text(&list));
    }
    let info = run(&runtime, &["pool", "info", "doomed"]);
    assert!(info.status.success(), "{}", text(&info));
    let report = stdout(&info);
    assert!(report.contains(&doomed.pool_id().to_string()), "{report}");
    assert!(report.contains("lane 0: worker"), "{report}");
    assert!(
        report.contains("kCustom") && report.contains("3 done"),
        "{report}"
    );

    let destroy = run(&runtime, &["pool", "destroy", "doomed"]);
    assert!(destroy.status.success(), "{}", text(&destroy));
    assert!(stdout(&destroy).contains("destroyed"), "{}", text(&destroy));
    let err = doomed.custom(PoolQuery::local(), "x", 0).unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::UnknownPool { .. } | TaskError::PoolDestroyed { .. }
        ),
        "{err}"
    );
    let list = stdout(&run(&runtime, &["pool", "list"]));
    assert!(!list.contains("doomed") && list.contains("kept"), "{list}");

    for (args, wanted) in [
        (&["pool", "destroy", "doomed"][..], "no pool named `doomed`"),
        (&["pool", "info", "nosuch"], "pool list"),
        (&["pool", "destroy", "admin"], "admin pool"),
    ] {
        let output = run(&runtime, args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {}", text(&output));
        assert!(
            stderr(&output).contains(wanted),
            "{args:?}: {}",
            text(&output)
        );
    }
    assert!(stdout(&run(&runtime, &["pool", "list"])).contains("kept"));
}

/// A client names its pool with terminal escapes, a bell, a newline and a bidi override:
/// the text outputs print them escaped (the operator's terminal is not the client's to
/// drive), JSON carries the name exactly, and look-ups by the real name still work.
#[test]
fn names_a_client_chose_cannot_drive_the_operators_terminal() {
    let runtime = RuntimeProcess::start("hostile_names", "");
    let client = runtime.client();
    let evil = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\nfake line\u{202e}dne";
    let _pool = pool_with_tasks(&client, evil, 1);
    let raw = |text: &str| {
        text.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}')
            || text.lines().any(|line| line.starts_with("fake line"))
    };
    for args in [
        &["pool", "list"][..],
        &["runtime", "status"],
        &["pool", "info", evil],
    ] {
        let output = run(&runtime, args);
        assert!(output.status.success(), "{}", text(&output));
        let printed = stdout(&output);
        assert!(
            !raw(&printed),
            "{args:?} printed a raw control character:\n{printed:?}"
        );
        assert!(printed.contains("evil\\u{1b}]0;pwned"), "{printed:?}");
    }
    let output = run(&runtime, &["runtime", "status", "--json"]);
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(array(&json, "pools")
        .iter()
        .any(|pool| pool["name"] == evil));
    let output = run(&runtime, &["pool", "destroy", evil]);
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn runtime_clean_removes_what_a_killed_runtime_left() {
    let mut runtime = RuntimeProcess::start("clean", "");
    let lock = chimaera_core::shm::ShmName::runtime_lock(runtime.instance()).path();
    let socket = chimaera_core::shm::ShmName::socket(runtime.instance()).path();

    // While it runs, clean refuses and removes nothing.
    let output = run(&runtime, &["runtime", "clean"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(stderr(&output).contains("is running"), "{}", text(&output));
    assert!(lock.exists() && socket.exists());
    // Nor does a second start of the instance touch them.
    let output = run(&runtime, &["runtime", "start"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        stderr(&output).contains("already running")
            && stderr(&output).contains("`chimaera runtime stop`"),
        "{}",
        text(&output)
    );
    assert!(lock.exists() && socket.exists());

    runtime.kill();
    assert!(lock.exists() && socket.exists(), "kill -9 leaves its files");
    let output = run(&runtime, &["runtime", "status"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = stdout(&output);
    assert!(
        report.contains("not running") && report.contains("a dead runtime left 2 file(s)"),
        "{report}"
    );
    assert!(report.contains(&lock.display().to_string()), "{report}");
    let output = run(&runtime, &["runtime", "status", "--json"]);
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["running"], false);
    assert_eq!(array(&json, "leftover_files").len(), 2, "{json}");
    field(&json, "leftover_bytes", "u64");

    let output = run(&runtime, &["runtime", "clean"]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(stdout(&output).contains("2 file(s)"), "{}", text(&output));
    assert!(!lock.exists() && !socket.exists(), "{}", text(&output));
    let output = run(&runtime, &["runtime", "status", "--json"]);
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(array(&json, "leftover_files").len(), 0, "{json}");
    // And a runtime starts again in the cleaned place.
    runtime.spawn();
    assert!(run(&runtime, &["runtime", "status"]).status.success());
}

/// The public instance API the CLI's `status` and `clean` stand on: liveness from the
/// lock, the files a killed runtime left (with sizes), and a clean that refuses while the
/// runtime lives and afterwards removes exactly those files.
#[test]
fn the_instance_api_reports_and_cleans_a_killed_runtimes_files() {
    use chimaera::instance::{self, InstanceFile, RuntimeLockError};
    let mut runtime = RuntimeProcess::start("instance_api", "");
    let name = runtime.instance().clone();
    let lock = instance::user_dir().join(format!("{name}.lock"));
    let socket = instance::user_dir().join(format!("{name}.sock"));

    assert!(instance::runtime_alive(&name).unwrap());
    let pid = instance::runtime_pid(&name).expect("the live runtime's pid");
    match instance::clean(&name) {
        Err(RuntimeLockError::AlreadyRunning { pid: holder, .. }) => {
            assert_eq!(holder, Some(pid))
        }
        other => panic!("clean of a live runtime: {other:?}"),
    }
    assert!(
        lock.exists() && socket.exists(),
        "a refused clean removes nothing"
    );

    runtime.kill();
    assert!(!instance::runtime_alive(&name).unwrap());
    assert_eq!(instance::runtime_pid(&name), None);
    let left = instance::instance_files(&name).unwrap();
    let paths: Vec<_> = left.iter().map(|file| file.path.clone()).collect();
    assert_eq!(paths, [lock.clone(), socket.clone()]);
    assert!(left[0].bytes > 0, "the lock file holds the pid: {left:?}");

    let cleaned = instance::clean(&name).unwrap();
    let mut expected: Vec<InstanceFile> = left.clone();
    expected.reverse(); // the socket, then the lock file
    assert_eq!(cleaned, expected);
    assert!(!lock.exists() && !socket.exists());
    assert_eq!(instance::instance_files(&name).unwrap(), []);
    assert_eq!(instance::clean(&name).unwrap(), []);
}

#[test]
fn runtime_clean_neither_follows_a_link_nor_removes_a_file_it_does_not_own() {
    let runtime = RuntimeProcess::start("clean_link", "");
    let mut runtime = runtime;
    runtime.kill();
    let socket = chimaera_core::shm::ShmName::socket(runtime.instance()).path();
    let target =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ops-{}-victim", std::process::id()));
    std::fs::write(&target, "keep me").unwrap();
    std::fs::remove_file(&socket).unwrap();
    std::os::unix::fs::symlink(&target, &socket).unwrap();

    let output = run(&runtime, &["runtime", "clean"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        stderr(&output).contains("symbolic link"),
        "{}",
        text(&output)
    );
    assert!(
        socket.symlink_metadata().is_ok(),
        "the link stays to be inspected"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    std::fs::remove_file(&socket).unwrap();
    std::fs::remove_file(&target).unwrap();
}

#[test]
fn the_prometheus_endpoint_serves_the_counters() {
    let port = free_port();
    let runtime = RuntimeProcess::start(
        "prometheus",
        &format!("metrics:\n  prometheus: 127.0.0.1:{port}\n"),
    );
    let client = runtime.client();
    let _pool = pool_with_tasks(&client, "scraped", 7);

    let (status, body) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}\n{body}");
    for wanted in [
        "# TYPE chimaera_method_completed_total counter",
        "chimaera_method_completed_total{pool=\"scraped\",method=\"kCustom\"} 7\n",
        "chimaera_method_failed_total{pool=\"scraped\",method=\"kCustom\"} 0\n",
        "chimaera_method_latency_seconds_count{pool=\"scraped\",method=\"kCustom\"} 7\n",
        "chimaera_method_latency_seconds{pool=\"scraped\",method=\"kCustom\",quantile=\"0.99\"}",
        "chimaera_pool_queued{pool=\"scraped\"} 0\n",
        "chimaera_clients 1\n",
        "# TYPE chimaera_tasks_completed_total counter",
    ] {
        assert!(body.contains(wanted), "no {wanted:?} in:\n{body}");
    }
    let completed: u64 = body
        .lines()
        .find_map(|line| line.strip_prefix("chimaera_tasks_completed_total "))
        .expect("total")
        .parse()
        .unwrap();
    assert!(completed >= 7, "{body}");
    let gauge = |name: &str| -> u64 {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
            .parse()
            .unwrap()
    };
    let (live, max) = (
        gauge("chimaera_coroutines"),
        gauge("chimaera_coroutines_max"),
    );
    assert!(live >= 2 && live < max, "{body}");
    assert_eq!(max, runtime.config.coroutine_budget() as u64, "{body}");
    let (status, _) = http_get(port, "/other");
    assert!(status.contains("404"), "{status}");
}

#[test]
fn without_the_key_no_endpoint_is_served() {
    let port = free_port();
    let runtime = RuntimeProcess::start("no_prometheus", "");
    assert!(run(&runtime, &["runtime", "status"]).status.success());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// `tmux` on a server of this test's own (`-L`), so tests never share one.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str) -> Tmux {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.is_ok_and(|output| output.status.success()),
            "this test drives `chimaera monitor` in a real terminal and needs tmux: install \
             it (`apt-get install -y tmux`; .ci/run does so on CI)"
        );
        Tmux {
            socket: format!("chimaera-ops-{}-{tag}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn screen(&self) -> String {
        stdout(&self.run(&["capture-pane", "-p", "-t", "monitor"]))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn monitor_shows_the_runtime_under_load_in_a_real_terminal_and_quits_on_q() {
    let tmux = Tmux::new("monitor");
    let runtime = RuntimeProcess::start("monitor", "");
    let client = runtime.client();
    let pool = pool_with_tasks(&client, "busy_pool", 1);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pool.custom(PoolQuery::local(), "load", 0)
                    .expect("task runs");
                done += 1;
            }
            done
        })
    };

    // The monitor runs in the pane; its exit code is printed after it, and the pane
    // stays so the test can read it.
    let command = format!(
        "CHI_SERVER_CONF='{}' '{}' monitor; echo MONITOR-EXIT=$?; sleep 60",
        runtime.config_path.display(),
        env!("CARGO_BIN_EXE_chimaera")
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "50",
        "-s",
        "monitor",
        "sh",
        "-c",
        &command,
    ]);
    assert!(started.status.success(), "{}", text(&started));

    let mut screen = String::new();
    wait_until(
        "the monitor to show the pool, its method and latencies",
        || {
            screen = tmux.screen();
            [
                "monitor",
                "busy_pool",
                "kCustom",
                "tasks/s",
                "p50",
                "p99",
                "lanes",
                "queued",
                "shm:",
            ]
            .iter()
            .all(|word| screen.contains(word))
        },
    );
    // A refresh later it shows a rate for the method under load: a nonzero tasks/s.
    wait_until("a nonzero tasks/s for kCustom", || {
        screen = tmux.screen();
        screen.lines().any(|line| {
            line.contains("busy_pool") && line.contains("kCustom") && {
                let columns: Vec<&str> = line
                    .split(|c: char| c == '│' || c.is_whitespace())
                    .filter(|word| !word.is_empty())
                    .collect();
                columns
                    .iter()
                    .position(|word| *word == "kCustom")
                    .and_then(|i| columns.get(i + 1))
                    .and_then(|rate| rate.parse::<u64>().ok())
                    .is_some_and(|rate| rate > 0)
            }
        })
    });
    println!("the monitor's screen:\n{screen}");

    let sent = tmux.run(&["send-keys", "-t", "monitor", "q"]);
    assert!(sent.status.success(), "{}", text(&sent));
    wait_until("the monitor to quit on q", || {
        tmux.screen().contains("MONITOR-EXIT=0")
    });
    stop.store(true, Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
}
