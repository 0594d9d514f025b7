//! The base images the image and `run` tests build on, made once by
//! `scripts/test-images` outside the clone, and the checks for what those
//! tests need (root, bubblewrap). Without them a test says so and passes,
//! except under `CI=true`, where it fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Whether `run` steps can work here: root and bubblewrap.
pub fn sandbox_ready() -> bool {
    let root = rustix::process::geteuid().is_root();
    let bwrap = Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let why = match (root, bwrap) {
        (true, true) => return true,
        (false, _) => "not running as root",
        (true, false) => "bubblewrap is not installed",
    };
    skip(why)
}

/// Whether a tool is installed (else skipped, or failed under CI).
pub fn tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found || skip(&format!("`{name}` is not installed"))
}

/// Whether a program is on the path (else skipped, or failed under CI),
/// for tools without a `--version`.
pub fn tool_in_path(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()));
    found || skip(&format!("`{name}` is not installed"))
}

fn skip(why: &str) -> bool {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test cannot run under CI: {why} (scripts/test installs what it needs)"
    );
    eprintln!("skipping: {why} (scripts/test installs what it needs)");
    false
}

fn make(only: Option<&str>) -> Option<PathBuf> {
    if !rustix::process::geteuid().is_root() {
        skip("making test images needs root");
        return None;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/test-images");
    let mut c = Command::new(script);
    if let Some(o) = only {
        c.args(["--only", o]);
    }
    let out = c.output().expect("run scripts/test-images");
    assert!(
        out.status.success(),
        "scripts/test-images failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// The directory of the test images with at least busybox made.
fn busybox_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| make(Some("busybox"))).clone()
}

/// `oci:DIR/busybox:1`: busybox-static with its applets, `/etc/passwd`
/// (root; `app` 1000:1000, also in group `staff` 50) and `/tmp`.
pub fn busybox() -> Option<String> {
    busybox_dir().map(|d| format!("oci:{}/busybox:1", d.display()))
}

/// The busybox layout's directory.
pub fn busybox_layout() -> Option<PathBuf> {
    busybox_dir().map(|d| d.join("busybox"))
}

/// The directory of the test images with all of them made (Debian too).
pub fn all_images() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| make(None)).clone()
}

/// Every process whose command line is exactly `argv` (to prove none
/// was left behind).
pub fn processes(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}
