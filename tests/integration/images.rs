//! Base images: every local form (OCI layouts, OCI and docker archives),
//! a registry on loopback (Debian's `docker-registry`, pushed to with
//! `skopeo`), with basic auth and bearer tokens from the Docker config
//! file; `kiln.lock`,
//! `--locked`, `kiln lock --update`, offline builds and `explain`; image
//! indexes and `--platform`; the image config inherited; hostile layers.

use crate::harness::{Project, kiln_bin};
use crate::images_helper::{busybox, busybox_layout, sandbox_ready, tool};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Everything below `root`: path → kind, mode and contents or target.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir(root) {
        let rel = e.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(&e).unwrap();
        use std::os::unix::fs::MetadataExt;
        let what = if m.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(&e).unwrap().display())
        } else if m.is_dir() {
            format!("dir {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid())
        } else {
            format!(
                "file {:o} {}:{} {}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                blake3::hash(&std::fs::read(&e).unwrap())
            )
        };
        out.insert(rel, what);
    }
    out
}

pub fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Run skopeo, which must succeed; its output.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The digest of the manifest a layout's index names first.
fn layout_digest(layout: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn every_local_form_gives_the_same_tree() {
    if !rustix::process::geteuid().is_root() || !tool("skopeo") {
        return;
    }
    let (Some(image), Some(layout)) = (busybox(), busybox_layout()) else {
        return;
    };
    let p = Project::new();
    let dir = layout.display().to_string();
    let archive = p.path().join("busybox-oci.tar");
    let docker = p.path().join("busybox-docker.tar");
    skopeo(&[
        "copy",
        &image,
        &format!("oci-archive:{}:1", archive.display()),
    ]);
    skopeo(&[
        "copy",
        &image,
        &format!("docker-archive:{}:busybox:1", docker.display()),
    ]);
    let forms = [
        image.clone(),
        format!("oci-layout://{dir}:1"),
        format!("oci-layout://{dir}@{}", layout_digest(&layout)),
        "oci-archive:busybox-oci.tar".to_string(),
        "docker-archive:busybox-docker.tar".to_string(),
    ];
    let mut spec = String::from("kiln 1\n");
    let mut exports = String::from("export {\n");
    for (i, f) in forms.iter().enumerate() {
        spec.push_str(&format!("stage s{i} {{\n    from image=\"{f}\"\n}}\n"));
        exports.push_str(&format!("    s{i} to=\"out{i}\"\n"));
    }
    exports.push_str("}\n");
    p.spec(&(spec + &exports));
    let r = p.build(&[]);
    r.ok();
    let first = listing(&p.path().join("out0"));
    assert!(first.contains_key("bin/busybox"), "{first:?}");
    for i in 1..forms.len() {
        let other = listing(&p.path().join(format!("out{i}")));
        assert!(first == other, "{} differs from {}", forms[i], forms[0]);
    }
    // Local images are read afresh each build, never locked.
    assert!(!p.exists("kiln.lock"));
    for e in r.events_of("image_resolved") {
        assert_eq!(e["how"], "local", "{e}");
    }
}

/// A registry on loopback (Debian's docker-registry), stopped on drop.
pub struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start one; with `htpasswd`, it asks for basic auth.
    pub fn start(htpasswd: Option<&str>) -> Option<Registry> {
        if !tool("skopeo") {
            return None;
        }
        let found = Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "docker-registry is not installed"
            );
            eprintln!("skipping: docker-registry is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(h) = htpasswd {
            let f = dir.path().join("htpasswd");
            std::fs::write(&f, h).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                f.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            port,
            _dir: dir,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps what it holds.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self._dir.path().join("data")
    }

    /// Push a layout's image as `name`.
    pub fn push(&self, from: &str, name: &str, creds: Option<&str>) {
        let dest = format!("docker://{}/{name}", self.host());
        let mut args = vec!["copy", "--dest-tls-verify=false"];
        if let Some(c) = creds {
            args.extend(["--dest-creds", c]);
        }
        args.extend([from, dest.as_str()]);
        skopeo(&args);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of the busybox layout with a config changed by `umoci config`.
pub(crate) fn variant(args: &[&str]) -> Option<(tempfile::TempDir, String)> {
    if !tool("umoci") {
        return None;
    }
    let layout = busybox_layout()?;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("layout");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&layout)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(ok.success());
    let image = format!("{}:1", copy.display());
    let out = Command::new("umoci")
        .args(["config", "--image", &image])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((dir, format!("oci:{image}")))
}

#[test]
fn registry_images_are_locked_used_offline_and_updated_on_request() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let Some(reg) = Registry::start(None) else {
        return;
    };
    reg.push(&image, "busybox:1", None);
    let reference = format!("{}/busybox:1", reg.host());
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage app {{\n    from image=\"{reference}\"\n    run \"echo $MARK > /mark\"\n}}\nexport {{\n    app to=\"out\"\n}}\n"
    ));
    // Without a lock file, `--locked` refuses to resolve.
    let r = p.kiln(&["build", "--locked"]);
    r.code(2);
    assert!(r.stderr.contains("kiln.kdl:3:16"), "{}", r.stderr);
    assert!(r.stderr.contains("--locked"), "{}", r.stderr);
    assert!(!p.exists("kiln.lock"));
    // A dry run resolves the tag as the build would, and pins nothing.
    let dry = p.kiln(&["build", "--dry-run"]);
    dry.ok();
    assert!(dry.stdout.contains("would run"), "{}", dry.stdout);
    assert!(!p.exists("kiln.lock"), "a dry run writes no lock file");
    // The first build resolves the tag and locks the digest.
    let r = p.build(&[]);
    r.ok();
    let digest = layout_digest(&busybox_layout().unwrap());
    let lock = p.read("kiln.lock");
    assert!(
        lock.contains(&reference) && lock.contains(&digest),
        "{lock}"
    );
    assert_eq!(r.events_of("image_resolved")[0]["how"], "resolved");
    assert_eq!(p.read("out/mark"), "\n");
    // The tag moves to another image; the lock keeps the build where it was.
    let (_keep, changed) = variant(&["--config.env", "MARK=moved"]).unwrap();
    reg.push(&changed, "busybox:1", None);
    let r = p.build(&["--locked"]);
    r.ok();
    assert_eq!(r.events_of("image_resolved")[0]["how"], "locked");
    assert!(r.ran().is_empty());
    // `kiln lock --update` moves the lock, and the next build says why it ran.
    let l = p.kiln(&["lock", "--update", &reference]);
    l.ok();
    assert!(l.stdout.contains("updated from"), "{}", l.stdout);
    assert_ne!(p.read("kiln.lock"), lock);
    let r = p.build(&[]);
    r.ok();
    assert_eq!(p.read("out/mark"), "moved\n");
    let explain = p.kiln(&["explain"]);
    assert!(
        explain.stdout.contains("base image") && explain.stdout.contains(&reference),
        "{}",
        explain.stdout
    );
    // A name the spec does not use is refused.
    let l = p.kiln(&["lock", "--update", "nothing:1"]);
    l.code(2);
    assert!(
        l.stderr
            .contains("no stage is built on the image `nothing:1`"),
        "{}",
        l.stderr
    );
    // With the registry gone, a locked build works from the store.
    drop(reg);
    p.file("trigger", "");
    let r = p.build(&["--no-cache", "--locked"]);
    r.ok();
    assert_eq!(p.read("out/mark"), "moved\n");
}

