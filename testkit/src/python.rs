//! A Python with the independent tools the tests check Gatehouse against
//! (`tests/tools/requirements.txt`): `GATEHOUSE_TEST_PYTHON` when set, else a
//! virtualenv made once under `target/test-tools`, shared by every test
//! process (a file lock keeps two from building it at once).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The workspace root, where `tests/tools` lives.
pub(crate) fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The test tools' scripts and requirements.
pub fn tools_dir() -> PathBuf {
    root().join("tests/tools")
}

/// The Python to run the test tools with, or why there is none.
pub(crate) fn python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON.get_or_init(provision).clone()
}

fn provision() -> Result<PathBuf, String> {
    if let Some(python) = std::env::var_os("GATEHOUSE_TEST_PYTHON").filter(|v| !v.is_empty()) {
        let python = PathBuf::from(python);
        return match has_tools(&python) {
            true => Ok(python),
            false => Err(format!(
                "GATEHOUSE_TEST_PYTHON={} cannot import the packages of tests/tools/requirements.txt",
                python.display()
            )),
        };
    }
    let requirements = tools_dir().join("requirements.txt");
    let venv = root().join("target/test-tools/venv");
    let python = venv.join("bin/python");
    std::fs::create_dir_all(root().join("target/test-tools"))
        .map_err(|e| format!("cannot make target/test-tools: {e}"))?;
    let lock = File::create(root().join("target/test-tools/lock"))
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("cannot lock target/test-tools: {e}"))?;
    // A venv is made afresh when the requirements changed since it was made.
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    if std::fs::read(&stamp).ok().as_deref() != Some(&wanted[..]) || !has_tools(&python) {
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements))?;
        std::fs::write(&stamp, &wanted)
            .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    }
    drop(lock);
    match has_tools(&python) {
        true => Ok(python),
        false => Err("the test tools' virtualenv cannot import its packages".to_owned()),
    }
}

/// Whether `python` imports every package the tools need.
fn has_tools(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import jwt, cryptography, aiosmtpd"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}
