//! The remote cache kept in a registry (`--cache-to`/`--cache-from
//! type=registry,ref=…`), against Debian's `docker-registry` on loopback.
//! Two projects in two folders, each with its own state directory, play
//! two machines.

use crate::images::Registry;
use crate::remote::{
    SPEC, free_port, machine, remote_event, spec_with_a_stage_before, tree, warned_once,
};

fn cache(registry: &Registry, tag: &str) -> String {
    format!("type=registry,ref={}/team/cache:{tag}", registry.host())
}

/// A large stage's tree is read in parts from a registry too.
#[test]
fn a_copy_from_a_large_stage_reads_a_few_parts_from_a_registry() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let tag = cache(&registry, "large");
    crate::remote::copy_from_a_large_stage(&["--cache-to", &tag], &["--cache-from", &tag]);
}

/// A writes, B (a spec with a stage inserted before the same steps) reads:
/// B runs nothing, downloads about what it exports, exports the same
/// bytes. B's own change, written back, joins A's results under the tag:
/// a third machine finds both.
#[test]
fn machines_share_results_through_a_registry() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let (Some(a), Some(b), Some(c)) = (
        machine(SPEC),
        machine(&spec_with_a_stage_before()),
        machine(SPEC),
    ) else {
        return;
    };
    let tag = cache(&registry, "main");
    let up = a.build(&["--cache-to", &tag]);
    up.ok();
    assert!(!up.ran().is_empty());
    let ev = remote_event(&up);
    assert!(ev["results_uploaded"].as_u64().unwrap() >= 2, "{ev}");

    // As buildx users write it: a bare reference to read, format
    // options kiln needs none of.
    let bare = tag.trim_start_matches("type=registry,ref=").to_string();
    let to = format!("{tag},mode=min,image-manifest=true,oci-mediatypes=true,ignore-error=true");
    let taken = b.build(&["--cache-from", &bare, "--cache-to", &to]);
    taken.ok();
    // What B took is named under another tag of the repository it writes
    // (as buildx's `mode=max` exports every step a build used).
    let pr = cache(&registry, "pr-1");
    let fresh = machine(SPEC).unwrap();
    fresh.build(&["--cache-from", &tag, "--cache-to", &pr]).ok();
    let from_pr = machine(SPEC).unwrap();
    let r = from_pr.build(&["--cache-from", &pr]);
    r.ok();
    assert_eq!(r.ran(), Vec::<(String, u64)>::new(), "{}", r.stderr);
    assert_eq!(taken.ran(), Vec::<(String, u64)>::new(), "{}", taken.stderr);
    let down = remote_event(&taken);
    assert!(down["found"].as_u64().unwrap() >= 2, "{down}");
    assert_eq!(down["results_uploaded"], 0, "nothing new to write");
    let exported = tree(&b.path().join("out"));
    assert_eq!(tree(&a.path().join("out")), exported);
    let size: u64 = exported.iter().map(|(_, b)| b.len() as u64).sum();
    let downloaded = down["downloaded_bytes"].as_u64().unwrap();
    assert!(
        downloaded <= size + size / 10 + (64 << 10),
        "downloaded {downloaded} for an export of {size}"
    );
    let explained = b.kiln(&["explain", "--all"]);
    explained.ok();
    assert!(
        explained.stdout.contains("(from the remote cache)"),
        "{}",
        explained.stdout
    );

    // B's change is built there and written back; the tag keeps A's.
    b.file("a.txt", "two\n");
    let changed = b.build(&["--cache-from", &tag, "--cache-to", &tag]);
    changed.ok();
    assert!(changed.ran().contains(&("s".to_string(), 1)));
    assert!(remote_event(&changed)["results_uploaded"].as_u64().unwrap() >= 1);
    for (text, want) in [("one\n", "one\none\n"), ("two\n", "two\ntwo\n")] {
        c.file("a.txt", text);
        let r = c.build(&["--cache-from", &tag]);
        r.ok();
        assert_eq!(r.ran(), Vec::<(String, u64)>::new(), "{text}: {}", r.stderr);
        assert_eq!(c.read("out/b.txt"), want);
    }
}

