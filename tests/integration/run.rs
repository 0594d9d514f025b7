//! `run` steps in bubblewrap over an overlay of the stage's tree, on the
//! busybox test image: what a command changes is the new tree (deletions,
//! owners and modes included), the sandbox holds (no host files, no
//! network unless asked, no process left behind), and mounts, secrets,
//! timeouts and failures behave.

use crate::harness::{Project, kiln_bin};
use crate::images_helper::{busybox, processes, sandbox_ready};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

/// A project whose `kiln.kdl` is `body` with `IMAGE` replaced by the
/// busybox image; `None` when the sandbox cannot run here.
fn project(body: &str) -> Option<Project> {
    if !sandbox_ready() {
        return None;
    }
    let image = busybox()?;
    let p = Project::new();
    p.spec(&body.replace("IMAGE", &image));
    Some(p)
}

#[test]
fn a_command_s_changes_make_the_new_tree() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "echo hi > /greeting && mkdir -p /a/b && rm /bin/vi && rm -rf /var && ln -s greeting /link"
}
export {
    app to="out"
}
"#,
    ) else {
        return;
    };
    let r = p.build(&[]);
    r.ok();
    assert_eq!(p.read("out/greeting"), "hi\n");
    assert!(p.path().join("out/a/b").is_dir());
    assert!(!p.exists("out/bin/vi"), "a deleted file is gone");
    assert!(!p.exists("out/var"), "a deleted directory is gone");
    assert!(p.exists("out/bin/sh") && p.exists("out/etc/passwd"));
    assert_eq!(
        std::fs::read_link(p.path().join("out/link")).unwrap(),
        std::path::Path::new("greeting")
    );
    // The sandbox's own mount points are not the command's changes.
    assert!(!p.exists("out/proc") && !p.exists("out/dev"));
    assert_eq!(r.events_of("image_unpacked").len(), 1, "{}", r.stderr);
    assert_eq!(r.events_of("image_resolved")[0]["how"], "local");
    // Nothing changed: nothing runs, and the image is not unpacked again.
    let again = p.build(&[]);
    again.ok();
    assert!(again.ran().is_empty(), "{:?}", again.ran());
    assert!(again.events_of("image_unpacked").is_empty());
}

#[test]
fn a_second_project_on_the_same_image_does_no_layer_work() {
    let Some(p) = project("kiln 1\nstage a {\n    from image=\"IMAGE\"\n    run \"touch /a\"\n}\n")
    else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let s = state.path().to_str().unwrap();
    let first = p.build(&["--state-dir", s]);
    first.ok();
    assert_eq!(first.events_of("image_unpacked").len(), 1);
    let q =
        project("kiln 1\nstage b {\n    from image=\"IMAGE\"\n    run \"touch /b\"\n}\n").unwrap();
    let second = q.build(&["--state-dir", s]);
    second.ok();
    assert!(
        second.events_of("image_unpacked").is_empty(),
        "{}",
        second.stderr
    );
    assert_eq!(second.ran().len(), 1);
}

#[test]
fn owners_and_modes_a_command_sets_are_kept() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "touch /f && chown 1000:50 /f && chmod 4750 /f && mkdir /d && chown app:staff /d && chmod 1777 /d && ln /f /hard"
}
export {
    app to="out"
}
"#,
    ) else {
        return;
    };
    p.build(&[]).ok();
    let f = std::fs::symlink_metadata(p.path().join("out/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 50));
    assert_eq!(f.permissions().mode() & 0o7777, 0o4750);
    let d = std::fs::symlink_metadata(p.path().join("out/d")).unwrap();
    assert_eq!((d.uid(), d.gid()), (1000, 50));
    assert_eq!(d.permissions().mode() & 0o7777, 0o1777);
    let h = std::fs::symlink_metadata(p.path().join("out/hard")).unwrap();
    assert_eq!((h.uid(), h.gid()), (1000, 50));
}

#[test]
fn user_workdir_and_environment_are_the_stage_s_and_nothing_of_the_host() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    env GREETING="hello"
    workdir "/home/app"
    user "app"
    run "id -u > uid; id -G > groups; pwd > pwd; echo \"$HOME|$GREETING|$STEP|$PATH|$LEAK\" > env" {
        env STEP="step-only"
    }
    run "echo \"[$STEP]\" > after"
}
export {
    app to="out"
}
"#,
    ) else {
        return;
    };
    let out = Command::new(kiln_bin())
        .args(["build", "--progress", "plain"])
        .current_dir(p.path())
        .env("LEAK", "from-the-host")
        .env_remove("KILN_STATE_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.read("out/home/app/uid"), "1000\n");
    let groups = p.read("out/home/app/groups");
    assert!(
        groups.split_whitespace().any(|g| g == "50"),
        "supplementary groups from /etc/group: {groups}"
    );
    assert_eq!(p.read("out/home/app/pwd"), "/home/app\n");
    assert_eq!(
        p.read("out/home/app/env"),
        "/home/app|hello|step-only|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|\n"
    );
    assert_eq!(
        p.read("out/home/app/after"),
        "[]\n",
        "step env is the step's"
    );
    let f = std::fs::symlink_metadata(p.path().join("out/home/app/uid")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 1000));
}

