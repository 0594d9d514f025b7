//! Commands other than build, and command-line handling.

use crate::harness::Project;

const SPEC: &str = r#"kiln 1
stage lib {
    write "/lib" "1"
}
stage app {
    from lib
    write "/app" "1"
}
stage test {
    from app
    copy "/lib" "/copy" from=lib
}
export {
    app to="out"
}
"#;

#[test]
fn version_and_help() {
    let p = Project::new();
    let r = p.kiln(&["--version"]);
    r.ok();
    assert!(r.stdout.starts_with("kiln "), "{}", r.stdout);
    let r = p.kiln(&["frobnicate"]);
    r.code(2);
}

#[test]
fn check_validates_only() {
    let p = Project::bare();
    p.spec(SPEC);
    let r = p.kiln(&["check"]);
    r.ok();
    assert_eq!(r.stdout, "ok: 3 stages, 3 steps, 1 export\n");
    assert!(!p.exists(".kiln"));
    assert!(!p.machine_state().exists());
}

#[test]
fn graph_text_and_dot() {
    let p = Project::new();
    p.spec(SPEC);
    let r = p.kiln(&["graph"]);
    r.ok();
    assert_eq!(
        r.stdout,
        "lib: from scratch, 1 step\napp (exported): from lib, 1 step\ntest: from app, 1 step\n  copies from lib\n"
    );
    let r = p.kiln(&["graph", "--format", "dot"]);
    r.ok();
    assert!(r.stdout.starts_with("digraph kiln {"));
    assert!(
        r.stdout
            .contains("\"lib\" -> \"test\" [style=dashed, label=\"copy\"];"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\"app\" -> \"test\";"), "{}", r.stdout);
    let r = p.kiln(&["graph", "--target", "app"]);
    assert!(!r.stdout.contains("test"), "{}", r.stdout);
}

#[test]
fn unknown_target_suggests() {
    let p = Project::new();
    p.spec(SPEC);
    let r = p.kiln(&["build", "--target", "tset"]);
    r.code(2);
    assert!(r.stderr.contains("did you mean `test`?"), "{}", r.stderr);
}

#[test]
fn explain_without_a_build() {
    let p = Project::new();
    p.spec(SPEC);
    let r = p.kiln(&["explain"]);
    r.code(2);
    assert!(r.stderr.contains("run `kiln build` first"), "{}", r.stderr);
}

#[test]
fn explain_names_a_changed_step() {
    let p = Project::new();
    p.spec(SPEC);
    p.build(&[]).ok();
    p.spec(&SPEC.replace("write \"/app\" \"1\"", "write \"/app\" \"2\""));
    p.build(&[]).ok();
    let r = p.kiln(&["explain"]);
    r.ok();
    assert!(r.stdout.contains("1 step ran, 1 cached"), "{}", r.stdout);
    assert!(
        r.stdout.contains("because the step itself changed"),
        "{}",
        r.stdout
    );
}

#[test]
fn state_dir_from_the_environment() {
    let p = Project::bare();
    p.spec(SPEC);
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "--progress", "plain"])
        .current_dir(p.path())
        .env("KILN_STATE_DIR", state.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(state.path().join("actions.log").exists());
    assert!(!p.exists(".kiln"));
}

#[test]
fn a_state_directory_keeps_itself_out_of_git() {
    let p = Project::new();
    p.spec(SPEC);
    p.build(&[]).ok();
    assert_eq!(
        p.read(".kiln/.gitignore")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        vec!["*"]
    );
    // One the user changed is left as it is.
    p.file(".kiln/.gitignore", "mine\n");
    p.build(&[]).ok();
    assert_eq!(p.read(".kiln/.gitignore"), "mine\n");
}

#[test]
fn includes_compose_specs() {
    let p = Project::new();
    p.file(
        "pkgs/a/kiln.kdl",
        "stage a {\n  copy \"a.txt\" \"/\" context=\"pa\"\n}\ncontext pa path=\".\"\n",
    );
    p.file("pkgs/a/a.txt", "from a");
    p.file(
        "pkgs/b/kiln.kdl",
        "include \"../a/kiln.kdl\"\nstage b {\n  from a\n}\nexport {\n  b to=\"out-b\"\n}\n",
    );
    p.spec("kiln 1\ninclude \"pkgs/a/kiln.kdl\"\ninclude \"pkgs/b/kiln.kdl\"\n");
    p.build(&[]).ok();
    // Export paths are relative to the file that declares them.
    assert_eq!(p.read("pkgs/b/out-b/a.txt"), "from a");
}

