//! A short round of the reliability suite (`tests/reliability/attack.py`):
//! kills, damaged state files, concurrent builds, two projects sharing a
//! state directory and hostile input, with the same bars as the full run
//! whose figures are in `tests/reliability/RESULTS.md`.

use crate::harness::kiln_bin;
use std::process::Command;

#[test]
fn a_short_round_of_attacks_meets_every_bar() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reliability/attack.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("--kiln")
        .arg(kiln_bin())
        .arg("--quick")
        .output()
        .expect("python3 runs the reliability suite");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all bars met"), "{text}");
}