#[test]
fn exec_form_and_a_stage_shell() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "/bin/sh" "-c" "echo $0 > /exec" "zero" exec=#true
    shell "/bin/sh" "-ec"
    run "false; echo not-reached > /no"
}
"#,
    ) else {
        return;
    };
    // `-e` from the stage's shell stops the script at `false`.
    let r = p.build(&[]);
    r.code(1);
    assert!(r.stderr.contains("status 1"), "{}", r.stderr);
}

#[test]
fn a_failing_command_is_located_with_its_output() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "echo first line; echo to stderr >&2; exit 3"
}
"#,
    ) else {
        return;
    };
    let r = p.kiln(&["build"]);
    r.code(1);
    assert!(r.stderr.contains("kiln.kdl:4:5"), "{}", r.stderr);
    assert!(r.stderr.contains("status 3"), "{}", r.stderr);
    assert!(r.stderr.contains("first line"), "{}", r.stderr);
    assert!(r.stderr.contains("to stderr"), "{}", r.stderr);
    let logs: Vec<_> = std::fs::read_dir(p.path().join(".kiln/logs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(logs.len(), 1);
    let log = std::fs::read_to_string(logs[0].path()).unwrap();
    assert!(
        log.contains("first line") && log.contains("to stderr"),
        "{log}"
    );
}

#[test]
fn the_sandbox_holds_host_files_writes_and_processes() {
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("host-secret");
    std::fs::write(&secret, "host bytes").unwrap();
    let marker = host.path().join("written-from-the-sandbox");
    let Some(p) = project(&format!(
        r#"kiln 1
stage app {{
    from image="IMAGE"
    run "cat {secret} > /read 2>/dev/null || echo unreadable > /read; mkdir -p {dir} && echo pwned > {marker}; setsid sleep 4242 & sleep 4243 & echo started"
}}
export {{
    app to="out"
}}
"#,
        secret = secret.display(),
        dir = host.path().display(),
        marker = marker.display(),
    )) else {
        return;
    };
    p.build(&[]).ok();
    assert_eq!(p.read("out/read"), "unreadable\n");
    assert!(!marker.exists(), "a write went to the host");
    // The write landed in the tree instead.
    let inside = format!("out{}", marker.display());
    assert_eq!(p.read(&inside), "pwned\n");
    assert!(
        processes(&["sleep", "4242"]).is_empty(),
        "a process was left behind"
    );
    assert!(
        processes(&["sleep", "4243"]).is_empty(),
        "a process was left behind"
    );
}

/// A one-shot HTTP server on loopback; returns its port.
fn serve_once(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(4) {
            let mut conn = conn;
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}\n",
                body.len() + 1
            );
        }
    });
    port
}

#[test]
fn no_network_unless_asked_and_asking_is_marked() {
    let port = serve_once("reached");
    let Some(p) = project(&format!(
        r#"kiln 1
stage closed {{
    from image="IMAGE"
    run "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {port} > /got || echo blocked > /got"
}}
stage open {{
    from image="IMAGE"
    run "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {port} | tail -n 1 > /got" network="host"
}}
export {{
    closed to="closed"
    open to="open"
}}
"#
    )) else {
        return;
    };
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.ok();
    assert_eq!(p.read("closed/got"), "blocked\n");
    assert_eq!(p.read("open/got"), "reached\n");
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("#open [1]") && l.contains("not hermetic")),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr
            .lines()
            .any(|l| l.contains("#closed [1]") && l.contains("not hermetic")),
        "{}",
        r.stderr
    );
    let explain = p.kiln(&["explain"]);
    explain.ok();
    assert!(
        explain
            .stdout
            .contains("not hermetic: it could reach the network"),
        "{}",
        explain.stdout
    );
}