#[test]
fn an_arg_can_choose_the_base_stage() {
    let p = Project::new();
    p.spec(
        "kiln 1\narg BASE default=\"a\"\nstage a {\n  write \"/x\" \"a\"\n}\nstage b {\n  write \"/x\" \"b\"\n}\nstage s {\n  from \"${BASE}\"\n}\n",
    );
    p.build(&["-o", "out-a"]).ok();
    assert_eq!(p.read("out-a/x"), "a");
    p.build(&["--arg", "BASE=b", "-o", "out-b"]).ok();
    assert_eq!(p.read("out-b/x"), "b");
    let r = p.build(&["--arg", "BASE=c", "-o", "out-c"]);
    r.code(2);
    assert!(r.stderr.contains("unknown stage `c`"), "{}", r.stderr);
}

#[test]
fn the_terminal_display_shows_stages() {
    // `script` gives kiln a pseudo-terminal, as a user's shell would.
    let p = Project::new();
    p.spec(SPEC);
    let cmd = format!(
        "{} build --progress tty",
        crate::harness::kiln_bin().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(p.path())
        .env("TERM", "xterm")
        .output()
        .expect("`script` (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("✓ lib built"), "{text}");
    assert!(text.contains("✓ app built"), "{text}");
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(p.path())
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("∙ app cached"), "{text}");
}

#[test]
fn the_terminal_display_falls_back_to_lines_without_a_terminal() {
    let p = Project::new();
    p.spec(SPEC);
    let r = p.kiln(&["build", "--progress", "tty"]);
    r.ok();
    assert!(r.stderr.contains("build finished"), "{}", r.stderr);
}

#[test]
fn command_line_mistakes_are_user_errors() {
    let p = Project::new();
    let r = p.kiln(&["build"]);
    r.code(2);
    assert!(
        r.stderr.contains("cannot read spec file `kiln.kdl`"),
        "{}",
        r.stderr
    );
    p.spec(SPEC);
    let r = p.kiln(&["build", "--arg", "NOEQUALS"]);
    r.code(2);
    assert!(r.stderr.contains("is not NAME=VALUE"), "{}", r.stderr);
    let r = p.kiln(&["build", "-o", "type=zip,dest=x"]);
    r.code(2);
    assert!(
        r.stderr.contains("`type=zip` is not understood"),
        "{}",
        r.stderr
    );
    let r = p.kiln(&["build", "-o", "x", "--target", "lib", "--target", "app"]);
    r.code(2);
    assert!(
        r.stderr.contains("comes before every `--target`"),
        "{}",
        r.stderr
    );
    let r = p.kiln(&["gc", "--max-size", "lots"]);
    r.code(2);
}

#[test]
fn an_undeclared_arg_is_a_warning() {
    let p = Project::new();
    p.spec("kiln 1\narg VERSION default=\"1\"\nstage s {\n  write \"/v\" \"${VERSION}\"\n}\n");
    let r = p.kiln(&["build", "--progress", "plain", "--arg", "VERSOIN=2"]);
    r.ok();
    assert!(
        r.stderr.contains("`--arg VERSOIN` is not declared"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("did you mean `VERSION`?"), "{}", r.stderr);
}

#[test]
fn an_unusable_state_dir_is_an_environment_error() {
    let p = Project::new();
    p.spec(SPEC).file("not-a-dir", "x");
    let r = p.kiln(&["build", "--state-dir", "not-a-dir/state"]);
    r.code(3);
    assert!(
        r.stderr.contains("cannot create the state directory"),
        "{}",
        r.stderr
    );
}

#[test]
fn docker_build_flags_are_taken_or_refused_with_a_reason() {
    let p = Project::new();
    p.spec(SPEC);
    // `-t` names an image, as in `docker build -t`.
    let r = p.kiln(&["build", "-t", "myimage", "--progress=rawjson"]);
    r.ok();
    assert!(
        r.stderr.contains("\"event\":\"image_tagged\""),
        "{}",
        r.stderr
    );
    assert!(p.kiln(&["images"]).stdout.contains("myimage:latest"));
    for (flag, says) in [
        (vec!["--load"], "docker load"),
        (vec!["--network", "host"], "per step"),
        (vec!["--iidfile", "id.txt"], "-t NAME"),
    ] {
        let mut args = vec!["build"];
        args.extend(flag.iter().copied());
        let r = p.kiln(&args);
        r.code(2);
        assert!(r.stderr.contains(says), "{flag:?}: {}", r.stderr);
        assert!(!r.stderr.contains("unexpected argument"), "{}", r.stderr);
    }
    assert!(!p.exists("id.txt"));
}

#[test]
fn dash_output_writes_a_tar_to_standard_output() {
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n    write \"/hello.txt\" \"hi\\n\"\n}\n");
    let out = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "-o", "-", "--progress", "plain"])
        .current_dir(p.path())
        .env_remove("KILN_STATE_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!p.exists("-"), "a directory named `-` was made");
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["hello.txt"]);
    // The same bytes as a tar export to a file.
    p.kiln(&["build", "-o", "type=tar,dest=s.tar"]).ok();
    assert!(std::fs::read(p.path().join("s.tar")).unwrap() == out.stdout);
}