#[test]
fn registry_credentials_come_from_the_docker_config() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    // user `kiln`, password `kiln-test-pass` (bcrypt, as htpasswd -B writes it)
    let htpasswd = "kiln:$2b$12$rvHUGNfUZ81TrECAcnhBceUUV7q7QHducyNaRckBJhJBddmyXO/8W\n";
    let Some(reg) = Registry::start(Some(htpasswd)) else {
        return;
    };
    reg.push(&image, "private/busybox:1", Some("kiln:kiln-test-pass"));
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage app {{\n    from image=\"{}/private/busybox:1\"\n}}\nexport {{\n    app to=\"out\"\n}}\n",
        reg.host()
    ));
    let docker = tempfile::tempdir().unwrap();
    let build = |config: Option<&str>| {
        let mut c = Command::new(kiln_bin());
        c.args(["build", "--progress", "plain"])
            .current_dir(p.path())
            .env_remove("KILN_STATE_DIR")
            .env("DOCKER_CONFIG", docker.path())
            .env("NO_COLOR", "1");
        if let Some(text) = config {
            std::fs::write(docker.path().join("config.json"), text).unwrap();
        }
        c.output().unwrap()
    };
    let out = build(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wants credentials"), "{stderr}");
    assert!(stderr.contains("config.json"), "{stderr}");
    let auth = base64("kiln:kiln-test-pass");
    let config = format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host());
    let out = build(Some(&config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.exists("out/bin/busybox"));
    // The credentials are nowhere in what kiln wrote.
    let mut leaked = Vec::new();
    for f in walkdir(p.path()) {
        if std::fs::read(&f).is_ok_and(|b| {
            b.windows(b"kiln-test-pass".len())
                .any(|w| w == b"kiln-test-pass")
                || b.windows(auth.len()).any(|w| w == auth.as_bytes())
        }) {
            leaked.push(f);
        }
    }
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// A registry that wants a bearer token, as Docker Hub, GHCR and most
/// hosted registries do: a proxy in front of an open `docker-registry`
/// that answers `/v2/…` without `Authorization: Bearer TOKEN` with a 401
/// and a `WWW-Authenticate: Bearer realm=…/token` challenge, and hands out
/// the token at `/token` for basic credentials only. Returns its address
/// and how many tokens it gave.
fn token_proxy(
    upstream: String,
    user_pass: &str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let basic = format!("Basic {}", base64(user_pass));
    let tokens = std::sync::Arc::new(AtomicUsize::new(0));
    let (h, t) = (host.clone(), tokens.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (host, basic, upstream, tokens) =
                (h.clone(), basic.clone(), upstream.clone(), t.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut r = BufReader::new(stream.try_clone()?);
                let mut line = String::new();
                r.read_line(&mut line)?;
                let mut head = Vec::new();
                loop {
                    let mut l = String::new();
                    r.read_line(&mut l)?;
                    if l.trim_end().is_empty() {
                        break;
                    }
                    head.push(l.trim_end().to_string());
                }
                let get = |k: &str| {
                    head.iter()
                        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(k)))
                        .map(|(_, v)| v.trim().to_string())
                        .unwrap_or_default()
                };
                let mut body = vec![0; get("content-length").parse().unwrap_or(0)];
                r.read_exact(&mut body)?;
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut w = stream;
                let reply = |w: &mut std::net::TcpStream, status: &str, extra: &str, body: &str| {
                    write!(
                        w,
                        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                if path.starts_with("/token") {
                    if get("authorization") == basic {
                        tokens.fetch_add(1, Ordering::SeqCst);
                        return reply(
                            &mut w,
                            "200 OK",
                            "",
                            r#"{"token":"tok-kiln","access_token":"tok-kiln","expires_in":300}"#,
                        );
                    }
                    return reply(
                        &mut w,
                        "401 Unauthorized",
                        "",
                        r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                    );
                }
                if get("authorization") != "Bearer tok-kiln" {
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"kiln-test\",scope=\"repository:private/busybox:pull\"\r\nDocker-Distribution-API-Version: registry/2.0\r\n"
                    );
                    return reply(
                        &mut w,
                        "401 Unauthorized",
                        &challenge,
                        r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
                    );
                }
                // Authorized: forward, one request per connection.
                let mut up = std::net::TcpStream::connect(&upstream)?;
                write!(up, "{}\r\nHost: {upstream}\r\n", line.trim_end())?;
                for l in &head {
                    let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                    if !["host", "authorization", "connection"].contains(&name.as_str()) {
                        write!(up, "{l}\r\n")?;
                    }
                }
                write!(up, "Connection: close\r\n\r\n")?;
                up.write_all(&body)?;
                let mut answer = Vec::new();
                up.read_to_end(&mut answer)?;
                let split = answer
                    .windows(4)
                    .position(|x| x == b"\r\n\r\n")
                    .unwrap_or(answer.len());
                let text = String::from_utf8_lossy(&answer[..split]).into_owned();
                let mut lines = text.split("\r\n");
                write!(
                    w,
                    "{}\r\n",
                    lines.next().unwrap_or("HTTP/1.1 502 Bad Gateway")
                )?;
                for l in lines.filter(|l| !l.to_ascii_lowercase().starts_with("connection:")) {
                    write!(w, "{l}\r\n")?;
                }
                write!(w, "Connection: close\r\n")?;
                // The blank line that ends the head, then the body.
                w.write_all(&answer[(split + 2).min(answer.len())..])?;
                w.flush()
            });
        }
    });
    (host, tokens)
}

