//! The OpenAI client libraries the OpenAI-compatible API's tests drive, as `scripts/test.sh`
//! installs them: the official `openai` Python SDK in a virtualenv and the `openai` npm package
//! in a directory of its own (both pinned there). A missing one fails the test with how to get
//! it; nothing is downloaded at test time.

use std::path::PathBuf;
use std::process::Command;

/// Where the virtualenv is: `scripts/test.sh` exports this variable.
pub const OPENAI_VENV_ENV: &str = "OPENAI_SDK_TEST_VENV";
/// Where the npm package is installed (the directory holding `node_modules/openai`).
pub const OPENAI_NODE_ENV: &str = "OPENAI_SDK_TEST_NODE";

/// `$HOME/.cache/learning-chat/<name>`, the default place of both.
fn default_dir(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/learning-chat").join(name)
}

fn dir_from(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| default_dir(default), PathBuf::from)
}

/// The Python interpreter of the virtualenv holding the `openai` SDK
/// (`$OPENAI_SDK_TEST_VENV`, else `~/.cache/learning-chat/venv-openai`).
pub fn openai_python() -> PathBuf {
    let venv = dir_from(OPENAI_VENV_ENV, "venv-openai");
    let python = venv.join("bin/python");
    let works = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "the openai Python SDK is required in {}: run ./scripts/test.sh, which makes that \
         virtualenv (or set {OPENAI_VENV_ENV})",
        venv.display()
    );
    python
}

/// The directory holding `node_modules/openai` (`$OPENAI_SDK_TEST_NODE`, else
/// `~/.cache/learning-chat/node-openai`); checks that `node` runs.
pub fn openai_node_dir() -> PathBuf {
    let dir = dir_from(OPENAI_NODE_ENV, "node-openai");
    assert!(
        dir.join("node_modules/openai/package.json").exists(),
        "the openai npm package is required in {}: run ./scripts/test.sh, which installs it \
         (or set {OPENAI_NODE_ENV})",
        dir.display()
    );
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node,
        "node is required: run ./scripts/test.sh, which installs it"
    );
    dir
}