#[test]
fn a_timeout_kills_the_whole_process_tree() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "sleep 4244 & sleep 4245" timeout="1s"
}
"#,
    ) else {
        return;
    };
    let r = p.kiln(&["build"]);
    r.code(1);
    assert!(r.stderr.contains("kiln.kdl:4:5"), "{}", r.stderr);
    assert!(r.stderr.contains("1s"), "{}", r.stderr);
    assert!(processes(&["sleep", "4244"]).is_empty());
    assert!(processes(&["sleep", "4245"]).is_empty());
}

#[test]
fn cache_mounts_persist_across_builds_outside_the_tree_and_key() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    copy "input.txt" "/input.txt"
    run "cat /input.txt >> /cache/seen; cp /cache/seen /seen" {
        mount "type=cache,target=/cache,id=counter"
    }
}
export {
    app to="out"
}
"#,
    ) else {
        return;
    };
    p.file("input.txt", "1\n");
    p.build(&[]).ok();
    assert_eq!(p.read("out/seen"), "1\n");
    assert!(!p.exists("out/cache"), "the cache mount is not in the tree");
    p.file("input.txt", "2\n");
    p.build(&[]).ok();
    assert_eq!(p.read("out/seen"), "1\n2\n");
    // Back to the first input: the step's key is the first build's, so it
    // is cached; the cache directory is not part of the key.
    p.file("input.txt", "1\n");
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().is_empty(), "{:?}", r.ran());
    assert_eq!(p.read("out/seen"), "1\n");
}

#[test]
fn bind_and_tmpfs_mounts_leave_no_trace() {
    let Some(p) = project(
        r#"kiln 1
stage data {
    write "/data/x" "from data\n"
}
stage app {
    from image="IMAGE"
    run "cat /mnt/x > /copied; (echo changed > /mnt/x) 2>/dev/null && echo writable > /ro || echo read-only > /ro" {
        mount "type=bind,from=data,source=/data,target=/mnt"
    }
    run "echo changed > /rw/x && cat /rw/x > /rw-seen" {
        mount "type=bind,from=data,source=/data,target=/rw,rw"
    }
    run "cat /ctx/hello.txt > /from-context" {
        mount "type=bind,source=.,target=/ctx"
    }
    run "echo x > /scratch/f && ls /scratch > /listed" {
        mount "type=tmpfs,target=/scratch"
    }
}
export {
    app to="out"
    data to="data-out"
}
"#,
    ) else {
        return;
    };
    p.file("hello.txt", "hello\n");
    p.build(&[]).ok();
    assert_eq!(p.read("out/copied"), "from data\n");
    assert_eq!(p.read("out/ro"), "read-only\n");
    assert_eq!(p.read("out/rw-seen"), "changed\n");
    assert_eq!(p.read("out/from-context"), "hello\n");
    assert_eq!(p.read("out/listed"), "f\n");
    for gone in ["out/mnt", "out/rw", "out/ctx", "out/scratch"] {
        assert!(!p.exists(gone), "{gone} is in the tree");
    }
    assert_eq!(
        p.read("data-out/data/x"),
        "from data\n",
        "rw writes are thrown away"
    );
}

/// Every file below `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if m.is_dir() {
                stack.push(path);
            } else if m.is_file()
                && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn secrets_reach_the_command_and_nothing_else() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "test \"$(cat /run/secrets/token)\" = \"$(printf 's3cr3t-file-%s' VALUE)\" && test \"$TOKEN_ENV\" = \"$(printf 's3cr3t-env-%s' VALUE)\" && echo ok > /ok; cat /run/secrets/token; echo \"$TOKEN_ENV\" >&2" {
        mount "type=secret,id=token"
        mount "type=secret,id=other,env=TOKEN_ENV"
    }
}
export {
    app to="out"
    app to="out.tar" format="tar"
}
"#,
    ) else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("token.txt");
    std::fs::write(&file, "s3cr3t-file-VALUE").unwrap();
    let out = Command::new(kiln_bin())
        .args(["build", "--progress", "plain", "--secret"])
        .arg(format!("id=token,src={}", file.display()))
        .args(["--secret", "id=other,env=OTHER_SECRET"])
        .env("OTHER_SECRET", "s3cr3t-env-VALUE")
        .env_remove("KILN_STATE_DIR")
        .current_dir(p.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(p.read("out/ok"), "ok\n");
    assert!(
        !p.exists("out/run/secrets"),
        "the secret's mount point stays out"
    );
    for needle in ["s3cr3t-file-VALUE", "s3cr3t-env-VALUE"] {
        let found = files_containing(p.path(), needle.as_bytes());
        assert!(found.is_empty(), "{needle} found in {found:?}");
        assert!(!stderr.contains(needle), "{needle} in the progress output");
    }
    // As in Docker, a secret not given is left out, but kiln says so.
    let r = p.kiln(&["build", "--no-cache", "--progress", "plain"]);
    r.ok();
    assert!(
        r.stderr.contains("the secret `token` was not given"),
        "{}",
        r.stderr
    );
    // A required one fails the step, at its mount.
    let spec = p
        .read("kiln.kdl")
        .replace("id=token\"", "id=token,required=true\"");
    p.spec(&spec);
    let r = p.kiln(&["build"]);
    r.code(2);
    assert!(r.stderr.contains("kiln.kdl:5:15"), "{}", r.stderr);
    assert!(r.stderr.contains("--secret id=token"), "{}", r.stderr);
}

