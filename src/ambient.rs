//! The one place that opens directories with ambient authority.
//!
//! Contexts are opened here as capabilities; everything that reads a
//! context afterwards goes through the returned [`cap_std::fs::Dir`], which
//! refuses paths and symlinks that lead outside it.

#[allow(clippy::disallowed_methods)]
pub fn open_dir(path: &std::path::Path) -> std::io::Result<cap_std::fs::Dir> {
    cap_std::fs::Dir::open_ambient_dir(path, cap_std::ambient_authority())
}
