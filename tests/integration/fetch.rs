//! `fetch` (and Dockerfile `ADD --checksum=… URL`) against a local HTTP
//! server: pinned downloads, checksum mismatches, and a cache that never
//! goes back to the network.

use crate::harness::Project;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Serve `body` to every GET; returns the base URL and the request count.
fn serve(body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let (url, count, _) = serve_changing(body);
    (url, count)
}

/// Serve a body that can be changed (a server whose file moves); returns
/// the base URL, the request count and the body.
pub(crate) fn serve_changing(body: &[u8]) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<u8>>>) {
    let shared = Arc::new(Mutex::new(body.to_vec()));
    let body = shared.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            c.fetch_add(1, Ordering::SeqCst);
            let body = body.lock().unwrap().clone();
            let missing = String::from_utf8_lossy(&req).starts_with("GET /missing");
            let head = if missing {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let _ = s.write_all(head.as_bytes());
            if !missing {
                let _ = s.write_all(&body);
            }
        }
    });
    (url, count, shared)
}

const BODY: &[u8] = b"downloaded\n";
/// sha256 of BODY.
const SUM: &str = "sha256:30031a9831674dd684c3817399acebc88a116ce5a7a3fbc0cf34d92521a534e6";

#[test]
fn a_pinned_fetch_downloads_once() {
    let (url, count) = serve(BODY);
    let p = Project::new();
    let spec = |extra: &str| {
        format!(
            "kiln 1\nstage s {{\n    fetch \"{url}/files/data.txt\" \"/opt/\" checksum=\"{SUM}\"\n{extra}}}\nexport {{\n    s to=\"out\"\n}}\n"
        )
    };
    p.spec(&spec(""));
    p.build(&[]).ok();
    assert_eq!(p.read("out/opt/data.txt"), "downloaded\n");
    let mode = std::fs::metadata(p.path().join("out/opt/data.txt")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // A later step changes; the fetch is cached by its checksum.
    p.spec(&spec("    write \"/later\" \"x\"\n"));
    let r = p.build(&[]);
    r.ok();
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the cached fetch went to the network"
    );
    assert!(r.cached() >= 1);
}

#[test]
fn a_changed_download_fails_naming_both_digests() {
    let (url, _) = serve(b"something else\n");
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage s {{\n    fetch \"{url}/f\" \"/f\" checksum=\"{SUM}\"\n}}\nexport {{\n    s to=\"out\"\n}}\n"
    ));
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.code(1);
    assert!(r.stderr.contains(&SUM["sha256:".len()..]), "{}", r.stderr);
    assert!(r.stderr.contains("got sha256:"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln.kdl:3:"), "{}", r.stderr);
    assert!(!p.exists("out"));
}

#[test]
fn http_errors_are_reported() {
    let p = Project::new();
    let (url, _) = serve(BODY);
    p.spec(&format!(
        "kiln 1\nstage s {{\n    fetch \"{url}/missing\" \"/x\" checksum=\"{SUM}\"\n}}\n"
    ));
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.code(3);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
}

#[test]
fn an_unpinned_fetch_is_pinned_on_first_use_in_the_lock_file() {
    let (url, count, body) = serve_changing(BODY);
    let p = Project::new();
    let file = format!("{url}/dl/tool.txt");
    p.spec(&format!(
        "kiln 1\nstage s {{\n    fetch \"{file}\" \"/opt/\"\n}}\nexport {{\n    s to=\"out\"\n}}\n"
    ));
    // `--locked` refuses to pin it.
    let r = p.kiln(&["build", "--locked"]);
    r.code(2);
    assert!(r.stderr.contains("kiln.kdl:3:5"), "{}", r.stderr);
    assert_eq!(count.load(Ordering::SeqCst), 0);
    // The first build fetches once (pinning and the step share it), says
    // so, and writes the lock.
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.ok();
    assert!(r.stderr.contains("pinned on first use"), "{}", r.stderr);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(p.read("out/opt/tool.txt"), "downloaded\n");
    let lock = p.read("kiln.lock");
    assert!(lock.contains(&file) && lock.contains(SUM), "{lock}");
    // Later builds use the lock: cached, offline.
    let r = p.build(&["--locked"]);
    r.ok();
    assert!(r.ran().is_empty());
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // The server's file changes: a build that fetches again fails, showing
    // both digests, and writes nothing.
    *body.lock().unwrap() = b"changed\n".to_vec();
    let r = p.kiln(&["build", "--no-cache"]);
    r.code(1);
    assert!(
        r.stderr.contains(SUM.trim_start_matches("sha256:")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--update"), "{}", r.stderr);
    assert_eq!(p.read("out/opt/tool.txt"), "downloaded\n");
    assert_eq!(p.read("kiln.lock"), lock);
    // `kiln lock --update URL` pins the new file; the next build takes it
    // and `explain` says why the step ran.
    let l = p.kiln(&["lock", "--update", &file]);
    l.ok();
    assert!(l.stdout.contains("updated from"), "{}", l.stdout);
    let r = p.build(&[]);
    r.ok();
    assert_eq!(p.read("out/opt/tool.txt"), "changed\n");
    let explain = p.kiln(&["explain"]);
    assert!(
        explain.stdout.contains("what the lock file pins"),
        "{}",
        explain.stdout
    );
}

#[test]
fn dockerfile_add_without_a_checksum_is_pinned_on_first_use() {
    let (url, count) = serve(BODY);
    let p = Project::new();
    p.file(
        "Dockerfile",
        &format!("FROM scratch\nADD {url}/dl/file.bin /downloads/\n"),
    );
    let r = p.kiln(&["import"]);
    r.ok();
    assert!(r.stderr.contains("has no checksum"), "{}", r.stderr);
    p.kiln(&["build", "-o", "out"]).ok();
    assert_eq!(p.read("out/downloads/file.bin"), "downloaded\n");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(p.read("Dockerfile.lock").contains(SUM));
}

#[test]
fn dockerfile_add_with_a_checksum_is_a_fetch() {
    let (url, count) = serve(BODY);
    let p = Project::new();
    p.file(
        "Dockerfile",
        &format!("FROM scratch\nADD --checksum={SUM} {url}/dl/file.bin /downloads/\n"),
    );
    p.kiln(&["build", "-o", "out"]).ok();
    assert_eq!(p.read("out/downloads/file.bin"), "downloaded\n");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