#[test]
fn ssh_forwards_the_agent_socket() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "test -S \"$SSH_AUTH_SOCK\" && echo socket > /ssh" {
        mount "type=ssh"
    }
}
export {
    app to="out"
}
"#,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = Command::new(kiln_bin())
        .args(["build", "--progress", "plain", "--ssh", "default"])
        .env("SSH_AUTH_SOCK", &sock)
        .env_remove("KILN_STATE_DIR")
        .current_dir(p.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.read("out/ssh"), "socket\n");
}

#[test]
fn host_sandbox_sees_the_host_and_keys_named_host_inputs() {
    // Not under /tmp, which the sandbox has its own of (nor the target
    // directory when it lies there).
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let base = if target.starts_with("/tmp") {
        std::path::Path::new("/var/tmp")
    } else {
        target
    };
    let tools = tempfile::tempdir_in(base).unwrap();
    let tool = tools.path().join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho v1\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    if !sandbox_ready() {
        return;
    }
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage app {{
    workdir "/kiln-host-step"
    write "/kiln-host-step/in.txt" "input\n"
    run "{tool} > out.txt; cat in.txt >> out.txt; test -x /bin/sh && echo host-sh >> out.txt" sandbox="host" {{
        host-inputs "{tool}"
    }}
}}
export {{
    app to="out"
}}
"#,
        tool = tool.display()
    ));
    let r = p.kiln(&["build", "--progress", "plain"]);
    r.ok();
    assert!(
        r.stderr.contains("not hermetic: it saw the host's files"),
        "{}",
        r.stderr
    );
    assert_eq!(p.read("out/kiln-host-step/out.txt"), "v1\ninput\nhost-sh\n");
    // The same tool: cached. A changed tool: the step runs again.
    let again = p.build(&[]);
    again.ok();
    assert!(again.ran().is_empty(), "{:?}", again.ran());
    std::fs::write(&tool, "#!/bin/sh\necho v2\n").unwrap();
    let changed = p.build(&[]);
    changed.ok();
    assert_eq!(changed.ran().len(), 1);
    assert_eq!(p.read("out/kiln-host-step/out.txt"), "v2\ninput\nhost-sh\n");
    let explain = p.kiln(&["explain"]);
    assert!(explain.stdout.contains("tool.sh"), "{}", explain.stdout);
}

#[test]
fn dockerfile_heredoc_runs_and_the_import_builds_the_same() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let p = Project::new();
    p.file(
        "Dockerfile",
        &format!(
            "FROM {image}\nARG N=3\nRUN <<EOF\nset -e\necho \"heredoc $((N + 1))\" > /h\nEOF\nRUN cat <<A > /a && cat <<B > /b\nfirst\nA\nsecond\nB\n"
        ),
    );
    p.kiln(&["build", "-o", "direct", "--progress", "plain"])
        .ok();
    assert_eq!(p.read("direct/h"), "heredoc 4\n");
    assert_eq!(p.read("direct/a"), "first\n");
    assert_eq!(p.read("direct/b"), "second\n");
    p.kiln(&["import", "-o", "kiln.kdl"]).ok();
    let r = p.kiln(&[
        "build",
        "-f",
        "kiln.kdl",
        "--target",
        "stage-0",
        "-o",
        "imported",
        "--progress",
        "plain",
    ]);
    r.ok();
    assert!(r.stderr.contains("build finished"), "{}", r.stderr);
    assert_eq!(p.read("imported/h"), "heredoc 4\n");
}