#[test]
fn registries_that_want_a_bearer_token_get_one_from_the_docker_config_credentials() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let Some(reg) = Registry::start(None) else {
        return;
    };
    reg.push(&image, "private/busybox:1", None);
    let (proxy, tokens) = token_proxy(reg.host(), "kiln:kiln-test-pass");
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage app {{\n    from image=\"{proxy}/private/busybox:1\"\n}}\nexport {{\n    app to=\"out\"\n}}\n"
    ));
    let docker = tempfile::tempdir().unwrap();
    let build = |config: &str| {
        std::fs::write(docker.path().join("config.json"), config).unwrap();
        Command::new(kiln_bin())
            .args(["build", "--progress", "plain"])
            .current_dir(p.path())
            .env_remove("KILN_STATE_DIR")
            .env("DOCKER_CONFIG", docker.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    // Wrong credentials: no token, and an error that says where they come from.
    let wrong = format!(
        r#"{{"auths":{{"{proxy}":{{"auth":"{}"}}}}}}"#,
        base64("kiln:wrong")
    );
    let out = build(&wrong);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.json"), "{stderr}");
    assert_eq!(tokens.load(std::sync::atomic::Ordering::SeqCst), 0);
    let right = format!(
        r#"{{"auths":{{"{proxy}":{{"auth":"{}"}}}}}}"#,
        base64("kiln:kiln-test-pass")
    );
    let out = build(&right);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(p.exists("out/bin/busybox"));
    assert!(tokens.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// Standard base64, as the Docker config file holds credentials.
pub(crate) fn base64(text: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Write a blob into a layout; returns its digest and size.
pub(crate) fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = sha256_hex(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// A gzipped layer of `(path, contents)` files.
pub(crate) fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Written raw: the tar crate refuses `..`, as a hostile layer would not.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, body.as_bytes()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A manifest over `layers` with a config for `arch`; returns its
/// descriptor JSON (digest, size, media type).
pub(crate) fn manifest(layout: &Path, arch: &str, layers: &[Vec<u8>]) -> serde_json::Value {
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for l in layers {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&l[..]), &mut raw).unwrap();
        diff_ids.push(format!("sha256:{}", sha256_hex(&raw)));
        let (d, size) = blob(layout, l);
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": size
        }));
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": [format!("ARCH={arch}")]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (cd, cs) = blob(layout, config.to_string().as_bytes());
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs
    });
    let (md, ms) = blob(layout, m.to_string().as_bytes());
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": ms,
        "platform": {"os": "linux", "architecture": arch}
    })
}

