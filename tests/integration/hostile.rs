//! Hostile `run` steps: what a downloaded spec or Dockerfile tries against
//! the machine that builds it. A probe program (`tests/reliability/
//! hostile-probe.c`) is compiled and run by a step on the Debian test
//! image, as root (the sandbox's root, an unprivileged range of the
//! host's) and without root, with descriptors planted in kiln's caller;
//! cache mounts are given setuid files and device nodes; a build is killed
//! in the middle of a command. Nothing may reach the host.

use crate::harness::{Project, kiln_bin};
use crate::images_helper::{all_images, busybox, sandbox_ready};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

const PROBE: &str = include_str!("../reliability/hostile-probe.c");

/// The probe's lines, checked: every attempt held, what builds need works.
#[track_caller]
fn check_probe(out: &str) {
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("probe ")).collect();
    let bad: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("ESCAPED") || l.contains("FAILED"))
        .collect();
    assert!(bad.is_empty(), "the sandbox let these through:\n{}", out);
    let held = lines.iter().filter(|l| l.ends_with(" held")).count();
    assert!(held >= 35, "only {held} attempts were made:\n{out}");
    for works in ["threads", "fork", "clone3-falls-back"] {
        assert!(
            lines.contains(&format!("probe {works} works").as_str()),
            "{works} must keep working:\n{out}"
        );
    }
    assert!(out.contains("probe done: 0 escaped"), "{out}");
}

/// A project that compiles and runs the probe on the Debian image.
fn probe_project() -> Option<Project> {
    if !sandbox_ready() {
        return None;
    }
    let images = all_images()?;
    let p = Project::new();
    p.file("ctx/probe.c", PROBE);
    p.spec(&format!(
        r#"kiln 1
arg CANARY default="0"
context src path="ctx"
stage probe {{
    from image="oci:{}/debian:12"
    copy "probe.c" "/src/" context=src
    run "gcc -O1 -o /usr/local/bin/probe /src/probe.c -lpthread"
    run "probe ${{CANARY}} > /probe.out 2>&1; echo exit $? >> /probe.out"
}}
export {{
    probe to="out"
}}
"#,
        images.display()
    ));
    Some(p)
}

/// A host process the probe must not reach.
struct Canary(std::process::Child);

