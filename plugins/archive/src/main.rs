//! `archive`: pack a directory into a deterministic tar (optionally gzip).
//!
//! ```text
//! archive [--gzip] [--prefix DIR] [--executable PATH]... [--mtime SECONDS] DIR OUT
//! ```
//!
//! Entries are sorted by path; owners are 0:0 with no names; every mtime
//! is `--mtime` (default 0); directories are 0755 and files 0644, or 0755
//! for the paths given with `--executable` (WASI does not show file modes
//! to a plugin). Symlinks are kept as symlinks. The same directory always
//! gives the same bytes.

use kiln_plugin_sdk::{Args, Context, Error, Result, manifest, run, tree};

manifest! {
    name: "archive",
    description: "Pack a directory into a deterministic tar or tar.gz",
    options: [
        "--gzip: compress with gzip",
        "--prefix DIR: put every entry below DIR in the archive",
        "--executable PATH: give this file mode 0755 (repeatable)",
        "--mtime SECONDS: the mtime of every entry (default 0)",
    ],
}

fn main() {
    run(|| {
        let mut args = Args::from_env(&["--prefix", "--executable", "--mtime"], &["--gzip"])?;
        let gzip = args.flag("--gzip");
        let prefix = args.value("--prefix").unwrap_or_default();
        let executable = args.values("--executable");
        let mtime: u64 = match args.value("--mtime") {
            Some(m) => m
                .parse()
                .map_err(|_| Error::usage(format!("--mtime {m}: expected whole seconds")))?,
            None => 0,
        };
        let dir = args.positional("DIR")?;
        let out = args.positional("OUT")?;
        args.finish()?;
        let tar = pack(&dir, &prefix, &executable, mtime)?;
        let bytes = if gzip { gzip_bytes(&tar)? } else { tar };
        tree::write(&out, bytes)
    })
}

fn pack(dir: &str, prefix: &str, executable: &[String], mtime: u64) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in tree::walk(dir)? {
        let name = if prefix.is_empty() {
            e.rel.clone()
        } else {
            format!("{}/{}", prefix.trim_end_matches('/'), e.rel)
        };
        let mut h = tar::Header::new_ustar();
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        match e.kind {
            tree::Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{name}/"), std::io::empty())
                    .context(&name)?;
            }
            tree::Kind::Symlink => {
                let target = std::fs::read_link(&e.path).context(&name)?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, &name, target).context(&name)?;
            }
            tree::Kind::File => {
                let data = tree::read(&e.path)?;
                let exec = executable
                    .iter()
                    .any(|x| x.trim_start_matches("./") == e.rel);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if exec { 0o755 } else { 0o644 });
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &name, data.as_slice())
                    .context(&name)?;
            }
        }
    }
    b.into_inner()
        .map_err(|e| Error::new(format!("cannot finish the archive: {e}")))
}

fn gzip_bytes(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}
