//! `-o`: what buildx users write after it, read into an export.

use crate::diag::Code;
use crate::diag::Diagnostic;
use crate::ir::ExportFormat;
use crate::pipeline::Output;
use std::path::PathBuf;

/// Parse `DIR`, or `KEY=VALUE,…` as buildx writes it: `type=local|tar`
/// with `dest=`; `type=oci` (an OCI archive, or a layout directory
/// with `tar=false`) and `type=docker` (a `docker load` archive), with
/// `dest=`, `name=` and `compression=`.
pub fn parse(s: &str) -> Result<Output, Diagnostic> {
    let bad = |what: String| {
        Diagnostic::new(Code::CLI_OUTPUT, what).with_help(
            "write `-o DIR`, `-o type=local,dest=DIR`, `-o type=tar,dest=FILE.tar`, `-o type=oci,dest=FILE.tar[,name=NAME:TAG]` (`tar=false` for a layout directory) or `-o type=docker,dest=FILE.tar,name=NAME:TAG`",
        )
    };
    if s.is_empty() {
        return Err(
            Diagnostic::new(Code::EXPORT_EMPTY, "`-o` was given an empty destination")
                .with_help("name a directory, e.g. `-o dist`"),
        );
    }
    if s == "-" {
        // As `docker build -o -`: a tar on standard output.
        return Ok(Output {
            target: None,
            format: ExportFormat::Tar,
            dest: PathBuf::from("-"),
            tag: None,
            compression: Default::default(),
        });
    }
    if !s.contains('=') {
        return Ok(Output {
            target: None,
            format: ExportFormat::Dir,
            dest: PathBuf::from(s),
            tag: None,
            compression: Default::default(),
        });
    }
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for part in s.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("cannot read `-o {s}`: `{part}` is not KEY=VALUE")))?;
        if fields.iter().any(|(k, _)| *k == key) {
            return Err(bad(format!("`-o {s}` gives `{key}=` twice")));
        }
        if !["type", "dest", "name", "tar", "compression", "push"].contains(&key) {
            return Err(bad(format!(
                "cannot read `-o {s}`: `{part}` is not understood"
            )));
        }
        fields.push((key, value));
    }
    let get = |k: &str| fields.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    // A push: `type=registry,name=REF` or `type=image,name=REF,push=true`.
    let push = match (get("type"), get("push")) {
        (Some("registry"), None | Some("true")) => true,
        (Some("image"), Some("true")) => true,
        (Some("image"), _) => {
            return Err(bad(format!(
                "`-o {s}`: kiln pushes images (`push=true`) and writes them to files (`type=oci`, `type=docker`); it keeps no image store of its own"
            )));
        }
        (_, Some(_)) => {
            return Err(bad(format!("`-o {s}`: `push=` applies to `type=image`")));
        }
        _ => false,
    };
    if push {
        let name = get("name").ok_or_else(|| {
            bad(format!(
                "`-o {s}` pushes, but names no image: add `name=REGISTRY/NAME:TAG`"
            ))
        })?;
        if !crate::ir::valid_tag(name) {
            return Err(bad(format!("`-o {s}`: `{name}` is not an image name")));
        }
        if get("dest").is_some() || get("tar").is_some() {
            return Err(bad(format!("`-o {s}`: a push has no `dest=` or `tar=`")));
        }
        let compression = match get("compression") {
            None => Default::default(),
            Some(c) => crate::ir::Compression::parse(c).ok_or_else(|| {
                bad(format!(
                    "`-o {s}`: compression `{c}` is not `gzip`, `zstd` or `none`"
                ))
            })?,
        };
        return Ok(Output {
            target: None,
            format: ExportFormat::Push,
            dest: PathBuf::new(),
            tag: Some(name.to_string()),
            compression,
        });
    }
    let format = match (get("type"), get("tar")) {
        (None | Some("local"), None) => ExportFormat::Dir,
        (Some("tar"), None) => ExportFormat::Tar,
        (Some("oci"), None | Some("true")) => ExportFormat::OciArchive,
        (Some("oci"), Some("false")) => ExportFormat::Oci,
        (Some("docker"), None | Some("true")) => ExportFormat::DockerArchive,
        (Some(t), None) => {
            return Err(bad(format!(
                "cannot read `-o {s}`: `type={t}` is not understood"
            )));
        }
        (_, Some(t)) => {
            return Err(bad(format!(
                "cannot read `-o {s}`: `tar={t}` applies to `type=oci` (true or false)"
            )));
        }
    };
    let dest = match get("dest") {
        Some("") => {
            return Err(Diagnostic::new(
                Code::EXPORT_EMPTY,
                format!("`-o {s}` has an empty `dest=`"),
            )
            .with_help("name a directory or file, e.g. `dest=dist`"));
        }
        Some(d) => PathBuf::from(d),
        None => {
            return Err(
                Diagnostic::new(Code::CLI_OUTPUT, format!("`-o {s}` has no `dest=`"))
                    .with_help("write `-o type=tar,dest=out.tar`"),
            );
        }
    };
    if !format.is_image() && (get("name").is_some() || get("compression").is_some()) {
        return Err(bad(format!(
            "`-o {s}`: `name=` and `compression=` apply to images (`type=oci`, `type=docker`)"
        )));
    }
    let tag = match get("name") {
        Some(n) if !crate::ir::valid_tag(n) => {
            return Err(bad(format!("`-o {s}`: `{n}` is not an image name")));
        }
        n => n.map(str::to_string),
    };
    let compression = match get("compression") {
        None => Default::default(),
        Some(c) => crate::ir::Compression::parse(c).ok_or_else(|| {
            bad(format!(
                "`-o {s}`: compression `{c}` is not `gzip`, `zstd` or `none`"
            ))
        })?,
    };
    Ok(Output {
        target: None,
        format,
        dest,
        tag,
        compression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_specs() {
        let ok = |s: &str| parse(s).unwrap();
        assert_eq!(
            ok("out"),
            Output {
                target: None,
                format: ExportFormat::Dir,
                dest: PathBuf::from("out"),
                tag: None,
                compression: Default::default(),
            }
        );
        assert_eq!(ok("type=tar,dest=a.tar").format, ExportFormat::Tar);
        assert_eq!(ok("type=local,dest=d").dest, PathBuf::from("d"));
        assert_eq!(ok("type=oci,dest=x").format, ExportFormat::OciArchive);
        assert_eq!(ok("type=oci,dest=x,tar=false").format, ExportFormat::Oci);
        let d = ok("type=docker,dest=x.tar,name=app:1,compression=zstd");
        assert_eq!(d.format, ExportFormat::DockerArchive);
        assert_eq!(d.tag.as_deref(), Some("app:1"));
        assert_eq!(d.compression, crate::ir::Compression::Zstd);
        assert!(parse("type=tar,dest=x,name=app").is_err());
        assert!(parse("type=oci,dest=x,name=App").is_err());
        assert!(parse("type=image,dest=x").is_err());
        let push = ok("type=image,name=localhost:5000/a:1,push=true");
        assert_eq!(push.format, ExportFormat::Push);
        assert_eq!(push.tag.as_deref(), Some("localhost:5000/a:1"));
        assert_eq!(
            ok("type=registry,name=localhost:5000/a:1").format,
            ExportFormat::Push
        );
        assert!(parse("type=registry").is_err());
        assert!(parse("type=registry,name=r/a:1,dest=x").is_err());
        assert!(parse("type=tar").is_err());
        assert_eq!(parse("").unwrap_err().code, Code::EXPORT_EMPTY);
        assert_eq!(
            parse("type=tar,dest=").unwrap_err().code,
            Code::EXPORT_EMPTY
        );
        let twice = parse("type=tar,dest=x,dest=y").unwrap_err();
        assert!(twice.message.contains("twice"), "{}", twice.message);
        assert!(parse("type=tar,type=local,dest=x").is_err());
    }
}