impl Canary {
    fn start() -> Canary {
        let c = Canary(
            Command::new("bash")
                .args(["-c", "exec -a kiln-canary sleep 600"])
                .spawn()
                .expect("start the canary"),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !canary_alive(&c) {
            assert!(
                std::time::Instant::now() < deadline,
                "the canary did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_probe_finds_no_way_out_as_root() {
    let Some(p) = probe_project() else { return };
    let canary = Canary::start();
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    // Descriptors kiln's caller leaves open (a directory of the host's,
    // a file) must not reach the command.
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"exec 78</ 10</etc/hostname 251>/dev/null; exec "$0" "$@""#)
        .arg(kiln_bin())
        .args(["build", "--progress", "plain", "--arg"])
        .arg(format!("CANARY={}", canary.0.id()))
        .current_dir(p.path())
        .env_remove("KILN_STATE_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = p.read("out/probe.out");
    check_probe(&report);
    assert!(report.contains("probe host-process held"), "{report}");
    assert!(report.contains("exit 0"), "{report}");
    // Nothing of the host changed.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        hostname
    );
    assert!(canary_alive(&canary));
}

fn canary_alive(c: &Canary) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", c.0.id()))
        .is_ok_and(|b| b.starts_with(b"kiln-canary"))
}

#[test]
fn the_probe_finds_no_way_out_without_root() {
    let Some(p) = probe_project() else { return };
    // The image layouts are the test images', readable by all.
    let r = crate::run::kiln_as_nobody(&p, &["build", "--progress", "plain"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    check_probe(&p.read("out/probe.out"));
}

#[test]
fn proc_knobs_are_read_only_and_masked_on_busybox() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else { return };
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage s {{
    from image="{image}"
    run "for f in /proc/sys/kernel/core_pattern /proc/sys/vm/drop_caches /proc/sysrq-trigger /proc/sys/kernel/hostname; do if (echo x > $f) 2>/dev/null; then echo wrote $f; fi; done > /result; wc -c < /proc/kcore >> /result 2>/dev/null; grep -c '' /proc/self/mountinfo > /mounts"
}}
export {{
    s to="out"
}}
"#
    ));
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    p.build(&[]).ok();
    let result = p.read("out/result");
    assert!(!result.contains("wrote"), "{result}");
    if std::path::Path::new("/proc/kcore").exists() {
        assert_eq!(result.trim(), "0", "/proc/kcore reads as nothing: {result}");
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        core_pattern
    );
}

#[test]
fn cache_mounts_keep_nothing_usable_on_the_host() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else { return };
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage s {{
    from image="{image}"
    run "cp /bin/busybox /c/sh && chmod 4755 /c/sh && ls -ln /c/sh > /setuid; mknod /c/vda b 254 0 2>/dev/null && chmod 666 /c/vda; ls /c > /listed" {{
        mount "type=cache,target=/c,id=hostile"
    }}
}}
export {{
    s to="out"
}}
"#
    ));
    p.build(&[]).ok();
    // Inside, the command was root and made its file setuid; no device.
    assert!(
        p.read("out/setuid").starts_with("-rwsr-xr-x"),
        "{}",
        p.read("out/setuid")
    );
    assert_eq!(p.read("out/listed"), "sh\n");
    // On the host: below a directory only root enters, owned by an
    // unprivileged id, and unreachable for other users.
    let sandbox = p.path().join(".kiln/sandbox");
    let mode = std::fs::metadata(&sandbox).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the sandbox directory is root's alone");
    let found: Vec<_> = walk(&crate::run::sandbox_ids(&p.path().join(".kiln")).join("cache"))
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "sh" || n == "vda"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    let sh = std::fs::symlink_metadata(&found[0]).unwrap();
    assert!(
        sh.mode() & 0o4000 != 0,
        "the setuid bit is kept in the cache"
    );
    assert!(
        sh.uid() >= 65536,
        "owned by the sandbox's range, not a host account: {}",
        sh.uid()
    );
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&found[0])
        .args(["id", "-u"])
        .output()
        .unwrap();
    assert!(!as_nobody.status.success(), "another user reached the file");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn a_build_killed_during_a_command_leaves_nothing_mounted() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else { return };
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage s {{\n    from image=\"{image}\"\n    run \"sleep 91; echo slept > /slept\"\n}}\n"
    ));
    let mut child = Command::new(kiln_bin())
        .args(["build", "--progress", "plain"])
        .current_dir(p.path())
        .env_remove("KILN_STATE_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while crate::images_helper::processes(&["sleep", "91"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The sandbox dies with kiln, and its overlay with the sandbox.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !crate::images_helper::processes(&["sleep", "91"]).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command outlived kiln"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let root = p.path().canonicalize().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(root.to_str().unwrap()),
        "a mount was left below the project:\n{mounts}"
    );
    // And the next build runs the command again, to the end.
    std::fs::write(
        p.path().join("kiln.kdl"),
        format!("kiln 1\nstage s {{\n    from image=\"{image}\"\n    run \"echo done > /done\"\n}}\nexport {{\n    s to=\"out\"\n}}\n"),
    )
    .unwrap();
    p.build(&[]).ok();
    assert_eq!(p.read("out/done"), "done\n");
}

/// A project on the busybox image with `body` as its stages.
fn busybox_project(body: &str) -> Option<Project> {
    if !sandbox_ready() {
        return None;
    }
    let image = busybox()?;
    let p = Project::new();
    p.spec(&format!("kiln 1\n{}", body.replace("IMAGE", &image)));
    Some(p)
}

#[test]
fn mount_points_are_removed_without_following_a_link_the_command_made() {
    let victim = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(victim.path().join("etc")).unwrap();
    std::fs::write(victim.path().join("etc/victimfile"), "keep me\n").unwrap();
    let Some(p) = busybox_project(&format!(
        "stage s {{\n    from image=\"IMAGE\"\n    run \"mv /a /z && ln -s {} /a\" {{\n        mount \"type=tmpfs,target=/a/etc/victimfile\"\n    }}\n}}\n",
        victim.path().display()
    )) else {
        return;
    };
    p.build(&[]).ok();
    assert_eq!(
        std::fs::read_to_string(victim.path().join("etc/victimfile")).unwrap(),
        "keep me\n",
        "kiln removed a host file through the command's link"
    );
}