/// A registry that is not there, or that sends a blob that is not what
/// its digest says, costs one warning; the build goes on here and its
/// result is right.
#[test]
fn a_registry_that_fails_costs_one_warning() {
    let (Some(a), Some(b)) = (machine(SPEC), machine(SPEC)) else {
        return;
    };
    let gone = format!(
        "type=registry,ref=127.0.0.1:{}/team/cache:main",
        free_port()
    );
    let r = a.build(&[
        "--cache-from",
        &gone,
        "--cache-to",
        &gone,
        "--remote-timeout",
        "3",
    ]);
    r.ok();
    assert!(!r.ran().is_empty());
    warned_once(&r);

    let Some(registry) = Registry::start(None) else {
        return;
    };
    let tag = cache(&registry, "main");
    std::fs::remove_dir_all(a.path().join(".kiln")).unwrap();
    std::fs::create_dir(a.path().join(".kiln")).unwrap();
    a.build(&["--cache-to", &tag]).ok();
    // Every blob the registry keeps, damaged in place (same size).
    let mut damaged = 0;
    let mut todo = vec![registry.data_dir()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n == "data")
                && p.to_string_lossy().contains("/blobs/")
            {
                let mut bytes = std::fs::read(&p).unwrap();
                if let Some(x) = bytes.last_mut() {
                    *x ^= 0xff;
                    std::fs::write(&p, bytes).unwrap();
                    damaged += 1;
                }
            }
        }
    }
    assert!(damaged > 0);
    // A tag that holds an image is neither read as a cache nor written.
    let image = crate::images_helper::busybox().unwrap();
    registry.push(&image, "team/app:1", None);
    let before = crate::images::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/team/app:1", registry.host()),
    ]);
    std::fs::remove_dir_all(b.path().join(".kiln")).unwrap();
    std::fs::create_dir(b.path().join(".kiln")).unwrap();
    let app = format!("type=registry,ref={}/team/app:1", registry.host());
    let r = b.build(&["--cache-from", &app, "--cache-to", &app]);
    r.ok();
    assert!(r.stderr.contains("holds something else"), "{}", r.stderr);
    let after = crate::images::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/team/app:1", registry.host()),
    ]);
    assert_eq!(before, after);
    std::fs::remove_dir_all(b.path().join(".kiln")).unwrap();
    std::fs::create_dir(b.path().join(".kiln")).unwrap();
    let r = b.build(&["--cache-from", &tag]);
    r.ok();
    assert!(!r.ran().is_empty(), "nothing damaged was believed");
    warned_once(&r);
    assert_eq!(b.read("out/b.txt"), "one\none\n");
}

/// Cache options are read as buildx writes them; what kiln does not keep
/// is refused with what to write instead.
#[test]
fn cache_options_are_checked() {
    let Some(p) = machine(SPEC) else {
        return;
    };
    for (args, want) in [
        (
            vec!["--cache-to", "type=local,dest=/tmp/x"],
            "`type=local` is not a cache kiln keeps",
        ),
        (
            vec!["--cache-from", "type=registry"],
            "no `ref=REG/NAME:TAG`",
        ),
        (
            vec!["--cache-to", "type=registry,ref=r.example/a:b,mode=all"],
            "is neither `max` nor `min`",
        ),
        (
            vec!["--cache-to", "type=registry,ref=r.example/a:b,dest=/x"],
            "`dest=` is not a cache option",
        ),
        (
            vec![
                "--cache-to",
                "type=registry,ref=r.example/a:b",
                "--remote-cache",
                "grpc://127.0.0.1:1",
            ],
            "kiln uses one at a time",
        ),
        (
            vec![
                "--cache-to",
                "type=registry,ref=r.example/a@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ],
            "a cache is kept under a tag",
        ),
    ] {
        let mut all = vec!["build"];
        all.extend(args.iter().copied());
        let r = p.kiln(&all);
        assert_ne!(r.code, 0, "{args:?}");
        // The message as one line (rendering wraps it).
        let flat = r
            .stderr
            .replace('│', " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(flat.contains(want), "{args:?}: {}", r.stderr);
    }
    assert!(!p.exists("out"));
}

/// The settings file's `cache-from`/`cache-to` set the registry cache
/// once; `--remote-cache` on the command line replaces them.
#[test]
fn a_settings_file_sets_the_registry_cache() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let (Some(a), Some(b)) = (machine(SPEC), machine(SPEC)) else {
        return;
    };
    let tag = cache(&registry, "ci");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.kdl");
    std::fs::write(&file, format!("cache-from \"{tag}\"\ncache-to \"{tag}\"\n")).unwrap();
    let vars = [("KILN_CONFIG", file.to_str().unwrap())];
    a.kiln_env(&["build", "--progress", "json"], &vars).ok();
    let r = b.kiln_env(&["build", "--progress", "json"], &vars);
    r.ok();
    assert_eq!(r.ran(), Vec::<(String, u64)>::new(), "{}", r.stderr);
    // Two caches in one file: refused at their place.
    std::fs::write(
        &file,
        format!("remote-cache \"grpc://127.0.0.1:1\"\ncache-to \"{tag}\"\n"),
    )
    .unwrap();
    let r = b.kiln_env(&["build"], &vars);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("kiln uses one at a time") && r.stderr.contains("config.kdl:1:"),
        "{}",
        r.stderr
    );
}

