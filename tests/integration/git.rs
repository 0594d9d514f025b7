//! `git URL DEST` (and Dockerfile `ADD URL.git#REF:DIR`) against real
//! repositories made with the `git` command and served over smart HTTP
//! (`git http-backend`): refs pinned on first use in the lock file, a
//! cache that never fetches again, `kiln lock --update`, `--locked`,
//! subdirectories, `.git` directories that git itself accepts.

use crate::harness::Project;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", "2020-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A served repository: a working clone to commit in, and the bare
/// repository the server reads.
struct Remote {
    _root: tempfile::TempDir,
    work: PathBuf,
    /// `http://127.0.0.1:PORT/r.git`.
    url: String,
    requests: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
}

impl Remote {
    /// A repository with `README`, an executable `bin/run.sh`, a symlink
    /// `latest -> README`, `docs/guide.txt`, tagged `v1` on `main`.
    fn new() -> Remote {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(work.join("bin")).unwrap();
        std::fs::create_dir_all(work.join("docs")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("README"), "version 1\n").unwrap();
        std::fs::write(work.join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            work.join("bin/run.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("README", work.join("latest")).unwrap();
        std::fs::write(work.join("docs/guide.txt"), "read me\n").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        git(&work, &["tag", "v1"]);
        let bare = root.path().join("srv/r.git");
        git(
            root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                bare.to_str().unwrap(),
            ],
        );
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let (url, requests, up) = serve(root.path().join("srv"));
        Remote {
            _root: root,
            work,
            url: format!("{url}/r.git"),
            requests,
            up,
        }
    }

    /// Commit a new README on `main` and push it.
    fn advance(&self, readme: &str) -> String {
        std::fs::write(self.work.join("README"), readme).unwrap();
        git(&self.work, &["commit", "-q", "-am", "next"]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        self.head()
    }

    fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// Serve the repositories under `root` over git's smart HTTP protocol
/// (`git http-backend`, a CGI program, once per request). Returns the base
/// URL, the request count, and a switch that makes the server refuse.
fn serve(root: PathBuf) -> (String, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let up = Arc::new(AtomicBool::new(true));
    let (c, u) = (count.clone(), up.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            if !u.load(Ordering::SeqCst) {
                continue; // dropped: the connection is reset
            }
            let root = root.clone();
            std::thread::spawn(move || {
                let _ = answer(s, &root);
            });
        }
    });
    (url, count, up)
}

fn answer(s: std::net::TcpStream, root: &Path) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut body = Vec::new();
    if header("transfer-encoding").contains("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Ok(n) = header("content-length").parse::<usize>() {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = cgi.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&body));
    let out = cgi.wait_with_output()?;
    let _ = feeder.join();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0);
    let (head, rest) = (
        &out.stdout[..split],
        &out.stdout[(split + 4).min(out.stdout.len())..],
    );
    let mut status = "200 OK".to_string();
    let mut reply = Vec::new();
    for l in String::from_utf8_lossy(head).split("\r\n") {
        match l.split_once(": ") {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.to_string(),
            Some(_) => reply.push(l.to_string()),
            None => {}
        }
    }
    let mut w = s;
    write!(w, "HTTP/1.1 {status}\r\n")?;
    for l in reply {
        write!(w, "{l}\r\n")?;
    }
    write!(
        w,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        rest.len()
    )?;
    w.write_all(rest)?;
    w.flush()
}

fn spec(url: &str, step_props: &str, extra: &str) -> String {
    format!(
        "kiln 1\nstage s {{\n    git \"{url}\" \"/src\"{step_props}\n{extra}}}\nexport {{\n    s to=\"out\"\n}}\n"
    )
}

fn mode(p: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::symlink_metadata(p).unwrap().permissions())
        & 0o7777
}

