//! The remote cache over the Remote Execution API, against a real server:
//! BuildGrid (PyPI `buildgrid`, installed by `scripts/fetch-buildgrid`)
//! on loopback with an in-memory cache, started by each test on a free
//! port. Two projects in two folders, each with its own state directory,
//! play two machines.

use crate::harness::Project;
use crate::images_helper::{busybox, sandbox_ready};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A BuildGrid server with a cache only (Action Cache, CAS, ByteStream).
struct Grid {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bgd() -> Option<PathBuf> {
    let path = std::env::var_os("KILN_BGD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kiln-buildgrid/bin/bgd"));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "BuildGrid is not installed (scripts/fetch-buildgrid installs it)"
    );
    eprintln!("skipping: BuildGrid is not installed (scripts/fetch-buildgrid installs it)");
    None
}

impl Grid {
    fn start() -> Option<Grid> {
        let bgd = bgd()?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("grid.yml");
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/buildgrid-cache.yml"),
        )
        .unwrap();
        std::fs::write(
            &config,
            template
                .replace("PORT", &port.to_string())
                .replace("SIZE", "256MB"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bgd)
            .args(["server", "start"])
            .arg(&config)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut grid = Grid {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = grid.child.try_wait() {
                let log = std::fs::read_to_string(grid._dir.path().join("log")).unwrap_or_default();
                panic!("BuildGrid stopped ({status}):\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "BuildGrid did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(grid)
    }

    fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) const SPEC: &str = crate::shared::ON_BUSYBOX;

/// The same steps, after a stage inserted before them (and never built).
pub(crate) fn spec_with_a_stage_before() -> String {
    SPEC.replace(
        "stage s {",
        "stage other {\n    from image=\"IMAGE\"\n    run \"echo other > /other.txt\"\n}\nstage s {",
    )
}

pub(crate) fn machine(spec: &str) -> Option<Project> {
    if !sandbox_ready() {
        return None;
    }
    let image = busybox()?;
    let p = Project::new();
    p.spec(&spec.replace("IMAGE", &image));
    p.file("a.txt", "one\n");
    Some(p)
}

/// Every file below `dir` with its bytes.
pub(crate) fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push((
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The build warned about the remote cache once (and went on).
pub(crate) fn warned_once(r: &crate::harness::Run) {
    assert_eq!(
        r.stderr.matches("kiln::remote::cache").count(),
        1,
        "{}",
        r.stderr
    );
}

pub(crate) fn remote_event(r: &crate::harness::Run) -> serde_json::Value {
    let events = r.events_of("remote_cache");
    assert_eq!(events.len(), 1, "{}", r.stderr);
    events[0].clone()
}

/// Machine A builds and uploads; machine B (another folder, another state
/// directory, a spec with a stage inserted before the same steps) runs
/// nothing, downloads about what it exports, and exports the same bytes.
/// B's next build asks the server nothing it already has.
#[test]
fn a_second_machine_takes_every_step_from_the_server() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    let (Some(a), Some(b)) = (machine(SPEC), machine(&spec_with_a_stage_before())) else {
        return;
    };
    let url = grid.url();
    let built = a.build(&["--remote-cache", &url]);
    built.ok();
    assert!(!built.ran().is_empty());
    let up = remote_event(&built);
    assert!(up["results_uploaded"].as_u64().unwrap() >= 2, "{up}");
    assert_eq!(up["found"], 0);

    // A dry run says what the server has, and takes nothing.
    let dry = b.kiln(&["build", "--dry-run", "--remote-cache", &url]);
    dry.ok();
    assert!(
        dry.stdout
            .contains("remote     s [2] run \"cat /a.txt /a.txt > /b.txt\""),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("0 steps would run"), "{}", dry.stdout);
    assert!(!b.exists("out"));

    let taken = b.build(&["--remote-cache", &url]);
    taken.ok();
    assert_eq!(taken.ran(), Vec::<(String, u64)>::new(), "{}", taken.stderr);
    let down = remote_event(&taken);
    assert!(down["found"].as_u64().unwrap() >= 2, "{down}");
    // The progress and `explain` say which results came from the server.
    let cached = taken.events_of("step_cached");
    assert!(
        !cached.is_empty() && cached.iter().all(|e| e["remote"] == true),
        "{cached:?}"
    );
    let explained = b.kiln(&["explain", "--all"]);
    explained.ok();
    assert!(
        explained
            .stdout
            .contains("run \"cat /a.txt /a.txt > /b.txt\" (from the remote cache)"),
        "{}",
        explained.stdout
    );
    assert_eq!(down["results_uploaded"], 0, "nothing new to upload");
    let exported = tree(&b.path().join("out"));
    assert_eq!(tree(&a.path().join("out")), exported);
    assert_eq!(b.read("out/b.txt"), "one\none\n");
    // What B downloaded is what it exported, and a little more (tree
    // manifests, blob lists, configs).
    let size: u64 = exported.iter().map(|(_, b)| b.len() as u64).sum();
    let downloaded = down["downloaded_bytes"].as_u64().unwrap();
    assert!(
        downloaded <= size + size / 10 + (64 << 10),
        "downloaded {downloaded} for an export of {size}"
    );

    // Once taken, the results B needed are its own: with the server gone,
    // B builds again from its own cache (the copy, whose tree B never
    // needed, is made again; the command is not run again).
    grid.stop();
    std::fs::remove_dir_all(b.path().join("out")).unwrap();
    let again = b.build(&["--remote-cache", &url, "--remote-timeout", "3"]);
    again.ok();
    assert!(
        !again.ran().contains(&("s".to_string(), 1)),
        "{}",
        again.stderr
    );
    assert_eq!(b.read("out/b.txt"), "one\none\n");
}

/// A build stage whose tree is large (its base and a thousand files) and
/// a final stage that copies one file of it.
const LARGE: &str = r#"kiln 1
stage build {
    from image="IMAGE"
    copy "a.txt" "/a.txt"
    run "mkdir -p /many /out && for i in $(seq 1500); do echo $i > /many/file-number-$i; done && cat /a.txt /a.txt > /out/app"
}
stage final {
    copy from=build "/out/app" "/app"
}
export {
    final to="out"
}
"#;

/// Taking every step from the server, a `copy from=` a large stage reads
/// the parts of its tree's manifest holding what it copies, not the whole
/// manifest; a copy that runs here on that stage (its destination changed)
/// reads the rest as it needs it and copies the same bytes.
#[test]
fn a_copy_from_a_large_remote_stage_reads_a_few_parts_of_its_tree() {
    let Some(grid) = Grid::start() else {
        return;
    };
    copy_from_a_large_stage(
        &["--remote-cache", &grid.url()],
        &["--remote-cache", &grid.url()],
    );
}

/// A builds with `write`, B with `read`: what B downloads, and a copy
/// that runs on B.
pub(crate) fn copy_from_a_large_stage(write: &[&str], read: &[&str]) {
    let (Some(a), Some(b)) = (machine(LARGE), machine(LARGE)) else {
        return;
    };
    a.build(write).ok();
    let taken = b.build(read);
    taken.ok();
    assert_eq!(taken.ran(), Vec::<(String, u64)>::new(), "{}", taken.stderr);
    assert_eq!(b.read("out/app"), "one\none\n");
    // The build stage's manifest alone is about 100 KB (1,500 files of
    // about 70 bytes each, and the base's); B reads one 16 KB part or two.
    let down = remote_event(&taken);
    let downloaded = down["downloaded_bytes"].as_u64().unwrap();
    assert!(downloaded < 24 << 10, "downloaded {downloaded}: {down}");

    // The copy runs here on the stage's tree from the server: the tree's
    // files are named by the server, and the file copied is the same.
    let image = busybox().unwrap();
    b.spec(
        &LARGE
            .replace("\"/app\"", "\"/bin/app\"")
            .replace("IMAGE", &image),
    );
    let moved = b.build(read);
    moved.ok();
    assert_eq!(
        moved.ran(),
        vec![("final".to_string(), 0)],
        "{}",
        moved.stderr
    );
    assert_eq!(b.read("out/bin/app"), "one\none\n");
    assert!(
        !moved.stderr.contains("kiln::remote::cache"),
        "{}",
        moved.stderr
    );
}

/// A server that is not there costs one bounded wait and one warning;
/// the build goes on here.
#[test]
fn a_server_that_is_not_there_costs_one_warning() {
    let Some(p) = machine(SPEC) else {
        return;
    };
    let url = format!("grpc://127.0.0.1:{}", free_port());
    let start = Instant::now();
    let r = p.build(&["--remote-cache", &url, "--remote-timeout", "3"]);
    r.ok();
    assert!(!r.ran().is_empty());
    warned_once(&r);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(p.read("out/b.txt"), "one\none\n");
}

/// A machine that only reads (`--remote-upload=false`) takes results but
/// records none: a third machine finds nothing of what it built.
#[test]
fn a_machine_that_only_reads_takes_results_and_uploads_nothing() {
    let Some(grid) = Grid::start() else {
        return;
    };
    let (Some(writer), Some(reader), Some(third)) = (machine(SPEC), machine(SPEC), machine(SPEC))
    else {
        return;
    };
    writer.build(&["--remote-cache", &grid.url()]).ok();
    let r = reader.build(&["--remote-cache", &grid.url(), "--remote-upload=false"]);
    r.ok();
    let ev = remote_event(&r);
    assert!(ev["found"].as_u64().unwrap() >= 2, "{ev}");
    assert!(r.ran().is_empty());
    // Its own change is built here and not uploaded.
    reader.file("a.txt", "read-only\n");
    let r = reader.build(&["--remote-cache", &grid.url(), "--remote-upload=false"]);
    r.ok();
    let ev = remote_event(&r);
    assert_eq!(
        (
            ev["results_uploaded"].as_u64(),
            ev["uploaded_blobs"].as_u64()
        ),
        (Some(0), Some(0)),
        "{ev}"
    );
    third.file("a.txt", "read-only\n");
    let r = third.build(&["--remote-cache", &grid.url()]);
    r.ok();
    assert!(
        r.ran().contains(&("s".to_string(), 1)),
        "nothing was there to take"
    );
}

/// Taken results are built on: a later step that runs here reads the
/// whole tree (fetched then, and stored here with every file), and after
/// that the machine needs the server no more.
#[test]
fn a_step_run_here_on_a_taken_tree_fetches_it_and_keeps_it() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    let (Some(a), Some(b)) = (machine(SPEC), machine(SPEC)) else {
        return;
    };
    a.build(&["--remote-cache", &grid.url()]).ok();
    b.build(&["--remote-cache", &grid.url()]).ok();
    let more = SPEC.replace(
        "run \"cat /a.txt /a.txt > /b.txt\"",
        "run \"cat /a.txt /a.txt > /b.txt\"\n    run \"ls /bin | wc -l > /count\"",
    );
    let image = busybox().unwrap();
    b.spec(&more.replace("IMAGE", &image));
    let r = b.build(&["--remote-cache", &grid.url()]);
    r.ok();
    assert_eq!(r.ran(), vec![("s".to_string(), 2)], "{}", r.stderr);
    assert!(b.read("out/count").trim().parse::<u32>().unwrap() > 10);
    grid.stop();
    std::fs::remove_dir_all(b.path().join("out")).unwrap();
    b.file("a.txt", "one\n");
    let r = b.build(&["--remote-cache", &grid.url(), "--remote-timeout", "3"]);
    r.ok();
    assert!(r.ran().is_empty(), "{}", r.stderr);
    assert!(!r.stderr.contains("kiln::remote::cache"), "{}", r.stderr);
}

/// Results taken, then the server gone before their trees were read: the
/// build says so once and builds them here.
#[test]
fn taken_results_whose_trees_are_gone_with_the_server_are_built_here() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    let (Some(a), Some(b)) = (machine(SPEC), machine(SPEC)) else {
        return;
    };
    a.build(&["--remote-cache", &grid.url()]).ok();
    // A proxy that passes the lookups and then closes: B takes the results
    // and cannot read their trees.
    let proxy = closing_proxy(grid.port, 4 << 10);
    let r = b.build(&[
        "--remote-cache",
        &format!("grpc://127.0.0.1:{proxy}"),
        "--remote-timeout",
        "3",
    ]);
    grid.stop();
    r.ok();
    warned_once(&r);
    assert_eq!(tree(&a.path().join("out")), tree(&b.path().join("out")));
    assert!(!r.stderr.contains("damaged"), "{}", r.stderr);
}

/// A server that takes the connection and never answers costs one
/// timeout, not the build.
#[test]
fn a_server_that_never_answers_costs_one_timeout() {
    let Some(p) = machine(SPEC) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let start = Instant::now();
    let r = p.build(&[
        "--remote-cache",
        &format!("grpc://127.0.0.1:{port}"),
        "--remote-timeout",
        "2",
    ]);
    r.ok();
    warned_once(&r);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(p.read("out/b.txt"), "one\none\n");
}

/// A proxy between kiln and the server that flips a byte in the middle of
/// every large frame the server sends: a blob that comes back with other
/// bytes is refused, the remote is given up on with a warning, and the
/// steps run here, giving what the first machine gave.
#[test]
fn a_blob_that_comes_back_damaged_is_refused_and_the_step_runs_here() {
    let Some(grid) = Grid::start() else {
        return;
    };
    let (Some(a), Some(b)) = (machine(SPEC), machine(SPEC)) else {
        return;
    };
    a.build(&["--remote-cache", &grid.url()]).ok();
    let proxy = corrupting_proxy(grid.port);
    let r = b.build(&["--remote-cache", &format!("grpc://127.0.0.1:{proxy}")]);
    r.ok();
    warned_once(&r);
    assert!(!r.ran().is_empty(), "{}", r.stderr);
    assert_eq!(tree(&a.path().join("out")), tree(&b.path().join("out")));
    assert!(!r.stderr.contains("damaged"), "{}", r.stderr);
}

/// The server killed while a build runs: the build finishes here.
#[test]
fn a_server_killed_during_a_build_leaves_the_build_to_finish_here() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    let Some(p) = machine(&SPEC.replace("cat /a.txt", "sleep 2; cat /a.txt")) else {
        return;
    };
    let url = grid.url();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        grid.stop();
    });
    let r = p.build(&["--remote-cache", &url, "--remote-timeout", "3"]);
    killer.join().unwrap();
    r.ok();
    warned_once(&r);
    assert_eq!(p.read("out/b.txt"), "one\none\n");
}