/// A registry that asks for credentials gets the Docker config file's,
/// for reading and for writing; without them, one warning.
#[test]
fn a_private_registry_takes_the_docker_config_credentials() {
    // user `kiln`, password `kiln-test-pass` (bcrypt at its lowest cost:
    // the registry checks it on every request)
    let htpasswd = "kiln:$2b$04$MjQVww9h52pO6jhSpQ0OFOSsRAz14IvfquO33LHKd4LbIMN0auOI6\n";
    let Some(registry) = Registry::start(Some(htpasswd)) else {
        return;
    };
    let (Some(a), Some(b)) = (machine(SPEC), machine(SPEC)) else {
        return;
    };
    let tag = cache(&registry, "main");
    let docker = tempfile::tempdir().unwrap();
    let config = docker.path().to_str().unwrap();
    let refused = a.kiln_env(
        &["build", "--progress", "json", "--cache-to", &tag],
        &[("DOCKER_CONFIG", config)],
    );
    refused.ok();
    assert_eq!(remote_event(&refused)["results_uploaded"], 0);
    warned_once(&refused);
    std::fs::write(
        docker.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            registry.host(),
            crate::images::base64("kiln:kiln-test-pass")
        ),
    )
    .unwrap();
    std::fs::remove_dir_all(a.path().join(".kiln")).unwrap();
    std::fs::create_dir(a.path().join(".kiln")).unwrap();
    let up = a.kiln_env(
        &["build", "--progress", "json", "--cache-to", &tag],
        &[("DOCKER_CONFIG", config)],
    );
    up.ok();
    assert!(remote_event(&up)["results_uploaded"].as_u64().unwrap() >= 2);
    let taken = b.kiln_env(
        &["build", "--progress", "json", "--cache-from", &tag],
        &[("DOCKER_CONFIG", config)],
    );
    taken.ok();
    assert_eq!(taken.ran(), Vec::<(String, u64)>::new(), "{}", taken.stderr);
}

/// A manifest the tag's index names that the registry no longer has
/// (deleted, collected) does not stop the tag from being written: the
/// next build's results are there for the next machine.
#[test]
fn a_manifest_gone_from_the_registry_does_not_freeze_the_tag() {
    let Some(registry) = Registry::start(None) else {
        return;
    };
    let (Some(a), Some(b)) = (machine(SPEC), machine(SPEC)) else {
        return;
    };
    let tag = cache(&registry, "main");
    a.build(&["--cache-to", &tag]).ok();
    // Every step manifest's revision of the repository, gone.
    let revisions = registry
        .data_dir()
        .join("docker/registry/v2/repositories/team/cache/_manifests/revisions/sha256");
    let index_digest = String::from_utf8(crate::images::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/team/cache:main", registry.host()),
    ]))
    .unwrap();
    let index: serde_json::Value = serde_json::from_str(&index_digest).unwrap();
    let step = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::remove_dir_all(revisions.join(&step)).unwrap();
    a.file("a.txt", "changed\n");
    let r = a.build(&["--cache-to", &tag]);
    r.ok();
    assert!(!r.stderr.contains("kiln::remote::cache"), "{}", r.stderr);
    b.file("a.txt", "changed\n");
    let taken = b.build(&["--cache-from", &tag]);
    taken.ok();
    assert_eq!(taken.ran(), Vec::<(String, u64)>::new(), "{}", taken.stderr);
    assert_eq!(b.read("out/b.txt"), "changed\nchanged\n");
}
