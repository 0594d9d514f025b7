//! The Dockerfile importer: `tests/golden/import/NAME.Dockerfile` is
//! imported with the real binary; stdout must equal `NAME.kdl` and the exit
//! code plus stderr (notes and errors) `NAME.stderr`. `KILN_BLESS=1`
//! rewrites the expectations.
//!
//! Every import that succeeds must also compile to the same graph as the
//! Dockerfile itself: same stages, same steps, same canonical forms, so the
//! same cache keys.

use crate::harness::{Project, kiln_bin};
use kiln::diag::Sources;
use kiln::ir::{CompileOptions, compile};
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/import")
}

fn cases() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".Dockerfile"))
        .collect();
    files.sort();
    files
}

fn stem(p: &Path) -> String {
    p.file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".Dockerfile")
        .to_string()
}

#[test]
fn imports_match_their_goldens() {
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut failures = Vec::new();
    let cases = cases();
    for path in &cases {
        let name = path.file_name().unwrap().to_str().unwrap();
        let out = std::process::Command::new(kiln_bin())
            .args(["import", name])
            .current_dir(golden_dir())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = format!(
            "exit code {}\n{}",
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr)
        );
        let kdl_path = golden_dir().join(format!("{}.kdl", stem(path)));
        let err_path = golden_dir().join(format!("{}.stderr", stem(path)));
        if bless {
            if stdout.is_empty() {
                let _ = std::fs::remove_file(&kdl_path);
            } else {
                std::fs::write(&kdl_path, &stdout).unwrap();
            }
            std::fs::write(&err_path, &stderr).unwrap();
            continue;
        }
        let want_kdl = std::fs::read_to_string(&kdl_path).unwrap_or_default();
        let want_err = std::fs::read_to_string(&err_path).unwrap_or_default();
        if want_kdl != stdout {
            failures.push(format!(
                "{name} stdout:\n--- expected\n{want_kdl}--- got\n{stdout}"
            ));
        }
        if want_err != stderr {
            failures.push(format!(
                "{name} stderr:\n--- expected\n{want_err}--- got\n{stderr}"
            ));
        }
    }
    assert!(cases.len() >= 10, "only {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "import goldens differ (KILN_BLESS=1 to update):\n{}",
        failures.join("\n")
    );
}