#[test]
fn the_context_defaults_to_the_spec_s_directory_and_is_never_the_root() {
    let p = Project::new();
    p.file("app/Dockerfile", "FROM scratch\nCOPY hello.txt /\n")
        .file("app/hello.txt", "from app\n");
    // From the project's parent directory: the context is `app/`.
    let out = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "-f"])
        .arg(p.path().join("app/Dockerfile"))
        .arg("-o")
        .arg(p.path().join("out"))
        .current_dir("/")
        .env_remove("KILN_STATE_DIR")
        .env("XDG_CACHE_HOME", p.cache.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.read("out/hello.txt"), "from app\n");
    // The file system's root is refused at once, not walked.
    let r = p.kiln(&["build", "/"]);
    r.code(2);
    assert!(
        r.stderr.contains("cannot be a build context"),
        "{}",
        r.stderr
    );
}

#[test]
fn graph_draws_edges_from_mounts() {
    let p = Project::new();
    p.spec(
        "kiln 1\nstage tools {\n    write \"/bin/t\" \"x\"\n}\nstage app {\n    run \"true\" {\n        mount \"type=bind,from=tools,target=/t\"\n    }\n}\n",
    );
    let r = p.kiln(&["graph"]);
    r.ok();
    assert!(r.stdout.contains("  mounts tools"), "{}", r.stdout);
    let r = p.kiln(&["graph", "--format", "dot"]);
    r.ok();
    assert!(
        r.stdout
            .contains("\"tools\" -> \"app\" [style=dotted, label=\"mount\"];"),
        "{}",
        r.stdout
    );
}

#[test]
fn graph_draws_edges_to_a_stage_that_builds_a_plugin() {
    let p = Project::new();
    p.spec(
        "kiln 1\nplugin gen path=\"/gen.wasm\" from=\"tools\"\nstage tools {\n    write \"/gen.wasm\" \"x\"\n}\nstage docs {\n    wasm gen \"--all\"\n}\n",
    );
    let r = p.kiln(&["graph"]);
    r.ok();
    assert!(
        r.stdout.contains("  runs a plugin built by tools"),
        "{}",
        r.stdout
    );
    let r = p.kiln(&["graph", "--format", "dot"]);
    r.ok();
    assert!(
        r.stdout
            .contains("\"tools\" -> \"docs\" [style=dotted, label=\"plugin\"];"),
        "{}",
        r.stdout
    );
}

#[test]
fn check_reports_what_a_build_would_refuse_without_building() {
    let p = Project::new();
    p.spec(
        r#"kiln 1
context assets path="no-such-dir"
plugin tool path="missing.wasm"
stage a {
    from image="oci:no-such-layout:1"
    copy "x" "/" context="assets"
    wasm tool "in" "out"
}
stage b {
    write "/f" "f"
}
export {
    b to="."
}
"#,
    );
    let r = p.kiln(&["check"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    // The export that would replace the project is refused first, as a
    // build refuses it before starting.
    assert!(r.stderr.contains("kiln.kdl:13:5"), "{}", r.stderr);
    // With a writable destination, every other refusal at once, located.
    p.spec(
        &std::fs::read_to_string(p.path().join("kiln.kdl"))
            .unwrap()
            .replace("b to=\".\"", "b to=\"out\""),
    );
    let r = p.kiln(&["check"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for (what, at) in [
        ("the context `", "kiln.kdl:2:9"),
        ("cannot read the module of plugin `tool`", "kiln.kdl:3:8"),
        (
            "cannot use the image `oci:no-such-layout:1`",
            "kiln.kdl:5:16",
        ),
    ] {
        assert!(r.stderr.contains(what), "{what}: {}", r.stderr);
        assert!(r.stderr.contains(at), "{at}: {}", r.stderr);
    }
    assert!(!p.exists(".kiln/blobs/00"), "check builds nothing");
    // Fixed, it is ok.
    std::fs::create_dir(p.path().join("no-such-dir")).unwrap();
    p.spec("kiln 1\nstage b {\n    write \"/f\" \"f\"\n}\nexport {\n    b to=\"out\"\n}\n");
    p.kiln(&["check"]).ok();
}