/// Write `index.json` naming `desc` as `tag`.
pub(crate) fn tag(layout: &Path, tag: &str, mut desc: serde_json::Value) {
    desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[test]
fn an_index_gives_the_machine_s_platform_or_the_one_asked_for() {
    let p = Project::new();
    let layout = p.path().join("multi");
    let arches = [host_arch(), "s390x"];
    let mut entries = Vec::new();
    for arch in arches {
        entries.push(manifest(&layout, arch, &[layer(&[("arch", arch)])]));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    });
    let (d, s) = blob(&layout, index.to_string().as_bytes());
    tag(
        &layout,
        "1",
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s}),
    );
    p.spec(
        "kiln 1\nstage app {\n    from image=\"oci:multi:1\"\n}\nexport {\n    app to=\"out\"\n}\n",
    );
    p.build(&[]).ok();
    assert_eq!(p.read("out/arch"), host_arch());
    p.build(&["--platform", "linux/s390x"]).ok();
    assert_eq!(p.read("out/arch"), "s390x");
    let r = p.kiln(&["build", "--platform", "linux/riscv64"]);
    r.code(3);
    assert!(r.stderr.contains("no linux/riscv64"), "{}", r.stderr);
    assert!(r.stderr.contains("--platform OS/ARCH"), "{}", r.stderr);
    assert!(r.stderr.contains("s390x"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln.kdl:3:16"), "{}", r.stderr);
    // A `run` step cannot run another machine's programs: said before running.
    if sandbox_ready() {
        p.spec("kiln 1\nstage app {\n    from image=\"oci:multi:1\"\n    run \"true\"\n}\n");
        let r = p.kiln(&["build", "--platform", "linux/s390x"]);
        r.code(2);
        assert!(r.stderr.contains("kiln.kdl:4:5"), "{}", r.stderr);
        assert!(r.stderr.contains("linux/s390x"), "{}", r.stderr);
    }
}

#[test]
fn a_hostile_layer_is_refused_naming_the_image_and_layer() {
    let p = Project::new();
    let layout = p.path().join("evil");
    let bad = layer(&[("ok.txt", "fine"), ("../../escaped.txt", "gotcha")]);
    let bad_digest = sha256_hex(&bad);
    let desc = manifest(&layout, host_arch(), &[bad]);
    tag(&layout, "1", desc.clone());
    p.spec(
        "kiln 1\nstage app {\n    from image=\"oci:evil:1\"\n}\nexport {\n    app to=\"out\"\n}\n",
    );
    let r = p.kiln(&["build"]);
    r.code(3);
    assert!(r.stderr.contains("kiln.kdl:3:16"), "{}", r.stderr);
    assert!(r.stderr.contains("oci:evil:1"), "{}", r.stderr);
    assert!(r.stderr.contains(&bad_digest), "{}", r.stderr);
    assert!(r.stderr.contains(".."), "{}", r.stderr);
    assert!(!p.exists("out"));
    assert!(!p.path().parent().unwrap().join("escaped.txt").exists());
}

#[test]
fn the_image_config_is_inherited_by_the_stage() {
    if !sandbox_ready() {
        return;
    }
    let Some((_keep, image)) = variant(&[
        "--config.env",
        "FROM_IMAGE=yes",
        "--config.workingdir",
        "/home/app",
        "--config.user",
        "app",
    ]) else {
        return;
    };
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage app {{\n    from image=\"{image}\"\n    run \"echo $FROM_IMAGE $(id -un) $(pwd) > inherited\"\n}}\nexport {{\n    app to=\"out\"\n}}\n"
    ));
    p.build(&[]).ok();
    assert_eq!(p.read("out/home/app/inherited"), "yes app /home/app\n");
}

#[test]
fn a_name_tagged_by_another_project_never_replaces_a_locked_image() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let Some(reg) = Registry::start(None) else {
        return;
    };
    reg.push(&image, "busybox:1", None);
    let reference = format!("{}/busybox:1", reg.host());
    let locked = Project::bare();
    locked.spec(&format!(
        "kiln 1\nstage app {{\n    from image=\"{reference}\"\n    run \"ls /bin/busybox > /seen\"\n}}\nexport {{\n    app to=\"out\"\n}}\n"
    ));
    locked.build(&[]).ok();
    assert!(locked.read("kiln.lock").contains(&reference));
    // Another project on the machine names its own image as the reference.
    let other = locked.beside();
    other.spec("kiln 1\nstage app {\n    write \"/seen\" \"not busybox\\n\"\n}\n");
    other.kiln(&["build", "-t", &reference]).ok();
    // The locked project still builds on the image its lock pins.
    let r = locked.build(&["--locked"]);
    r.ok();
    assert_eq!(
        r.events_of("image_resolved")[0]["how"],
        "locked",
        "{}",
        r.stderr
    );
    assert_eq!(locked.read("out/seen"), "/bin/busybox\n");
    // A project without a pin takes the local name first, as Docker does.
    let fresh = locked.beside();
    fresh.spec(&format!(
        "kiln 1\nstage app {{\n    from image=\"{reference}\"\n}}\nexport {{\n    app to=\"out\"\n}}\n"
    ));
    let r = fresh.build(&[]);
    r.ok();
    assert_eq!(
        r.events_of("image_resolved")[0]["how"],
        "local",
        "{}",
        r.stderr
    );
    assert_eq!(fresh.read("out/seen"), "not busybox\n");
}

/// An image without layers, as Docker writes one (`FROM scratch` with
/// only `LABEL`/`CMD`): its config has no `diff_ids` and `docker save`
/// lists its layers as `null`. kiln builds on it, as on an empty tree.
#[test]
fn an_image_without_layers_is_an_empty_base() {
    let p = Project::new();
    let config = r#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/x"],"Labels":{"a":"b"}},"rootfs":{"type":"layers"}}"#;
    p.file("img/c.json", config);
    p.file(
        "img/manifest.json",
        r#"[{"Config":"c.json","RepoTags":["zero:1"],"Layers":null}]"#,
    );
    let tar = std::process::Command::new("tar")
        .args(["-cf", "../zero.tar", "c.json", "manifest.json"])
        .current_dir(p.path().join("img"))
        .status()
        .unwrap();
    assert!(tar.success());
    p.spec(
        "kiln 1\nstage app {\n    from image=\"docker-archive:zero.tar\"\n    write \"/hello\" \"hi\\n\"\n}\nexport {\n    app to=\"out\"\n}\n",
    );
    p.build(&[]).ok();
    let out = listing(&p.path().join("out"));
    assert_eq!(out.keys().collect::<Vec<_>>(), ["hello"], "{out:?}");
}
