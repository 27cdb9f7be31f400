//! Fuzzes `gatehouse::config::load` on a TOML file holding the input (UTF-8
//! only), with every `GATEHOUSE_*` variable removed from the environment.
//! Oracle: no panic; on `Err(problems)` the list is non-empty and no problem
//! spans more than one line.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// One file per process, cleared environment: done once, before the first input.
static PATH: LazyLock<PathBuf> = LazyLock::new(|| {
    let leaking: Vec<_> = std::env::vars_os()
        .map(|(key, _)| key)
        .filter(|key| key.to_string_lossy().starts_with("GATEHOUSE"))
        .collect();
    for key in leaking {
        // SAFETY: runs once, inside the LazyLock initialiser, before any other
        // code of this process reads or writes the environment.
        unsafe { std::env::remove_var(key) };
    }
    std::env::temp_dir().join(format!("gatehouse-fuzz-config-{}.toml", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = &*PATH;
    if let Err(e) = std::fs::write(path, text) {
        panic!("cannot write {}: {e}", path.display());
    }
    if let Err(problems) = gatehouse::config::load(path) {
        assert!(!problems.is_empty(), "load failed without saying why");
        for problem in &problems {
            assert!(!problem.contains('\n'), "multi-line problem: {problem:?}");
        }
    }
});