/// What `run` steps keep on disk, under the one id mapping of this machine.
pub(crate) fn sandbox_ids(state: &std::path::Path) -> std::path::PathBuf {
    let mut found: Vec<_> = std::fs::read_dir(state.join("sandbox"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

#[test]
fn gc_trims_image_blobs_trees_on_disk_and_cache_mounts() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    run "echo x > /cache/x; echo built > /built" {
        mount "type=cache,target=/cache"
    }
}
export {
    app to="out"
}
"#,
    ) else {
        return;
    };
    p.build(&[]).ok();
    let state = p.path().join(".kiln");
    let blobs = state.join("images/blobs/sha256");
    assert!(count(&blobs) >= 3, "manifest, config and layer are stored");
    let ids = sandbox_ids(&state);
    assert!(count(&ids.join("rootfs/l")) >= 1);
    assert!(count(&ids.join("cache")) >= 1);
    // Without a budget: what the kept entries use stays.
    p.kiln(&["gc"]).ok();
    assert!(count(&blobs) >= 3);
    assert!(count(&ids.join("rootfs/l")) >= 1);
    assert!(count(&ids.join("cache")) >= 1);
    // With a budget, the trees on disk no kept entry has and the cache
    // mounts go first, and image blobs go with the image trees evicted.
    let r = p.kiln(&["gc", "--max-size", "1"]);
    r.ok();
    assert_eq!(count(&ids.join("rootfs/l")), 0);
    assert_eq!(count(&ids.join("rootfs/t")), 0);
    assert_eq!(count(&ids.join("cache")), 0);
    assert_eq!(count(&blobs), 0, "{}", r.stdout);
    // And the next build has all it needs again.
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    p.build(&["--no-cache"]).ok();
    assert_eq!(p.read("out/built"), "built\n");
}

/// Give the project to `nobody` and run kiln there as `nobody` (65534),
/// with a home of its own in the project.
pub(crate) fn kiln_as_nobody(p: &Project, args: &[&str]) -> crate::harness::Run {
    fn chown_all(p: &std::path::Path) {
        use std::os::unix::fs::MetadataExt;
        // Only what is not nobody's yet: a change of owner is a change of
        // the file (its ctime), which tests of what a build wrote watch.
        let m = p.symlink_metadata().unwrap();
        if (m.uid(), m.gid()) != (65534, 65534) {
            std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
        }
        if p.symlink_metadata().unwrap().is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                chown_all(&e.unwrap().path());
            }
        }
    }
    std::fs::create_dir_all(p.path().join("home")).unwrap();
    chown_all(p.path());
    // The temporary directory's parents are root's, and searchable.
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(kiln_bin())
        .args(args)
        .current_dir(p.path())
        .env("HOME", p.path().join("home"))
        .env_remove("KILN_STATE_DIR")
        .env_remove("SOURCE_DATE_EPOCH")
        .env("NO_COLOR", "1")
        .output()
        .expect("run kiln as nobody")
        .into()
}

const WITHOUT_ROOT: &str = r#"kiln 1
stage app {
    from image="IMAGE"
    run "echo hi > /greeting && mkdir -p /a/b && rm /bin/vi && rm -rf /var && ln -s greeting /link && echo more >> /etc/passwd && chmod 600 /etc/group && id -u > /uid && chown 1000:50 /etc/shadow 2>/dev/null; true"
    run "echo 1 >> /cache/seen && cp /cache/seen /seen && touch /scratch/x" {
        mount "type=cache,target=/cache,id=counter"
        mount "type=tmpfs,target=/scratch"
    }
    run "ln /greeting /hard"
    run "echo more >> /hard && cat /greeting > /after"
}
export {
    app to="out"
}
"#;

