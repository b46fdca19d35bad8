//! A chimod in a user's own repository (examples/external_chimod, namespace
//! `myproject`) builds against `chimaera` by path and runs: the macros work outside
//! our tree, against the user's manifests, and the repository's runtime binary gets the
//! `chimaera` command line with its module linked. Its only dependency is `chimaera`
//! (no `rkyv`, `serde` or YAML crate): `#[chimaera::wire(compose)]` and
//! `#[chimod(composable)]` make its pools composable from YAML.
use std::path::Path;
use std::process::{Command, Output};

/// `cargo run ARGS` in the external repository, to the end.
fn cargo_output(args: &[&str], env: &[(&str, &str)]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path"])
        .arg(root.join("examples/external_chimod/Cargo.toml"))
        .args(args)
        .env("CARGO_TARGET_DIR", root.join("target/external_chimod"))
        .env_remove("CHI_SERVER_CONF")
        .env_remove("CHI_INSTANCE")
        .envs(env.iter().copied())
        .output()
        .expect("cargo runs")
}

fn cargo_run(args: &[&str]) -> String {
    let output = cargo_output(args, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn external_repository_builds_and_runs_its_chimod() {
    let demo = cargo_run(&["--bin", "demo"]);
    assert!(demo.contains("kvstore: ok"), "unexpected output:\n{demo}");
    assert!(demo.contains("composed from YAML"), "{demo}");
    let modules = cargo_run(&["--bin", "myproject-kvstore", "--", "modules"]);
    assert!(
        modules.contains("kvstore") && modules.contains("kPut"),
        "{modules}"
    );
    assert!(modules.contains("composable"), "{modules}");
}

/// The repository's runtime binary is its own program: `--version`, `--help` and every
/// hint name it, not `chimaera`, and it adds a command of its own that finds the
/// configuration like the built-in ones (flag over variable).
#[test]
fn a_runtime_binary_names_itself_and_adds_its_own_commands() {
    let bin = ["--bin", "myproject-kvstore", "--"];
    let run = |args: &[&str], env: &[(&str, &str)]| cargo_output(&[&bin[..], args].concat(), env);
    let version = run(&["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        "myproject-kvstore 0.1.0"
    );
    let help = String::from_utf8_lossy(&run(&["--help"], &[]).stdout).into_owned();
    assert!(help.contains("Usage: myproject-kvstore"), "{help}");
    assert!(help.contains("where") && help.contains("runtime"), "{help}");

    let instance = format!("ext-{}-none", std::process::id());
    let status = run(&["runtime", "stop"], &[("CHI_INSTANCE", instance.as_str())]);
    let stderr = String::from_utf8_lossy(&status.stderr).into_owned();
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("start one with `myproject-kvstore runtime start`")
            && stderr.starts_with("myproject-kvstore: "),
        "{stderr}"
    );

    let own = run(&["where"], &[("CHI_INSTANCE", "from-env")]);
    assert_eq!(
        String::from_utf8_lossy(&own.stdout).trim(),
        "myproject-kvstore talks to instance from-env"
    );
    let own = run(
        &["--instance", "from-flag", "where", "--shout"],
        &[("CHI_INSTANCE", "from-env")],
    );
    assert_eq!(
        String::from_utf8_lossy(&own.stdout).trim(),
        "MYPROJECT-KVSTORE TALKS TO INSTANCE FROM-FLAG"
    );
    let bad = run(&["where", "--instance", "a/b"], &[]);
    let stderr = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--instance"), "{stderr}");
}
