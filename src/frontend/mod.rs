//! Front ends: text in, spec AST out.
//!
//! `kdl` reads kiln's own language. Every node keeps its [`Span`], so later
//! phases can point at the source. Front ends read spec files from disk (and
//! follow `include`s) but never look at contexts, the cache or the network.

pub mod ast;
pub mod dockerfile;
pub mod kdl;

/// A store for lowered spec files, keyed by a digest of everything that
/// went into them (path, source id, text, kiln version). Lets a no-op build
/// skip KDL parsing. The front end only asks and offers; where the bytes
/// live is the caller's business.
pub trait ParseCache {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn put(&self, key: &str, bytes: &[u8]);
}

/// The largest spec file (KDL or Dockerfile) kiln reads.
pub const MAX_SPEC_FILE: u64 = 16 << 20;

/// Read a spec file: a regular file (never a FIFO, device or directory;
/// opened without blocking) of at most [`MAX_SPEC_FILE`] bytes of UTF-8.
/// Nothing else is ever read as a spec, so no other file's content can
/// appear in a diagnostic's excerpt.
pub fn read_spec_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(Error::new(ErrorKind::IsADirectory, "it is a directory"));
    }
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "it is not a regular file (a device, FIFO or socket)",
        ));
    }
    let too_big = || {
        Error::new(
            ErrorKind::FileTooLarge,
            format!(
                "it is larger than {}",
                crate::units::format_size(MAX_SPEC_FILE)
            ),
        )
    };
    if meta.len() > MAX_SPEC_FILE {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SPEC_FILE {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::InvalidData, "it is not UTF-8 text"))
}

/// The project a spec in `dir` (canonical) belongs to, unless one is
/// named (`--project-root`): the nearest directory at or above `dir` that
/// is a version-control checkout (holds `.git`, `.hg` or `.jj`), else
/// `dir` itself. Includes must stay inside it.
pub fn project_root(dir: &std::path::Path) -> std::path::PathBuf {
    let mut at = Some(dir);
    while let Some(d) = at {
        if [".git", ".hg", ".jj"]
            .iter()
            .any(|m| std::fs::symlink_metadata(d.join(m)).is_ok())
        {
            return d.to_path_buf();
        }
        at = d.parent();
    }
    dir.to_path_buf()
}
