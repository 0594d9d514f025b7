//! Link the `kiln` binary with packed relative relocations (DT_RELR) where
//! the toolchain can: the binary has about 85,000 relative relocations,
//! and as a plain table (2 MB) the dynamic loader reads them at every
//! start, which a no-op build pays for. Packed, they take a few KB.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    if linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the C compiler driver (the linker rustc uses) links a program
/// with `-z pack-relative-relocs` (binutils 2.38 and glibc 2.36 or later).
fn linker_packs_relocations() -> bool {
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return false;
    };
    let out = std::path::PathBuf::from(out);
    let src = out.join("relr-probe.c");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    Command::new(cc)
        .arg("-fPIE")
        .arg("-pie")
        .arg("-Wl,-z,pack-relative-relocs")
        .arg(&src)
        .arg("-o")
        .arg(out.join("relr-probe"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