#[test]
fn without_root_a_command_runs_on_a_copy_and_makes_the_same_tree() {
    let (Some(as_root), Some(rootless)) = (project(WITHOUT_ROOT), project(WITHOUT_ROOT)) else {
        return;
    };
    let digest = |r: &crate::harness::Run| {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix("app\t"))
            .map(String::from)
            .unwrap_or_else(|| panic!("no result in {}", r.stdout))
    };
    let r = as_root.build(&[]);
    r.ok();
    let want = digest(&r);
    let r = kiln_as_nobody(&rootless, &["build", "--progress", "json"]);
    r.ok();
    // Owners included: what existed keeps its owner, a new path is root's,
    // and the command's `chown` to another user fails without root.
    assert_eq!(digest(&r), want, "{}", r.stderr);
    // The log says how the command ran.
    let notices = r.events_of("notice");
    assert!(
        notices.iter().any(|n| n["message"]
            .as_str()
            .is_some_and(|m| m.contains("private copy of the stage's tree"))),
        "{notices:?}"
    );
    assert_eq!(rootless.read("out/greeting"), "hi\n");
    assert_eq!(rootless.read("out/uid"), "0\n", "the command runs as root");
    assert!(rootless.path().join("out/a/b").is_dir());
    assert!(!rootless.exists("out/bin/vi") && !rootless.exists("out/var"));
    assert!(rootless.read("out/etc/passwd").ends_with("more\n"));
    let group = std::fs::symlink_metadata(rootless.path().join("out/etc/group")).unwrap();
    assert_eq!(group.permissions().mode() & 0o7777, 0o600);
    assert!(!rootless.exists("out/proc") && !rootless.exists("out/dev"));
    assert_eq!(rootless.read("out/seen"), "1\n");
    // Consecutive commands start from the previous one's copy only when it
    // is exactly its tree: a hard link is two files in the tree, so the
    // next command finds two.
    assert_eq!(rootless.read("out/after"), "hi\n");
    assert_eq!(rootless.read("out/hard"), "hi\nmore\n");
    assert!(!rootless.exists("out/cache") && !rootless.exists("out/scratch"));
    // Cached like any other step.
    let again = kiln_as_nobody(&rootless, &["build", "--progress", "json"]);
    again.ok();
    assert!(again.ran().is_empty(), "{:?}", again.ran());
}

#[test]
fn without_root_another_user_is_refused_with_the_reason() {
    let Some(p) = project(
        r#"kiln 1
stage app {
    from image="IMAGE"
    user "app"
    run "touch /tmp/x"
}
"#,
    ) else {
        return;
    };
    let r = kiln_as_nobody(&p, &["build"]);
    r.code(3);
    assert!(
        r.stderr.contains("kiln::run::user-without-root"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("user 1000 needs kiln to run as root"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("run \"touch /tmp/x\""), "{}", r.stderr);
}

#[test]
fn a_test_report_is_exported_with_the_exit_status_when_the_tests_fail() {
    // The recipe of the language reference: the test step records its
    // status instead of failing, a later stage fails the build on it.
    let Some(p) = project(
        r#"kiln 1
stage tests {
    from image="IMAGE"
    run "mkdir -p /report && (echo '1 passed, 1 failed' > /report/summary.txt; exit 1); echo $? > /report/status"
}
stage check {
    from tests
    run "exit $(cat /report/status)"
}
export {
    tests to="report" when="always"
    check to="out"
}
"#,
    ) else {
        return;
    };
    let r = p.build(&[]);
    r.code(1);
    assert!(r.stderr.contains("exited with status 1"), "{}", r.stderr);
    assert_eq!(p.read("report/report/summary.txt"), "1 passed, 1 failed\n");
    assert_eq!(p.read("report/report/status"), "1\n");
    assert!(!p.exists("out"));
}

#[test]
fn a_command_sees_the_same_times_whatever_the_cache_held() {
    // What a command finds on disk must not depend on whether the step
    // before it ran in this build (its upper directory reused) or came
    // from the cache (its tree written out): every time is the epoch.
    let spec = |n: u32| {
        format!(
            "kiln 1\nstage s {{\n    from image=\"IMAGE\"\n    run \"mkdir -p /d/e /out && echo x > /d/f && ln -s f /d/l\"\n    run \"stat -c '%n %Y' / /d /d/e /d/f > /out/times; busybox stat -c '%n %Y' /d/l >> /out/times # {n}\"\n}}\nexport {{\n    s to=\"out\"\n}}\n"
        )
    };
    let Some(p) = project(&spec(1)) else {
        return;
    };
    p.build(&[]).ok();
    let ran_after = p.read("out/out/times");
    // The first step from the cache, its tree written out afresh.
    std::fs::remove_dir_all(sandbox_ids(&p.path().join(".kiln")).join("rootfs")).unwrap();
    p.spec(
        &std::fs::read_to_string(p.path().join("kiln.kdl"))
            .unwrap()
            .replace("# 1", "# 2"),
    );
    let r = p.build(&[]);
    r.ok();
    assert_eq!(r.ran().len(), 1, "{:?}", r.ran());
    let written_out = p.read("out/out/times");
    assert_eq!(ran_after, written_out);
    assert!(ran_after.lines().all(|l| l.ends_with(" 0")), "{ran_after}");
}