#[test]
fn an_image_s_working_directory_cannot_lead_out_of_the_tree() {
    if !sandbox_ready() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let climb = format!(
        "/kw/{}{}",
        "../".repeat(30),
        outside.path().join("made/by/kiln").display()
    );
    let Some((_keep, image)) = crate::images::variant(&["--config.workingdir", &climb]) else {
        return;
    };
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage s {{\n    from image=\"{image}\"\n    run \"pwd > /pwd\"\n}}\nexport {{\n    s to=\"out\"\n}}\n"
    ));
    let _ = p.build(&[]);
    assert!(
        !outside.path().join("made").exists(),
        "kiln made directories outside the tree"
    );
}

#[test]
fn secrets_and_arguments_are_not_on_any_command_line() {
    let Some(p) = busybox_project(
        "stage s {\n    from image=\"IMAGE\"\n    run \"sleep 3\" {\n        mount \"type=secret,id=tok,env=TOKEN\"\n        mount \"type=secret,id=file,mode=0444\"\n    }\n}\n",
    ) else {
        return;
    };
    let secret = "kiln-cmdline-secret-5521";
    std::fs::write(p.path().join("tok"), secret).unwrap();
    std::fs::write(p.path().join("file"), secret).unwrap();
    let mut child = Command::new(kiln_bin())
        .args([
            "build",
            "--secret",
            "id=tok,src=tok",
            "--secret",
            "id=file,src=file",
        ])
        .current_dir(p.path())
        .env_remove("KILN_STATE_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut saw_step = false;
    let mut leaked = Vec::new();
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmd.windows(secret.len()).any(|w| w == secret.as_bytes()) {
                leaked.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
            }
            saw_step |= cmd.starts_with(b"sleep\x003");
        }
        // The secret file lies where only kiln's user may enter.
        for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("kiln-secret-") {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o700, "{:?}", e.path());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success());
    assert!(saw_step, "the step was never seen running");
    assert!(leaked.is_empty(), "on a command line: {leaked:?}");
}

#[test]
fn mount_targets_below_proc_dev_or_another_mount_are_refused() {
    for (target, extra, says) in [
        (
            "/proc/self/root/oldroot/var/tmp/kiln-x",
            "",
            "below `/proc`",
        ),
        ("/dev/fd/kiln-x", "", "below `/dev`"),
        (
            "/c/l/kiln-x",
            "        mount \"type=cache,target=/c\"\n",
            "below another mount",
        ),
    ] {
        let Some(p) = busybox_project(&format!(
            "stage s {{\n    from image=\"IMAGE\"\n    run \"true\" {{\n{extra}        mount \"type=tmpfs,target={target}\"\n    }}\n}}\n"
        )) else {
            return;
        };
        let r = p.kiln(&["build"]);
        assert_eq!(r.code, 2, "{target}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{target}: {}", r.stderr);
        assert!(
            r.stderr.contains("kiln.kdl:5") || r.stderr.contains("kiln.kdl:6"),
            "located: {}",
            r.stderr
        );
    }
    assert!(!std::path::Path::new("/var/tmp/kiln-x").exists());
}