#[test]
fn a_branch_is_pinned_on_first_use_and_moves_only_when_updated() {
    let remote = Remote::new();
    let first = remote.head();
    let p = Project::new();
    p.spec(&spec(&remote.url, " ref=\"main\"", ""));
    // `--locked` refuses to pin a ref, naming the step.
    let r = p.kiln(&["build", "--locked"]);
    r.code(2);
    assert!(r.stderr.contains("--locked"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln.kdl:3:5"), "{}", r.stderr);
    assert!(!p.exists("kiln.lock"));

    let r = p.build(&[]);
    r.ok();
    assert!(r.stderr.contains("pinned on first use"), "{}", r.stderr);
    assert_eq!(p.read("out/src/README"), "version 1\n");
    assert_eq!(p.read("out/src/docs/guide.txt"), "read me\n");
    assert_eq!(mode(&p.path().join("out/src/bin/run.sh")), 0o755);
    assert_eq!(mode(&p.path().join("out/src/README")), 0o644);
    assert_eq!(
        std::fs::read_link(p.path().join("out/src/latest")).unwrap(),
        Path::new("README")
    );
    assert!(!p.exists("out/src/.git"));
    let lock = p.read("kiln.lock");
    assert!(
        lock.contains(&format!("git \"{}\" ref=main commit={first}", remote.url)),
        "{lock}"
    );

    // The branch moves; the build keeps the pinned commit, from its cache,
    // without the network.
    let second = remote.advance("version 2\n");
    remote.up.store(false, Ordering::SeqCst);
    let before = remote.requests.load(Ordering::SeqCst);
    let r = p.build(&["--locked"]);
    r.ok();
    assert_eq!(r.ran().len(), 0, "{}", r.stderr);
    assert_eq!(p.read("out/src/README"), "version 1\n");
    // A later step changes: the git step is still cached, offline.
    p.spec(&spec(
        &remote.url,
        " ref=\"main\"",
        "    write \"/note\" \"x\"\n",
    ));
    let r = p.build(&["--locked"]);
    r.ok();
    assert_eq!(remote.requests.load(Ordering::SeqCst), before);

    // Unreachable, `kiln lock --update` fails and keeps the lock.
    let r = p.kiln(&["lock", "--update", &remote.url]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains(&remote.url), "{}", r.stderr);
    assert_eq!(p.read("kiln.lock"), lock);

    remote.up.store(true, Ordering::SeqCst);
    p.kiln(&["lock", "--update", &remote.url]).ok();
    let updated = p.read("kiln.lock");
    assert!(updated.contains(&second), "{updated}");
    let r = p.build(&[]);
    r.ok();
    assert_eq!(p.read("out/src/README"), "version 2\n");
    // `explain` names what moved.
    let r = p.kiln(&["explain"]);
    r.ok();
    assert!(r.stdout.contains(&second[..12]), "{}", r.stdout);
}

#[test]
fn tags_commits_subdirectories_and_their_errors() {
    let remote = Remote::new();
    let first = remote.head();
    remote.advance("version 2\n");
    let p = Project::new();
    // A tag, a subdirectory.
    p.spec(&spec(&remote.url, " ref=\"v1\" subdir=\"docs\"", ""));
    p.build(&[]).ok();
    assert_eq!(p.read("out/src/guide.txt"), "read me\n");
    assert!(!p.exists("out/src/README"));
    // A full commit id needs no lock entry.
    std::fs::remove_file(p.path().join("kiln.lock")).unwrap();
    p.spec(&spec(&remote.url, &format!(" ref=\"{first}\""), ""));
    p.build(&["--locked"]).ok();
    assert_eq!(p.read("out/src/README"), "version 1\n");
    assert!(!p.exists("kiln.lock"));
    // A ref the repository does not have.
    p.spec(&spec(&remote.url, " ref=\"nope\"", ""));
    let r = p.build(&[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no ref `nope`"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln.kdl:3:5"), "{}", r.stderr);
    // A directory the commit lacks.
    p.spec(&spec(&remote.url, " ref=\"v1\" subdir=\"nothere\"", ""));
    let r = p.build(&[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no directory `nothere`"), "{}", r.stderr);
    // Bad refs and paths are spec errors, underlined.
    p.spec(&spec(&remote.url, " ref=\"a..b\"", ""));
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("is not a git ref"), "{}", r.stderr);
    p.spec(&spec(&remote.url, " subdir=\"../x\"", ""));
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("leaves the repository"), "{}", r.stderr);
    p.spec(&spec("ftp://example.com/r.git", "", ""));
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("not a git URL"), "{}", r.stderr);
}

#[test]
fn keep_git_dir_gives_a_repository_git_accepts_and_the_same_bytes_twice() {
    let remote = Remote::new();
    let head = remote.head();
    let tars: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let p = Project::new();
            p.spec(&format!(
                "kiln 1\nstage s {{\n    git \"{}\" \"/src\" ref=\"main\" keep-git-dir=#true\n}}\nexport {{\n    s to=\"out\"\n    s to=\"s.tar\" format=\"tar\"\n}}\n",
                remote.url
            ));
            p.build(&[]).ok();
            let out = p.path().join("out/src");
            assert_eq!(git(&out, &["rev-parse", "HEAD"]), head);
            assert_eq!(git(&out, &["status", "--porcelain"]), "");
            assert_eq!(git(&out, &["log", "--format=%s"]), "one");
            assert_eq!(git(&out, &["remote", "get-url", "origin"]), remote.url);
            std::fs::read(p.path().join("s.tar")).unwrap()
        })
        .collect();
    assert!(tars[0] == tars[1], "two builds exported different bytes");
}