/// Listen on a free port and pass connections to `upstream`, flipping a
/// byte in the middle of each HTTP/2 DATA frame of more than 8 KiB that
/// the server sends (the blob bytes of a large read).
fn corrupting_proxy(upstream: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            std::thread::spawn(move || {
                let _ = flip_frames(server, client);
            });
        }
    });
    port
}

fn flip_frames(mut from: TcpStream, mut to: TcpStream) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 9];
        from.read_exact(&mut head)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload)?;
        if head[3] == 0 && len > 8 << 10 {
            payload[len / 2] ^= 0xff;
        }
        to.write_all(&head)?;
        to.write_all(&payload)?;
    }
}

/// A build whose every step is in the local cache asks the server
/// nothing: with the server gone, it neither waits nor warns.
#[test]
fn a_build_found_here_asks_the_server_nothing() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    let Some(p) = machine(SPEC) else {
        return;
    };
    let url = grid.url();
    p.build(&["--remote-cache", &url]).ok();
    grid.stop();
    // The same content written again: the build looks every step up
    // (the memo of the last build does not answer for it).
    std::thread::sleep(Duration::from_millis(1100));
    p.file("a.txt", "one\n");
    let r = p.build(&["--remote-cache", &url]);
    r.ok();
    assert!(r.ran().is_empty(), "{}", r.stderr);
    assert!(r.cached() >= 2, "{}", r.stderr);
    assert!(!r.stderr.contains("kiln::remote::cache"), "{}", r.stderr);
    assert_eq!(remote_event(&r)["found"], 0);
}

