//! Finding the `rampart` binary, and building it when running under cargo.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The `rampart` binary to run: `explicit` if given, else `$RAMPART_BIN`, else the one cargo
/// builds in this build's profile (`target/<profile>/rampart`, beside this executable, or one
/// directory up for a test binary in `deps/`).
///
/// That last one is built first, a no-op when it is fresh, when running under cargo (`cargo
/// run`, `cargo test`, nextest: `$CARGO` is set) or from a test binary (plain `cargo`): another
/// package's binary is not built for this one's tests or `cargo run`, and building it here keeps
/// a stale server from being tested. A binary installed outside a target directory builds
/// nothing.
pub fn rampart_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit.or_else(|| std::env::var_os("RAMPART_BIN").map(PathBuf::from)) {
        if !path.exists() {
            bail!("rampart binary {} does not exist", path.display());
        }
        return Ok(path);
    }
    // Binaries live in target/<profile>/, test binaries in target/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let mut profile_dir = exe.parent().context("executable has no directory")?;
    let is_test_binary = profile_dir.file_name().is_some_and(|n| n == "deps");
    if is_test_binary {
        profile_dir = profile_dir.parent().context("deps/ has no parent")?;
    }
    let binary = profile_dir.join("rampart");
    let cargo = std::env::var_os("CARGO").or_else(|| is_test_binary.then(|| "cargo".into()));
    if let Some(cargo) = cargo {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "rampart", "--bin", "rampart"]);
        build.arg("--manifest-path").arg(&manifest);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().context("running cargo build for rampart")?;
        if !status.success() {
            bail!("cargo build -p rampart failed");
        }
    }
    if !binary.exists() {
        bail!(
            "no rampart binary at {}; build it (cargo build -p rampart) or set RAMPART_BIN",
            binary.display()
        );
    }
    Ok(binary)
}