#[test]
fn dockerfile_add_of_a_git_source() {
    let remote = Remote::new();
    let p = Project::new();
    p.file(
        "Dockerfile",
        &format!("FROM scratch\nADD {}#v1:docs /docs/\n", remote.url),
    );
    let r = p.kiln(&["import"]);
    r.ok();
    assert!(r.stderr.contains("names a git ref"), "{}", r.stderr);
    p.kiln(&["build", "-o", "out"]).ok();
    assert_eq!(p.read("out/docs/guide.txt"), "read me\n");
    assert!(p.read("Dockerfile.lock").contains(&remote.head()));
}

#[test]
fn credentials_in_a_git_url_stay_out_of_kiln_s_messages() {
    let remote = Remote::new();
    let with_creds = remote.url.replace("http://", "http://bot:s3cret@");
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage s {{\n    git \"{with_creds}\" \"/src\" ref=\"main\"\n}}\n"
    ));
    // gix will not send a password over plain HTTP; the error names the
    // repository without it (only the quoted spec line shows it).
    let r = p.kiln(&["build", "--progress", "plain"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&format!("cannot fetch `{}`", remote.url)),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.matches("s3cret").count(), 1, "{}", r.stderr);
}

#[test]
fn submodules_are_checked_out_at_the_commits_the_superproject_records() {
    let remote = Remote::new();
    let top = remote.work.parent().unwrap().to_path_buf();
    let srv = top.join("srv");
    // A library served beside the application, as `../lib.git`.
    let lib = top.join("libwork");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("lib.txt"), "lib v1\n").unwrap();
    git(&lib, &["add", "-A"]);
    git(&lib, &["commit", "-q", "-m", "lib one"]);
    let lib_bare = srv.join("lib.git");
    git(
        &top,
        &[
            "clone",
            "-q",
            "--bare",
            lib.to_str().unwrap(),
            lib_bare.to_str().unwrap(),
        ],
    );
    git(
        &lib,
        &["remote", "add", "origin", lib_bare.to_str().unwrap()],
    );
    git(
        &remote.work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            lib_bare.to_str().unwrap(),
            "vendor/lib",
        ],
    );
    // The submodule's URL as `.gitmodules` gives it, committed and pushed.
    let point_at = |url: &str, message: &str| {
        git(
            &remote.work,
            &[
                "config",
                "-f",
                ".gitmodules",
                "submodule.vendor/lib.url",
                url,
            ],
        );
        git(&remote.work, &["add", "-A"]);
        git(&remote.work, &["commit", "-q", "-m", message]);
        git(&remote.work, &["push", "-q", "origin", "main"]);
    };
    point_at("../lib.git", "with lib");
    // The library moves on; the application still records v1.
    std::fs::write(lib.join("lib.txt"), "lib v2\n").unwrap();
    git(&lib, &["commit", "-q", "-am", "lib two"]);
    git(&lib, &["push", "-q", "origin", "main"]);

    let p = Project::new();
    p.spec(&spec(&remote.url, " ref=\"main\"", ""));
    p.build(&[]).ok();
    assert_eq!(p.read("out/src/vendor/lib/lib.txt"), "lib v1\n");
    assert_eq!(p.read("out/src/README"), "version 1\n");
    // Cached: nothing is fetched again.
    let before = remote.requests.load(Ordering::SeqCst);
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().is_empty(), "{:?}", r.ran());
    assert_eq!(remote.requests.load(Ordering::SeqCst), before);

    // A submodule URL that names this machine's files is refused.
    point_at("file:///etc", "local url");
    let p = Project::new();
    p.spec(&spec(&remote.url, " ref=\"main\"", ""));
    let r = p.build(&[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("kiln::git::submodule"), "{}", r.stderr);
    assert!(r.stderr.contains("not a remote repository"), "{}", r.stderr);
}
