//! What a runtime process logs, read from the stderr of a real `chimaera runtime start`:
//! at start (INFO) where its config came from, its instance, workers, linked modules and
//! shared-memory sizes; at DEBUG, a client attaching and leaving and a pool created and
//! destroyed. Log lines are for people, so the checks look for the facts, not a format.
mod support;

use chimaera::mod_name::{CreateParams, ModNameClient};
use chimaera::prelude::*;
use std::fs::File;
use std::process::{Child, Command, Stdio};
use support::{wait_for_line, wait_until, write_config};

/// Kills the runtime if the test ends before stopping it.
struct Runtime(Child);

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_runtime_logs_its_setup_at_start_and_clients_and_pools_at_debug() {
    let (config, config_path) = write_config("logs", "workers:\n  low_latency: 2\n");
    let log_path = config_path.with_extension("stderr");
    let mut runtime = Runtime(
        Command::new(env!("CARGO_BIN_EXE_chimaera"))
            .args(["runtime", "start"])
            .env("CHI_SERVER_CONF", &config_path)
            .env_remove("CHI_INSTANCE")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(File::create(&log_path).expect("log file"))
            .spawn()
            .expect("chimaera runtime start spawns"),
    );
    wait_for_line(&mut runtime.0, "serving (pid");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let started = log();
    let instance = config.instance.as_str();
    let start_line = started
        .lines()
        .find(|line| line.contains("runtime started"))
        .unwrap_or_else(|| panic!("no start-up line in:\n{started}"));
    for fact in [
        format!("config=file {}", config_path.display()),
        format!("instance={instance}"),
        "workers_low_latency=2".to_owned(),
        "modules=MOD_NAME, admin, bdev".to_owned(),
    ] {
        assert!(start_line.contains(&fact), "{fact:?} missing: {start_line}");
    }
    let shm_line = started
        .lines()
        .find(|line| line.contains("shared memory sized"))
        .unwrap_or_else(|| panic!("no shared-memory line in:\n{started}"));
    for fact in ["max_clients=", "client_data_bytes_each=", "main_bytes="] {
        assert!(shm_line.contains(fact), "{fact:?} missing: {shm_line}");
    }

    let chi = Client::connect_to(&config).expect("client attaches");
    wait_until("the attach is logged", || log().contains("client attached"));
    let pool = ModNameClient::create(&chi, PoolQuery::local(), "logged", CreateParams::default())
        .expect("pool created");
    let id = pool.pool_id();
    let admin = AdminClient::attach(&chi, PoolId::ADMIN);
    admin
        .destroy_pool(PoolQuery::local(), id)
        .expect("pool destroyed");
    drop(pool);
    drop(admin);
    drop(chi);
    wait_until("the detach is logged", || log().contains("client detached"));

    let stop = Command::new(env!("CARGO_BIN_EXE_chimaera"))
        .args(["runtime", "stop"])
        .env("CHI_SERVER_CONF", &config_path)
        .env_remove("CHI_INSTANCE")
        .output()
        .expect("chimaera runtime stop runs");
    assert!(stop.status.success(), "{stop:?}");
    assert!(runtime.0.wait().expect("runtime exits").success());

    let log = log();
    let line_with = |words: &[&str]| {
        log.lines()
            .find(|line| words.iter().all(|word| line.contains(word)))
            .unwrap_or_else(|| panic!("no line with {words:?} in:\n{log}"))
    };
    line_with(&["DEBUG", "pool created", "pool=logged", "module=MOD_NAME"]);
    line_with(&[
        "DEBUG",
        "pool destroyed",
        "pool=logged",
        &format!("id={id}"),
    ]);
    line_with(&["DEBUG", "client attached"]);
    line_with(&["DEBUG", "client detached"]);
    let _ = std::fs::remove_file(&log_path);
    let _ = std::fs::remove_file(&config_path);
}
