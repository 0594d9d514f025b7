//! `fetch` (and Dockerfile `ADD --checksum=… URL`) against a local HTTP
//! server: pinned downloads, checksum mismatches, and a cache that never
//! goes back to the network.

use crate::harness::Project;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Serve `body` to every GET; returns the base URL and the request count.
fn serve(body: &'static [u8]) -> (String, Arc<AtomicUsize>) {
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
                let _ = s.write_all(body);
            }
        }
    });
    (url, count)
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
fn unpinned_fetches_and_http_errors_are_reported() {
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n    fetch \"https://example.com/x\" \"/x\"\n}\n");
    let r = p.kiln(&["check"]);
    r.code(2);
    assert!(
        r.stderr.contains("a fetch needs a checksum"),
        "{}",
        r.stderr
    );
    let (url, _) = serve(BODY);
    p.spec(&format!(
        "kiln 1\nstage s {{\n    fetch \"{url}/missing\" \"/x\" checksum=\"{SUM}\"\n}}\n"
    ));
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.code(3);
    assert!(r.stderr.contains("404"), "{}", r.stderr);
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