#[test]
fn what_a_command_leaves_is_bounded() {
    let Some(p) = busybox_project(
        "stage s {\n    from image=\"IMAGE\"\n    run \"truncate -s 20000000000 /big\"\n}\n",
    ) else {
        return;
    };
    let r = p.kiln(&["build", "--max-unpack-size", "1GiB"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("add up to more than"), "{}", r.stderr);
    let used: u64 = walk(&p.path().join(".kiln"))
        .iter()
        .filter_map(|f| f.symlink_metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum();
    assert!(used < 100 << 20, "{used} bytes stored");
}

#[test]
fn a_state_directory_another_user_controls_is_refused() {
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n    write \"/f\" \"x\"\n}\n");
    if !rustix::process::geteuid().is_root() {
        return;
    }
    // The project is another user's: its `.kiln` could be made to lead
    // anywhere.
    std::os::unix::fs::chown(p.path(), Some(65534), Some(65534)).unwrap();
    let r = p.kiln(&["build"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("kiln::state::owner"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_dir(p.path().join(".kiln")).unwrap().count(),
        0
    );
    // A state directory of kiln's own user is made for that user alone.
    std::fs::remove_dir(p.path().join(".kiln")).unwrap();
    std::os::unix::fs::chown(p.path(), Some(0), Some(0)).unwrap();
    p.kiln(&["build", "--state-dir", ".kiln"]).ok();
    let mode = std::fs::metadata(p.path().join(".kiln"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_symlink_at_a_file_mount_target_is_refused_not_followed() {
    // A link the previous step left where a file is to be mounted would be
    // followed by bubblewrap from the host's root.
    let name = format!("kiln-link-target-{}", std::process::id());
    let host = std::path::Path::new("/dev/shm").join(&name);
    let Some(p) = busybox_project(&format!(
        "stage s {{\n    from image=\"IMAGE\"\n    run \"ln -s /oldroot/dev/shm/{name} /victim; ln -s ../oldroot/dev/shm/{name} /victim2\"\n    run \"true\" {{\n        mount \"type=secret,id=x,target=/victim\"\n    }}\n}}\nstage t {{\n    from s\n    run \"true\" {{\n        mount \"type=secret,id=x,target=/victim2\"\n    }}\n}}\n"
    )) else {
        return;
    };
    std::fs::write(p.path().join("x"), "v").unwrap();
    for target in ["s", "t"] {
        let r = p.kiln(&["build", "--target", target, "--secret", "id=x,src=x"]);
        assert_ne!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr.contains("it is a symlink in the stage"),
            "{}",
            r.stderr
        );
        assert!(!host.exists(), "bubblewrap made a host file through a link");
    }
}

#[test]
fn resolv_conf_as_a_symlink_is_followed_inside_the_tree() {
    let Some(p) = busybox_project(
        "stage s {\n    from image=\"IMAGE\"\n    run \"mkdir -p /run/resolve && rm -f /etc/resolv.conf && ln -s ../run/resolve/stub.conf /etc/resolv.conf\"\n    run \"cat /etc/resolv.conf > /seen\" network=\"host\"\n}\nexport {\n    s to=\"out\"\n}\n",
    ) else {
        return;
    };
    if !std::path::Path::new("/etc/resolv.conf").is_file() {
        return;
    }
    p.build(&[]).ok();
    assert_eq!(
        p.read("out/seen"),
        std::fs::read_to_string("/etc/resolv.conf").unwrap()
    );
    // The mount point is scaffolding: not part of the result.
    assert!(!p.exists("out/run/resolve/stub.conf"));
}

#[test]
fn what_a_command_leaves_at_a_mount_point_stays_in_its_layer() {
    let Some(p) = busybox_project(
        "stage s {\n    from image=\"IMAGE\"\n    run \"mv /a /c && echo data > /a\" {\n        mount \"type=tmpfs,target=/a/b\"\n    }\n}\nstage t {\n    from s\n    run \"cat /a > /seen\"\n}\nexport {\n    s to=\"out\"\n    t to=\"out-t\"\n}\n",
    ) else {
        return;
    };
    p.build(&[]).ok();
    assert_eq!(p.read("out/a"), "data\n");
    // The next command finds what the tree holds.
    assert_eq!(p.read("out-t/seen"), "data\n");
}

#[test]
fn directories_nested_without_end_are_refused_not_a_crash() {
    let Some(p) = busybox_project(
        "stage s {\n    from image=\"IMAGE\"\n    run \"mkdir /deep && cd /deep && i=0; while [ $i -lt 1600 ]; do mkdir d && cd d; i=$((i+1)); done\"\n}\n",
    ) else {
        return;
    };
    let r = p.kiln(&["build"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("nested more than 512 deep"),
        "{}",
        r.stderr
    );
    // Nothing of the step is left behind.
    let left: Vec<_> = walk(&p.path().join(".kiln"))
        .into_iter()
        .filter(|f| f.components().count() > 600)
        .collect();
    assert!(left.is_empty(), "left {} deep paths", left.len());
}

#[test]
fn a_spec_exports_only_inside_its_project() {
    let outside = tempfile::tempdir().unwrap();
    let dest = outside.path().join("dot-ssh");
    let p = Project::new();
    p.spec(&format!(
        "kiln 1\nstage s {{\n    write \"/authorized_keys\" \"ssh-ed25519 AAAA attacker\"\n}}\nexport {{\n    s to=\"{}\"\n}}\n",
        dest.display()
    ));
    let r = p.kiln(&["build"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("kiln::export::outside"), "{}", r.stderr);
    assert!(r.stderr.contains("kiln.kdl:6"), "located: {}", r.stderr);
    assert!(!dest.exists());
    // A link inside the project leads out just the same.
    std::os::unix::fs::symlink(outside.path(), p.path().join("out")).unwrap();
    p.spec("kiln 1\nstage s {\n    write \"/f\" \"x\"\n}\nexport {\n    s to=\"out/x\"\n}\n");
    let r = p.kiln(&["build"]);
    assert!(r.stderr.contains("kiln::export::outside"), "{}", r.stderr);
    assert!(!outside.path().join("x").exists());
    // The command line may say otherwise.
    p.kiln(&["build", "--allow-export-outside"]).ok();
    assert_eq!(p.read("out/x/f"), "x");
    let elsewhere = outside.path().join("by-o");
    p.kiln(&["build", "-o", elsewhere.to_str().unwrap()]).ok();
    assert!(elsewhere.join("f").exists());
}

#[test]
fn an_export_in_a_directory_another_user_controls_is_refused() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n    write \"/f\" \"x\"\n}\nexport {\n    s to=\"theirs/out\"\n}\n");
    std::fs::create_dir(p.path().join("theirs")).unwrap();
    std::os::unix::fs::chown(p.path().join("theirs"), Some(65534), Some(65534)).unwrap();
    let r = p.kiln(&["build"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("kiln::export::untrusted"), "{}", r.stderr);
    assert!(!p.exists("theirs/out"));
}

#[test]
fn a_state_directory_reached_through_another_user_s_link_is_refused() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let p = Project::new();
    p.spec("kiln 1\nstage s {\n    write \"/f\" \"x\"\n}\n");
    // A sticky, world-writable directory, as /tmp, holding another user's
    // link to a directory of root's: the link could be swapped mid-build.
    let sticky = p.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let real = p.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = sticky.join("state");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        &link,
        Some(rustix::process::Uid::from_raw(65534)),
        Some(rustix::process::Gid::from_raw(65534)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let r = p.kiln(&["build", "--state-dir", link.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("kiln::state::owner"), "{}", r.stderr);
    assert!(r.stderr.contains("65534"), "{}", r.stderr);
    // Nothing was made or changed where it leads.
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
    assert_eq!(
        real.metadata().unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // An existing directory of the user's own keeps its mode.
    let r = p.kiln(&["build", "--state-dir", real.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        real.metadata().unwrap().permissions().mode() & 0o7777,
        0o755
    );
}

#[test]
fn what_a_command_leaves_beyond_its_tree_never_reaches_another_command() {
    // A command whose result is exactly the image's tree, leaving an
    // extended attribute on /etc/passwd (a tree holds none): the image's
    // tree on disk must not take it, or every later command on the image
    // (another project's too) would find it.
    if !sandbox_ready() {
        return;
    }
    let Some(images) = crate::images_helper::all_images() else {
        return;
    };
    let image = format!("oci:{}/debian:12", images.display());
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage a {{
    from image="{image}"
    rm "/srv"
    run "mkdir -m 755 /srv && perl -e 'my ($p, $n, $v) = (\"/etc/passwd\", \"user.pwned\", \"attacker\"); syscall(188, $p, $n, $v, 8, 0) == 0 or die \"setxattr: $!\"'"
}}
stage v {{
    from image="{image}"
    run "perl -e 'my ($p, $n) = (\"/etc/passwd\", \"user.pwned\"); my $b = \"\\0\" x 64; my $r = syscall(191, $p, $n, $b, 64); print \"r=$r\\n\"' > /seen"
}}
export {{
    v to="out"
}}
"#
    ));
    p.build(&["--target", "a"]).ok();
    p.build(&[]).ok();
    assert_eq!(p.read("out/seen"), "r=-1\n");
}

#[test]
fn a_path_that_becomes_a_device_shows_nothing_on_disk() {
    if !sandbox_ready() {
        return;
    }
    let Some(images) = crate::images_helper::all_images() else {
        return;
    };
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage devs {{
    from image="oci:{0}/debian-devices:12"
}}
stage s {{
    from image="oci:{0}/busybox:1"
    run "true > /marker"
    copy "/dev/null" "/etc/passwd" from=devs
    run "cat /etc/passwd > /seen 2>&1; ls /etc/passwd >> /seen 2>&1; true"
}}
export {{
    s to="out" format="tar"
}}
"#,
        images.display()
    ));
    p.build(&[]).ok();
    // The tree has a device there (kept in the export), the command found
    // nothing: not the file it replaced.
    let tar = std::fs::read(p.path().join("out")).unwrap();
    let mut seen = String::new();
    let mut archive = tar::Archive::new(&tar[..]);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy().trim_start_matches("./") == "seen" {
            std::io::Read::read_to_string(&mut e, &mut seen).unwrap();
        }
    }
    assert!(!seen.contains("root:"), "{seen}");
    assert!(seen.contains("No such file"), "{seen}");
}