/// The compiled graph of a spec file, KDL or Dockerfile.
fn graph_dump(spec: &Path, dir: &Path) -> String {
    let sources = Sources::new();
    let options = CompileOptions {
        args: Vec::new(),
        context_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let spec = if kiln::frontend::dockerfile::lower::is_dockerfile(spec) {
        kiln::frontend::dockerfile::lower::load(spec, "Dockerfile", &sources, &[])
            .unwrap_or_else(|e| panic!("{}: {e:?}", spec.display()))
            .spec
    } else {
        kiln::frontend::kdl::load(spec, "kiln.kdl", &sources, None)
            .unwrap_or_else(|e| panic!("{}: {:?}", spec.display(), e.diagnostics))
    };
    let (graph, _) = compile(&spec, &options, &sources).unwrap_or_else(|e| panic!("{e:?}"));
    graph.dump(dir)
}

#[test]
fn imported_specs_compile_like_their_dockerfiles() {
    let mut compared = 0;
    for path in cases() {
        let kdl = golden_dir().join(format!("{}.kdl", stem(&path)));
        if !kdl.exists() {
            continue;
        }
        compared += 1;
        let direct = graph_dump(&path, &golden_dir());
        let imported = graph_dump(&kdl, &golden_dir());
        // The import adds an export of the default target, as a Docker
        // build makes one: a directory for a scratch stage, an image else.
        let (exports, rest): (Vec<&str>, Vec<&str>) =
            imported.lines().partition(|l| l.starts_with("export "));
        assert_eq!(exports.len(), 1, "{}: {imported}", path.display());
        assert!(
            exports[0].contains(" to out as Dir ") || exports[0].contains(".oci as Oci "),
            "{}",
            exports[0]
        );
        assert_eq!(
            direct,
            format!("{}\n", rest.join("\n")),
            "{}",
            path.display()
        );
    }
    assert!(compared >= 8, "only {compared} imports compared");
}

const MULTISTAGE: &str = r#"ARG NAME=demo
FROM scratch AS sources
ARG NAME
WORKDIR /src
COPY app/ ./
COPY <<EOF /src/generated.txt
generated for ${NAME:-nobody}
EOF

FROM sources AS build
ARG NAME
WORKDIR out
COPY --chmod=0755 app/run.sh ./bin/
ENV NAME=$NAME

FROM scratch
COPY --from=build /src/ /opt/app/
COPY --from=0 /src/app.txt /README
LABEL name=demo
"#;

fn multistage_project() -> Project {
    let p = Project::new();
    p.file("Dockerfile", MULTISTAGE)
        .file("app/app.txt", "the app\n")
        .file("app/run.sh", "#!/bin/sh\necho run\n")
        .file("app/sub/deep.txt", "deep\n");
    p
}

#[test]
fn a_directory_with_a_dockerfile_builds_it() {
    let p = multistage_project();
    p.kiln(&["build", "-o", "out", "--progress", "plain"]).ok();
    assert_eq!(p.read("out/opt/app/app.txt"), "the app\n");
    assert_eq!(p.read("out/opt/app/generated.txt"), "generated for demo\n");
    assert_eq!(p.read("out/README"), "the app\n");
    let mode = std::fs::metadata(p.path().join("out/opt/app/out/bin/run.sh"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o755
    );
    // `--build-arg` reaches the Dockerfile's ARGs.
    p.kiln(&["build", "--build-arg", "NAME=other", "-o", "out2"])
        .ok();
    assert_eq!(
        p.read("out2/opt/app/generated.txt"),
        "generated for other\n"
    );
}

#[test]
fn building_the_import_reuses_the_dockerfile_cache_and_gives_the_same_bytes() {
    let p = multistage_project();
    p.build(&["-f", "Dockerfile", "-o", "type=tar,dest=direct.tar"])
        .ok();
    p.kiln(&["import", "-o", "kiln.kdl"]).ok();
    let second = p.build(&["-f", "kiln.kdl", "-o", "type=tar,dest=imported.tar"]);
    second.ok();
    // Every step's key is the same, so nothing runs again.
    assert!(second.ran().is_empty(), "ran: {:?}", second.ran());
    assert!(second.cached() > 0);
    let a = std::fs::read(p.path().join("direct.tar")).unwrap();
    let b = std::fs::read(p.path().join("imported.tar")).unwrap();
    assert!(a == b, "the two exports differ");
}

#[test]
fn import_refuses_to_overwrite_without_force() {
    let p = multistage_project();
    p.file("kiln.kdl", "kiln 1\n");
    let r = p.kiln(&["import", "-o", "kiln.kdl"]);
    r.code(2);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(p.read("kiln.kdl"), "kiln 1\n");
    p.kiln(&["import", "-o", "kiln.kdl", "--force"]).ok();
    assert!(p.read("kiln.kdl").contains("stage sources"));
}

#[test]
fn run_and_image_bases_fail_located_only_when_needed() {
    let p = Project::new();
    p.file(
        "Dockerfile",
        "FROM localhost:1/tools:3.20 AS tools\nRUN apk add make\n\nFROM scratch AS ok\nCOPY a.txt /\n\nFROM scratch AS needs-run\nRUN echo hi\n",
    )
    .file("a.txt", "a\n");
    // The stages that do not need the image or a shell build.
    p.kiln(&["build", "--target", "ok", "-o", "out"]).ok();
    assert_eq!(p.read("out/a.txt"), "a\n");
    // A RUN in a stage from scratch has no shell to run: said before any
    // sandbox work, at the RUN.
    let r = p.kiln(&["build", "--target", "needs-run"]);
    r.code(2);
    assert!(r.stderr.contains("Dockerfile:8:1"), "{}", r.stderr);
    assert!(r.stderr.contains("no shell `/bin/sh`"), "{}", r.stderr);
    assert!(r.stderr.contains("no programs at all"), "{}", r.stderr);
    // An image that cannot be reached fails at its FROM, naming it.
    let r = p.kiln(&["build", "--target", "tools"]);
    r.code(3);
    assert!(r.stderr.contains("Dockerfile:1:1"), "{}", r.stderr);
    assert!(r.stderr.contains("localhost:1/tools:3.20"), "{}", r.stderr);
    assert!(!p.path().join("kiln.lock").exists());
}

#[test]
fn add_extracts_local_archives_and_copies_other_files() {
    let p = Project::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(3);
    h.set_mode(0o600);
    b.append_data(&mut h, "pkg/lib.txt", &b"lib"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    std::fs::write(p.path().join("vendor.tgz"), gz.finish().unwrap()).unwrap();
    p.file("plain.txt", "plain\n").file(
        "Dockerfile",
        "FROM scratch\nADD vendor.tgz /opt/\nADD plain.txt /docs/\nCOPY vendor.tgz /raw/\n",
    );
    p.kiln(&["build", "-o", "out"]).ok();
    assert_eq!(p.read("out/opt/pkg/lib.txt"), "lib");
    assert_eq!(p.read("out/docs/plain.txt"), "plain\n");
    assert!(p.exists("out/raw/vendor.tgz"));
    let mode = std::fs::metadata(p.path().join("out/opt/pkg/lib.txt"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

#[test]
fn unused_build_args_are_reported() {
    let p = multistage_project();
    let r = p.kiln(&["build", "--build-arg", "NAEM=x", "-o", "out"]);
    r.ok();
    assert!(r.stderr.contains("`NAEM` is not declared"), "{}", r.stderr);
}

#[test]
fn a_dockerfile_s_own_ignore_file_wins_over_the_context_s() {
    let p = Project::new();
    p.file("docker/app.Dockerfile", "FROM scratch\nCOPY . /ctx/\n")
        .file("docker/app.Dockerfile.dockerignore", "secret.txt\n")
        .file(".dockerignore", "public.txt\n")
        .file("secret.txt", "s\n")
        .file("public.txt", "p\n");
    // The context given, as `docker build -f docker/app.Dockerfile .`.
    p.kiln(&["build", "-f", "docker/app.Dockerfile", "-o", "out", "."])
        .ok();
    assert!(!p.exists("out/ctx/secret.txt"));
    assert!(p.exists("out/ctx/public.txt"));
    let r = p.kiln(&["import", "docker/app.Dockerfile"]);
    r.ok();
    assert!(
        r.stderr.contains("applies to builds of the Dockerfile"),
        "{}",
        r.stderr
    );
}

#[test]
fn copy_parents_keeps_paths_from_a_pivot() {
    let p = Project::new();
    p.file(
        "Dockerfile",
        "FROM scratch\nCOPY --parents ./app/./lib/*.txt ./app/./docs /out/\nCOPY --parents app/lib/one.txt /full/\n",
    )
    .file("app/lib/one.txt", "1\n")
    .file("app/lib/two.txt", "2\n")
    .file("app/docs/readme", "r\n");
    p.kiln(&["build", "-o", "out-dir"]).ok();
    assert_eq!(p.read("out-dir/out/lib/one.txt"), "1\n");
    assert_eq!(p.read("out-dir/out/lib/two.txt"), "2\n");
    assert_eq!(p.read("out-dir/out/docs/readme"), "r\n");
    assert!(!p.exists("out-dir/out/app"));
    assert_eq!(p.read("out-dir/full/app/lib/one.txt"), "1\n");
    // The import carries the pivot over, and builds the same.
    let r = p.kiln(&["import"]);
    r.ok();
    assert!(r.stdout.contains("\"./app/./lib/*.txt\""), "{}", r.stdout);
}

#[test]
fn an_import_keeps_args_as_args_and_exports_the_default_target() {
    let p = Project::new();
    p.file("app.txt", "the app\n");
    p.file(
        "Dockerfile",
        "ARG WHO=world\nARG HOME_DIR=/app\nARG VERSION=1.2.3\nFROM scratch AS base\nARG WHO\nARG HOME_DIR\nWORKDIR ${HOME_DIR}\nCOPY app.txt ${HOME_DIR}/\nCOPY <<EOF /greeting\nhello ${WHO:-nobody}\nEOF\nFROM base\nARG VERSION\nCOPY <<EOF /version\n${VERSION}\nEOF\nCOPY <<EOF /major\n${VERSION%%.*}\nEOF\n",
    );
    p.kiln(&["import", "-o", "kiln.kdl"]).ok();
    let text = p.read("kiln.kdl");
    assert!(text.contains("arg WHO default=\"world\""), "{text}");
    assert!(text.contains("hello ${WHO:-nobody}"), "{text}");
    assert!(text.contains("workdir \"${HOME_DIR}\""), "{text}");
    assert!(text.contains("copy \"app.txt\" \"${HOME_DIR}/\""), "{text}");
    assert!(
        text.contains("export {\n    stage-1 to=\"out\"\n}"),
        "{text}"
    );
    // An arg one of whose uses needs its value (`%%`) is a value in every
    // use, so that no `--arg` changes some of them and not the others.
    assert!(!text.contains("arg VERSION"), "{text}");
    assert!(!text.contains("${VERSION}"), "{text}");
    let r = p.kiln(&["import", "-o", "again.kdl"]);
    r.ok();
    assert!(
        r.stderr
            .contains("`ARG VERSION` is written into the spec as its value"),
        "{}",
        r.stderr
    );
    // `--arg` reaches the import as `--build-arg` reaches the Dockerfile,
    // every use alike, and both give the same bytes.
    let r = p.build(&["--arg", "WHO=kiln", "--arg", "HOME_DIR=/srv"]);
    r.ok();
    assert_eq!(p.read("out/greeting"), "hello kiln\n");
    assert_eq!(p.read("out/srv/app.txt"), "the app\n");
    assert!(!p.exists("out/app"));
    assert_eq!(p.read("out/major"), "1\n");
    p.build(&[
        "-f",
        "Dockerfile",
        "--build-arg",
        "WHO=kiln",
        "--build-arg",
        "HOME_DIR=/srv",
        "-o",
        "direct",
    ])
    .ok();
    assert_eq!(p.read("direct/greeting"), "hello kiln\n");
    assert_eq!(p.read("direct/srv/app.txt"), "the app\n");
    // An ARG whose declarations disagree stays a value, with a note.
    p.file(
        "Dockerfile",
        "FROM scratch AS a\nARG MODE=debug\nCOPY <<EOF /mode\n$MODE\nEOF\nFROM scratch\nARG MODE=release\nCOPY --from=a /mode /mode\n",
    );
    let r = p.kiln(&["import"]);
    r.ok();
    assert!(!r.stdout.contains("arg MODE"), "{}", r.stdout);
    assert!(
        r.stderr.contains("`ARG MODE` is written into the spec"),
        "{}",
        r.stderr
    );
    // A stage built on an image exports its image.
    p.file(
        "Dockerfile",
        "ARG TAG=1.36\nFROM docker.io/library/busybox:${TAG} AS app\nENV X=1\n",
    );
    let r = p.kiln(&["import"]);
    r.ok();
    assert!(
        r.stdout
            .contains("from image=\"docker.io/library/busybox:${TAG}\""),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("app to=\"app.oci\" format=\"oci\" tag=\"app:latest\""),
        "{}",
        r.stdout
    );
}