/// Pass connections to `upstream` until `budget` bytes came back from the
/// server on one connection, then close it (and refuse new ones).
fn closing_proxy(upstream: u16, budget: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let spent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for client in listener.incoming().flatten() {
            if spent.load(std::sync::atomic::Ordering::Relaxed) >= budget {
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let spent = spent.clone();
            std::thread::spawn(move || {
                let (mut from, mut to) = (server, client);
                let mut buf = [0u8; 1024];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let total = spent.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                    if total >= budget || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

/// A settings file (`KILN_CONFIG`) sets the remote cache once: machine A
/// uploads and machine B takes every step without a `--remote-*` flag;
/// the file's settings count only for the server it names.
#[test]
fn a_settings_file_sets_the_remote_cache_once() {
    let Some(grid) = Grid::start() else {
        return;
    };
    let (Some(a), Some(b), Some(c)) = (machine(SPEC), machine(SPEC), machine(SPEC)) else {
        return;
    };
    let settings = tempfile::tempdir().unwrap();
    let file = settings.path().join("config.kdl");
    std::fs::write(
        &file,
        format!(
            "// the team's cache\nremote-cache \"{}\" timeout=5 {{\n    header \"authorization\" \"$KILN_TEST_CACHE_TOKEN\"\n}}\n",
            grid.url()
        ),
    )
    .unwrap();
    let vars = [
        ("KILN_CONFIG", file.to_str().unwrap()),
        ("KILN_TEST_CACHE_TOKEN", "Bearer t0ken"),
    ];
    let build = |p: &Project| p.kiln_env(&["build", "--progress", "json"], &vars);
    let up = build(&a);
    up.ok();
    assert!(remote_event(&up)["results_uploaded"].as_u64().unwrap() >= 2);
    // The same server written another way is the file's server still.
    let slash = format!("{}/", grid.url());
    let taken = b.kiln_env(
        &["build", "--progress", "json", "--remote-cache", &slash],
        &vars,
    );
    taken.ok();
    assert_eq!(taken.ran(), Vec::<(String, u64)>::new(), "{}", taken.stderr);
    assert!(remote_event(&taken)["found"].as_u64().unwrap() >= 2);
    // An empty `--remote-cache` (or an empty `KILN_CONFIG`): no remote.
    for (args, vars) in [
        (vec!["--remote-cache", ""], vars.to_vec()),
        (vec![], vec![("KILN_CONFIG", "")]),
    ] {
        let mut all = vec!["build", "--progress", "json", "--no-cache"];
        all.extend(args);
        let r = b.kiln_env(&all, &vars);
        r.ok();
        assert!(r.events_of("remote_cache").is_empty(), "{}", r.stderr);
    }
    // Another server on the command line: the file's settings (and its
    // token) are not used for it; a server that is not there warns once.
    let other = format!("grpc://127.0.0.1:{}", free_port());
    let r = c.kiln_env(
        &[
            "build",
            "--progress",
            "json",
            "--remote-cache",
            &other,
            "--remote-timeout",
            "2",
        ],
        &vars,
    );
    r.ok();
    assert!(!r.ran().is_empty());
    warned_once(&r);
    // A variable the file names that is not set: an error at its place.
    let r = c.kiln_env(&["build"], &[("KILN_CONFIG", file.to_str().unwrap())]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("`KILN_TEST_CACHE_TOKEN`, which is not set")
            && r.stderr.contains("config.kdl:3:"),
        "{}",
        r.stderr
    );
}

/// A settings file with mistakes fails the build before anything runs,
/// naming each mistake's line and column.
#[test]
fn a_settings_file_with_mistakes_is_refused_with_places() {
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n    write \"/a\" \"a\"\n}\n");
    let settings = tempfile::tempdir().unwrap();
    let file = settings.path().join("config.kdl");
    std::fs::write(
        &file,
        "remote-cache \"grpc://127.0.0.1:1\" timeout=\"soon\" uplaod=#false\nremote-cahce \"x\"\n",
    )
    .unwrap();
    let r = p.kiln_env(&["build"], &[("KILN_CONFIG", file.to_str().unwrap())]);
    assert_ne!(r.code, 0);
    for want in [
        "expected a number",
        "config.kdl:1:",
        "uplaod",
        "unknown setting `remote-cahce`",
        "did you mean `remote-cache`?",
        "config.kdl:2:1",
    ] {
        assert!(r.stderr.contains(want), "no `{want}` in:\n{}", r.stderr);
    }
    assert!(!p.exists("out"));
    // A named file that is not there is an error too.
    let r = p.kiln_env(&["build"], &[("KILN_CONFIG", "/nonexistent/kiln.kdl")]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("/nonexistent/kiln.kdl"), "{}", r.stderr);
}
