//! A chimod in a user's own repository (examples/external_chimod, namespace
//! `myproject`) builds against `chimaera` by path and runs: the macros work outside
//! our tree, against the user's manifests.
use std::path::Path;
use std::process::Command;

#[test]
fn external_repository_builds_and_runs_its_chimod() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = root.join("examples/external_chimod/Cargo.toml");
    let target = root.join("target/external_chimod");
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "external chimod failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("kvstore: ok"),
        "unexpected output:\n{stdout}"
    );
}
