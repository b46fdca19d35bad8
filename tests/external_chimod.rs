//! A chimod in a user's own repository (examples/external_chimod, namespace
//! `myproject`) builds against `chimaera` by path and runs: the macros work outside
//! our tree, against the user's manifests, and the repository's runtime binary gets the
//! `chimaera` command line with its module linked. Its only dependency is `chimaera`
//! (no `rkyv`, `serde` or YAML crate): `#[chimaera::wire(compose)]` and
//! `#[chimod(composable)]` make its pools composable from YAML.
use std::path::Path;
use std::process::Command;

fn cargo_run(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path"])
        .arg(root.join("examples/external_chimod/Cargo.toml"))
        .args(args)
        .env("CARGO_TARGET_DIR", root.join("target/external_chimod"))
        .output()
        .expect("cargo runs");
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
