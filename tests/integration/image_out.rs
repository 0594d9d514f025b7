//! Images out: stages exported as OCI layouts, OCI archives and `docker
//! load` archives, judged by real clients (skopeo, umoci) and by kiln
//! building on them; base layers kept byte for byte; whiteouts; the same
//! bytes from two checkouts under different environments.

use crate::harness::{Project, kiln_bin};
use crate::images::listing;
use crate::images_helper::{busybox, busybox_layout, tool};
use std::path::Path;
use std::process::Command;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    json(
        &layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
}

/// The manifest an OCI layout's index names first.
fn manifest(layout: &Path) -> serde_json::Value {
    let index = json(&layout.join("index.json"));
    blob(layout, index["manifests"][0]["digest"].as_str().unwrap())
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `umoci unpack` of `layout:tag`: the image's root filesystem.
fn unpacked(layout: &Path, tag: &str, into: &Path) -> std::path::PathBuf {
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            into.to_str().unwrap(),
        ],
    );
    into.join("rootfs")
}

const SCRATCH: &str = r##"kiln 1
stage app {
    mkdir "/etc" "/srv/data"
    write "/etc/app.conf" "port = 80\n"
    write "/srv/run.sh" "#!/bin/sh\necho served\n" mode="0755"
    symlink "run.sh" "/srv/start"
    env PATH="/bin:/usr/bin" MODE="prod"
    workdir "/srv"
    user "1000:1000"
    label "org.example.team" "kiln"
    expose "8080/tcp"
    entrypoint "/srv/run.sh"
    cmd "--quiet"
}
export {
    app to="app-oci" format="oci" tag="app:1.0"
    app to="app.tar" format="oci-archive" tag="app:1.0"
    app to="app-docker.tar" format="docker-archive" tag="example.com/app:1.0"
    app to="app-dir"
}
"##;

#[test]
fn a_scratch_stage_is_an_image_clients_accept() {
    if !tool("skopeo") || !tool("umoci") || !rustix::process::geteuid().is_root() {
        return;
    }
    let p = Project::new();
    p.spec(SCRATCH);
    p.build(&[]).ok();
    let layout = p.path().join("app-oci");
    let m = manifest(&layout);
    // A layer per step that changed the tree: mkdir, two writes, symlink.
    assert_eq!(m["layers"].as_array().unwrap().len(), 4);
    let config = blob(&layout, m["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/srv/run.sh"]));
    assert_eq!(c["Cmd"], serde_json::json!(["--quiet"]));
    assert_eq!(c["WorkingDir"], "/srv");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(
        c["Env"],
        serde_json::json!(["PATH=/bin:/usr/bin", "MODE=prod"])
    );
    assert_eq!(c["Labels"]["org.example.team"], "kiln");
    assert!(c["ExposedPorts"].get("8080/tcp").is_some());
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 4);

    // skopeo reads all three and agrees on the image.
    let inspect = |what: &str| -> serde_json::Value {
        serde_json::from_str(&run("skopeo", &["inspect", what])).unwrap()
    };
    let oci = inspect(&format!("oci:{}:1.0", layout.display()));
    let archive = inspect(&format!(
        "oci-archive:{}:1.0",
        p.path().join("app.tar").display()
    ));
    let docker = inspect(&format!(
        "docker-archive:{}",
        p.path().join("app-docker.tar").display()
    ));
    assert_eq!(oci["Layers"], archive["Layers"]);
    assert_eq!(oci["Digest"], archive["Digest"]);
    // A docker archive's layers are named by their uncompressed digests.
    assert_eq!(docker["Layers"], config["rootfs"]["diff_ids"]);
    // The archive names the image (skopeo finds it by its name).
    let named = inspect(&format!(
        "docker-archive:{}:example.com/app:1.0",
        p.path().join("app-docker.tar").display()
    ));
    assert_eq!(named["Digest"], docker["Digest"]);
    // skopeo copies it (every blob checks out).
    let copy = tempfile::tempdir().unwrap();
    run(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:1.0", layout.display()),
            &format!("oci:{}:x", copy.path().join("c").display()),
        ],
    );
    // umoci's root filesystem is the `dir` export, file for file.
    let bundle = tempfile::tempdir().unwrap();
    let rootfs = unpacked(&layout, "1.0", &bundle.path().join("b"));
    assert_eq!(listing(&rootfs), listing(&p.path().join("app-dir")));

    // kiln builds on the image it made, and gets the same tree.
    let q = Project::new();
    q.spec(&format!(
        "kiln 1\nstage again {{\n    from image=\"oci-layout://{}:1.0\"\n}}\nexport {{\n    again to=\"out\"\n}}\n",
        layout.display()
    ));
    q.build(&[]).ok();
    assert_eq!(
        listing(&q.path().join("out")),
        listing(&p.path().join("app-dir"))
    );
}

#[test]
fn the_same_spec_gives_the_same_image_anywhere() {
    let digests: Vec<(String, Vec<u8>)> = ["0022", "0077"]
        .iter()
        .map(|umask| {
            let p = Project::new();
            p.spec(SCRATCH);
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("umask {umask}; exec \"$0\" build --progress plain"))
                .arg(kiln_bin())
                .current_dir(p.path())
                .env_remove("KILN_STATE_DIR")
                .env_remove("SOURCE_DATE_EPOCH")
                .env(
                    "TZ",
                    if *umask == "0022" {
                        "UTC"
                    } else {
                        "Asia/Tokyo"
                    },
                )
                .env("LC_ALL", if *umask == "0022" { "C" } else { "C.UTF-8" })
                .env("USER", if *umask == "0022" { "a" } else { "b" })
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let index = json(&p.path().join("app-oci/index.json"));
            (
                index["manifests"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                std::fs::read(p.path().join("app-docker.tar")).unwrap(),
            )
        })
        .collect();
    assert_eq!(digests[0].0, digests[1].0);
    assert!(digests[0].1 == digests[1].1, "the docker archives differ");
}

#[test]
fn an_image_built_on_an_image_keeps_its_layers_and_whites_out_removals() {
    if !tool("umoci") || !rustix::process::geteuid().is_root() {
        return;
    }
    let (Some(image), Some(base_layout)) = (busybox(), busybox_layout()) else {
        return;
    };
    let p = Project::new();
    p.spec(&format!(
        r#"kiln 1
stage app {{
    from image="{image}"
    write "/etc/motd" "hello\n"
    rm "/etc/group"
    env "GREETING" "hi"
}}
export {{
    app to="img" format="oci" tag="img:1"
    app to="zst" format="oci" tag="img:1" compression="zstd"
    app to="dir"
}}
"#
    ));
    p.build(&[]).ok();
    let base = {
        let index = json(&base_layout.join("index.json"));
        let d = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "1")
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        blob(&base_layout, &d)
    };
    let layout = p.path().join("img");
    let m = manifest(&layout);
    let base_layers = base["layers"].as_array().unwrap();
    let layers = m["layers"].as_array().unwrap();
    // The write and the removal, a layer each; `env` makes none.
    assert_eq!(layers.len(), base_layers.len() + 2);
    // The base's layers, byte for byte: same digests, same media types.
    assert_eq!(&layers[..base_layers.len()], &base_layers[..]);
    assert_eq!(
        layers.last().unwrap()["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let zst = manifest(&p.path().join("zst"));
    let zst_layers = zst["layers"].as_array().unwrap();
    assert_eq!(&zst_layers[..base_layers.len()], &base_layers[..]);
    assert_eq!(
        zst_layers.last().unwrap()["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    // kiln reads the zstd layer back to the same tree.
    let q = Project::new();
    q.spec(&format!(
        "kiln 1\nstage again {{\n    from image=\"oci-layout://{}:1\"\n}}\nexport {{\n    again to=\"out\"\n}}\n",
        p.path().join("zst").display()
    ));
    q.build(&[]).ok();
    assert_eq!(
        listing(&q.path().join("out")),
        listing(&p.path().join("dir"))
    );
    let config = blob(&layout, m["config"]["digest"].as_str().unwrap());
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "GREETING=hi"), "{env:?}");
    // The base's history, then kiln's entries: a layer for the write, one
    // for the removal, none for `env`.
    let history = config["history"].as_array().unwrap();
    let own: Vec<&serde_json::Value> = history.iter().filter(|h| h["comment"] == "kiln").collect();
    assert_eq!(own.len(), 3, "{history:?}");
    assert!(own[0]["created_by"].as_str().unwrap().contains("write"));
    assert!(own[1]["created_by"].as_str().unwrap().contains("rm"));
    assert_eq!(own[2]["empty_layer"], true);
    // Unpacked, the removal holds and the tree is the `dir` export.
    let bundle = tempfile::tempdir().unwrap();
    let rootfs = unpacked(&layout, "1", &bundle.path().join("b"));
    assert!(!rootfs.join("etc/group").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert_eq!(listing(&rootfs), listing(&p.path().join("dir")));
}

#[test]
fn a_changed_tag_reuses_the_layer_and_bad_settings_are_located() {
    let p = Project::new();
    p.spec(SCRATCH);
    p.build(&[]).ok();
    let layout = p.path().join("app-oci");
    let m = manifest(&layout);
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let cached = std::fs::read_dir(p.path().join(".kiln/layers"))
        .unwrap()
        .count();
    // Another name: the layer is not made again.
    p.spec(&SCRATCH.replace("tag=\"app:1.0\"", "tag=\"app:2.0\""));
    p.build(&[]).ok();
    let m2 = manifest(&layout);
    assert_eq!(m2["layers"][0]["digest"], layer.as_str());
    assert_eq!(
        std::fs::read_dir(p.path().join(".kiln/layers"))
            .unwrap()
            .count(),
        cached
    );
    let index = json(&layout.join("index.json"));
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "2.0"
    );
    // Errors name the place.
    p.spec("kiln 1\nstage a {\n    write \"/x\" \"1\"\n}\nexport {\n    a to=\"d\" tag=\"a:1\"\n    a to=\"i\" format=\"oci\" tag=\"Bad Name\"\n    a to=\"j\" format=\"oci\" compression=\"lz4\"\n}\n");
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("kiln.kdl:6:18"), "{}", r.stderr);
    assert!(
        r.stderr.contains("`Bad Name` is not an image name"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("unknown compression `lz4`"),
        "{}",
        r.stderr
    );
    // `-o` as buildx writes it.
    p.spec("kiln 1\nstage a {\n    write \"/x\" \"1\"\n}\n");
    p.kiln(&["build", "-o", "type=oci,dest=a.tar,name=a:1"])
        .ok();
    p.kiln(&["build", "-o", "type=oci,dest=a-layout,tar=false"])
        .ok();
    assert!(p.exists("a-layout/index.json"));
    p.kiln(&["build", "-o", "type=docker,dest=d.tar"]).ok();
    let r = p.kiln(&["build", "-o", "type=image,dest=x"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("type=image"), "{}", r.stderr);
}

#[test]
fn buildah_runs_the_exported_image_s_entrypoint() {
    if !tool("buildah") || !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let p = Project::new();
    p.spec(&format!(
        r##"kiln 1
stage app {{
    from image="{image}"
    write "/hello.sh" "#!/bin/sh\necho hello from kiln \"$@\"\n" mode="0755"
    entrypoint "/hello.sh"
    cmd "and its cmd"
}}
export {{
    app to="img" format="oci" tag="app:1"
}}
"##
    ));
    p.build(&[]).ok();
    let store = tempfile::tempdir().unwrap();
    let buildah = |args: &[&str]| {
        let out = Command::new("buildah")
            .args(["--storage-driver", "vfs", "--root"])
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("run"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // buildah names the image after its path, which must be lower-case.
    let lower = std::env::temp_dir().join(format!("kiln-image-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&lower);
    run(
        "cp",
        &[
            "-r",
            p.path().join("img").to_str().unwrap(),
            lower.to_str().unwrap(),
        ],
    );
    let image = format!("oci:{}:1", lower.display());
    let ctr = buildah(&["from", "--quiet", &image]);
    let config: serde_json::Value =
        serde_json::from_str(&buildah(&["inspect", "--type", "container", &ctr])).unwrap();
    let oci = &config["OCIv1"]["config"];
    let mut argv: Vec<String> = Vec::new();
    for part in ["Entrypoint", "Cmd"] {
        for a in oci[part].as_array().unwrap() {
            argv.push(a.as_str().unwrap().to_string());
        }
    }
    let mut args = vec!["run", "--isolation", "chroot", &ctr, "--"];
    args.extend(argv.iter().map(String::as_str));
    let said = buildah(&args);
    buildah(&["rm", &ctr]);
    let _ = std::fs::remove_dir_all(&lower);
    assert_eq!(said, "hello from kiln and its cmd");
}

#[test]
fn a_pushed_image_is_what_the_registry_serves_and_a_second_push_uploads_no_blob() {
    if !tool("skopeo") || !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let Some(reg) = crate::images::Registry::start(None) else {
        return;
    };
    let p = Project::new();
    let spec = |tag: &str| {
        format!(
            "kiln 1\nstage app {{\n    from image=\"{image}\"\n    write \"/etc/motd\" \"pushed\\n\"\n}}\nexport {{\n    app image=\"{}/team/app:{tag}\"\n    app to=\"dir\"\n}}\n",
            reg.host()
        )
    };
    p.spec(&spec("1"));
    let r = p.build(&[]);
    r.ok();
    let pushed = r.events_of("image_pushed");
    assert_eq!(pushed.len(), 1, "{}", r.stderr);
    let digest = pushed[0]["digest"].as_str().unwrap().to_string();
    let first_uploaded = pushed[0]["uploaded"].as_u64().unwrap();
    assert!(first_uploaded >= 3, "{}", pushed[0]); // base layer(s), kiln's layer, config
    let inspect: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/team/app:1", reg.host()),
        ],
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());

    // Another tag of the same image: every blob is there already.
    p.spec(&spec("2"));
    let r = p.build(&[]);
    r.ok();
    let pushed = r.events_of("image_pushed");
    assert_eq!(pushed[0]["uploaded"], 0, "{}", pushed[0]);
    assert_eq!(pushed[0]["present"].as_u64().unwrap(), first_uploaded);
    assert_eq!(pushed[0]["digest"], digest.as_str());

    // kiln builds on what it pushed.
    let q = Project::new();
    q.spec(&format!(
        "kiln 1\nstage again {{\n    from image=\"{}/team/app:2\"\n}}\nexport {{\n    again to=\"out\"\n}}\n",
        reg.host()
    ));
    q.build(&[]).ok();
    assert_eq!(
        listing(&q.path().join("out")),
        listing(&p.path().join("dir"))
    );

    // An unreachable registry fails the push, naming it, after the files.
    p.spec(&spec("3").replace(&reg.host(), "127.0.0.1:9"));
    let r = p.build(&[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("cannot push to `127.0.0.1:9/team/app:3`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("kiln.kdl:7:5"), "{}", r.stderr);
}

#[test]
fn a_tagged_image_is_listed_built_on_kept_by_gc_and_removed() {
    let p = Project::new();
    p.spec(SCRATCH);
    let r = p.kiln(&[
        "build",
        "--progress",
        "json",
        "--target",
        "app",
        "-t",
        "app:1",
    ]);
    r.ok();
    let tagged = r.events_of("image_tagged");
    assert_eq!(tagged.len(), 1, "{}", r.stderr);
    assert_eq!(tagged[0]["name"], "app:1");
    let r = p.kiln(&["images"]);
    r.ok();
    assert!(r.stdout.contains("app:1"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(&tagged[0]["digest"].as_str().unwrap()[..19]),
        "{}",
        r.stdout
    );
    // Another spec beside it builds on the name, before any registry.
    p.file(
        "other.kdl",
        "kiln 1\nstage more {\n    from image=\"app:1\"\n    write \"/srv/extra\" \"x\"\n}\nexport {\n    more to=\"more\"\n}\n",
    );
    let r = p.kiln(&["build", "-f", "other.kdl", "--progress", "json"]);
    r.ok();
    let resolved = r.events_of("image_resolved");
    assert_eq!(resolved[0]["how"], "local", "{}", r.stderr);
    assert_eq!(p.read("more/etc/app.conf"), "port = 80\n");
    assert_eq!(p.read("more/srv/extra"), "x");
    // gc keeps what a name needs: a build without the cache still works.
    p.kiln(&["gc", "--max-size", "1"]).ok();
    p.kiln(&["build", "-f", "other.kdl", "--no-cache"]).ok();
    // A name removed is gone; removing it again is an error.
    p.kiln(&["rmi", "app:1"]).ok();
    assert!(p.kiln(&["images"]).stdout.contains("no images"));
    let r = p.kiln(&["rmi", "app:1"]);
    r.code(2);
    assert!(
        r.stderr.contains("no image is named `app:1`"),
        "{}",
        r.stderr
    );
    // Names are checked.
    let r = p.kiln(&["build", "--target", "app", "-t", "Not A Name"]);
    r.code(2);
    assert!(r.stderr.contains("is not an image name"), "{}", r.stderr);
}

#[test]
fn verify_rebuilds_from_nothing_and_names_the_step_that_is_not_reproducible() {
    let p = Project::new();
    p.spec(SCRATCH);
    p.build(&[]).ok();
    let r = p.kiln(&["verify"]);
    r.ok();
    assert!(r.stdout.contains("reproducible"), "{}", r.stdout);
    assert!(r.stdout.contains("app: same"), "{}", r.stdout);
    // Nothing was exported by verify: the exports are as the build left them.
    assert!(p.exists("app-oci/index.json"));

    let Some(image) = busybox() else {
        return;
    };
    if !crate::images_helper::sandbox_ready() {
        return;
    }
    p.spec(&format!(
        "kiln 1\nstage clock {{\n    from image=\"{image}\"\n    write \"/fixed\" \"same\"\n    run \"cat /proc/sys/kernel/random/uuid > /stamp\"\n    write \"/after\" \"x\"\n}}\nexport {{\n    clock to=\"out\"\n}}\n"
    ));
    p.build(&[]).ok();
    let r = p.kiln(&["verify"]);
    r.code(1);
    assert!(r.stdout.contains("clock: DIFFERENT"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("first difference: /stamp: content differs"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("made by step 2 of `clock`: run"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("not reproducible"), "{}", r.stderr);
}

#[test]
fn provenance_names_every_material_with_its_digest() {
    let p = Project::new();
    p.file("src/main.c", "int main(void) { return 0; }\n");
    p.spec(
        "kiln 1\narg VERSION default=\"1.0\"\nstage app {\n    copy \"src/main.c\" \"/src/\"\n    write \"/version\" \"${VERSION}\"\n}\nexport {\n    app to=\"app.tar\" format=\"oci-archive\" provenance=#true\n    app to=\"tree\" provenance=#true\n}\n",
    );
    p.build(&[]).ok();
    let statement: serde_json::Value =
        serde_json::from_str(&p.read("app.tar.provenance.json")).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    // The subject is the archive, by the sha256 of its bytes.
    let tar = std::fs::read(p.path().join("app.tar")).unwrap();
    let sum = {
        use sha2::Digest;
        let h = sha2::Sha256::digest(&tar);
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(statement["subject"][0]["name"], "app.tar");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], sum.as_str());
    let def = &statement["predicate"]["buildDefinition"];
    assert_eq!(def["externalParameters"]["args"]["VERSION"], "1.0");
    let deps = def["resolvedDependencies"].as_array().unwrap();
    let uris: Vec<&str> = deps.iter().map(|d| d["uri"].as_str().unwrap()).collect();
    assert!(uris.contains(&"context:src/main.c"), "{uris:?}");
    assert!(uris.contains(&"file:kiln.kdl"), "{uris:?}");
    let main = deps
        .iter()
        .find(|d| d["uri"] == "context:src/main.c")
        .unwrap();
    assert_eq!(
        main["digest"]["blake3"],
        blake3::hash(b"int main(void) { return 0; }\n")
            .to_hex()
            .as_str()
    );
    assert!(p.exists("tree.provenance.json"));
    // A no-op build leaves it alone; a file kiln did not write is refused.
    let before = std::fs::metadata(p.path().join("app.tar.provenance.json"))
        .unwrap()
        .modified()
        .unwrap();
    p.build(&[]).ok();
    let after = std::fs::metadata(p.path().join("app.tar.provenance.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    std::fs::write(p.path().join("tree.provenance.json"), "mine").unwrap();
    let r = p.build(&[]);
    r.code(2);
    assert!(r.stderr.contains("did not write"), "{}", r.stderr);
    assert_eq!(p.read("tree.provenance.json"), "mine");
}

#[test]
fn provenance_written_by_a_build_answered_from_the_memo_has_every_material() {
    let p = Project::new();
    p.file("src/main.c", "int main(void) { return 1; }\n");
    p.spec("kiln 1\nstage app {\n    copy \"src/main.c\" \"/src/\"\n}\nexport {\n    app to=\"tree\" provenance=#true\n}\n");
    p.build(&[]).ok();
    let first = p.read("tree.provenance.json");
    // Old enough for their stat to vouch for them: the next build is
    // answered from the memo, whose steps keep no inputs.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    p.build(&[]).ok();
    std::fs::remove_file(p.path().join("tree.provenance.json")).unwrap();
    let r = p.build(&[]);
    r.ok();
    let finished = r.events_of("build_finished");
    assert_eq!(finished[0]["unchanged"], true, "{}", r.stderr);
    assert_eq!(p.read("tree.provenance.json"), first);
    assert!(first.contains("context:src/main.c"), "{first}");
}

#[test]
fn an_image_has_a_layer_per_step_and_squash_makes_one() {
    if !tool("umoci") || !crate::images_helper::sandbox_ready() {
        return;
    }
    let (Some(image), Some(base_layout)) = (busybox(), busybox_layout()) else {
        return;
    };
    let spec = |second: &str| {
        format!(
            r#"kiln 1
stage app {{
    from image="{image}"
    run "echo one > /one"
    write "/two" "2\n"
    run "{second}"
    env "DONE" "yes"
}}
export {{
    app to="img" format="oci" tag="img:1"
    app to="flat" format="oci" tag="img:1" squash=#true
    app to="dir"
}}
"#
        )
    };
    let p = Project::new();
    p.spec(&spec("echo three > /three"));
    p.build(&[]).ok();
    let base = manifest(&base_layout)["layers"].as_array().unwrap().len();
    let m = manifest(&p.path().join("img"));
    let layers = m["layers"].as_array().unwrap().clone();
    // One layer per step that changed the tree, as Docker makes them.
    assert_eq!(layers.len(), base + 3, "{m}");
    let config = blob(
        &p.path().join("img"),
        m["config"]["digest"].as_str().unwrap(),
    );
    let history = config["history"].as_array().unwrap();
    let own: Vec<&serde_json::Value> = history.iter().filter(|h| h["comment"] == "kiln").collect();
    assert_eq!(own.len(), 4, "{history:?}");
    assert!(own[0]["created_by"].as_str().unwrap().contains("echo one"));
    assert!(own[1]["created_by"].as_str().unwrap().contains("/two"));
    assert!(
        own[2]["created_by"]
            .as_str()
            .unwrap()
            .contains("echo three")
    );
    assert_eq!(own[3]["empty_layer"], true, "the `env` step makes no layer");
    let layered = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(layered, layers.len(), "one history entry per layer");
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        layers.len()
    );
    // Squashed: the same files in one layer of the stage's own.
    let flat = manifest(&p.path().join("flat"));
    assert_eq!(flat["layers"].as_array().unwrap().len(), base + 1);
    let (a, b) = (Project::new(), Project::new());
    let files = |layout: &str, into: &Project| {
        let root = unpacked(&p.path().join(layout), "1", &into.path().join("b"));
        let mut names: Vec<String> = ["one", "two", "three"]
            .iter()
            .map(|n| std::fs::read_to_string(root.join(n)).unwrap())
            .collect();
        names.push(root.join("bin/sh").exists().to_string());
        names
    };
    let contents = files("img", &a);
    assert_eq!(contents, files("flat", &b));
    assert_eq!(contents, ["one\n", "2\n", "three\n", "true"]);
    // A changed last command changes only the last layer: a registry
    // already has the others.
    p.spec(&spec("echo 3 > /three"));
    p.build(&[]).ok();
    let again = manifest(&p.path().join("img"));
    let again = again["layers"].as_array().unwrap();
    assert_eq!(again[..base + 2], layers[..base + 2]);
    assert_ne!(again[base + 2], layers[base + 2]);
}

#[test]
fn squash_on_a_file_export_is_located() {
    let p = Project::new();
    p.spec("kiln 1\nstage app {\n    write \"/a\" \"a\"\n}\nexport {\n    app to=\"out\" squash=#true\n}\n");
    let r = p.build(&[]);
    r.code(2);
    assert!(
        r.stderr.contains("kiln::spec::export-squash"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("kiln.kdl:6:5"), "{}", r.stderr);
}

/// GET a path of a loopback registry (plain HTTP): the body.
fn registry_get(host: &str, path: &str, accept: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..at]).to_string();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{path}: {head}"
    );
    out[at + 4..].to_vec()
}

#[test]
fn a_pushed_image_carries_its_provenance_as_a_referrer() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let Some(reg) = crate::images::Registry::start(None) else {
        return;
    };
    let p = Project::new();
    p.file("ctx/motd", "pushed\n");
    p.spec(&format!(
        "kiln 1\nstage app {{\n    from image=\"{image}\"\n    copy \"ctx/motd\" \"/etc/motd\"\n}}\nexport {{\n    app image=\"{}/team/app:1\" provenance=#true\n}}\n",
        reg.host()
    ));
    let r = p.build(&[]);
    r.ok();
    let digest = r.events_of("image_pushed")[0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let json = |b: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&b).unwrap();
    // Found by the referrers tag schema (the registry has no referrers API).
    let index = json(registry_get(
        &reg.host(),
        &format!(
            "/v2/team/app/manifests/sha256-{}",
            digest.trim_start_matches("sha256:")
        ),
        "application/vnd.oci.image.index.v1+json",
    ));
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["artifactType"], "application/vnd.in-toto+json");
    let artifact = json(registry_get(
        &reg.host(),
        &format!(
            "/v2/team/app/manifests/{}",
            listed[0]["digest"].as_str().unwrap()
        ),
        "application/vnd.oci.image.manifest.v1+json",
    ));
    assert_eq!(artifact["subject"]["digest"], digest.as_str());
    let statement = json(registry_get(
        &reg.host(),
        &format!(
            "/v2/team/app/blobs/{}",
            artifact["layers"][0]["digest"].as_str().unwrap()
        ),
        "*/*",
    ));
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        digest.trim_start_matches("sha256:")
    );
    assert_eq!(
        statement["subject"][0]["name"],
        format!("{}/team/app:1", reg.host())
    );
    let materials = statement.to_string();
    assert!(
        materials.contains("motd"),
        "the context file is a material: {statement}"
    );
    // Pushed again unchanged: still one statement listed.
    p.build(&[]).ok();
    let index = json(registry_get(
        &reg.host(),
        &format!(
            "/v2/team/app/manifests/sha256-{}",
            digest.trim_start_matches("sha256:")
        ),
        "application/vnd.oci.image.index.v1+json",
    ));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
}

#[test]
fn an_image_s_layers_do_not_depend_on_what_the_cache_held() {
    let Some(image) = busybox() else {
        return;
    };
    let spec = |extra: &str| {
        format!(
            "kiln 1\nstage app {{\n    from image=\"{image}\"\n    write \"/a\" \"1\"\n{extra}}}\nexport {{\n    app to=\"img\" format=\"oci\" tag=\"app:1\"\n}}\n"
        )
    };
    // The first `write` was the stage's last step (its tree stored) in an
    // earlier build here; a fresh state dir never stored it.
    let reused = Project::new();
    reused.spec(&spec(""));
    reused.build(&[]).ok();
    reused.spec(&spec("    write \"/b\" \"2\"\n"));
    reused.build(&[]).ok();
    let fresh = Project::new();
    fresh.spec(&spec("    write \"/b\" \"2\"\n"));
    fresh.build(&[]).ok();
    let digest =
        |p: &Project| json(&p.path().join("img/index.json"))["manifests"][0]["digest"].clone();
    assert_eq!(digest(&reused), digest(&fresh));
}

#[test]
fn an_always_image_export_of_a_failed_stage_has_the_layers_of_the_steps_that_ran() {
    let p = Project::new();
    p.spec("kiln 1\nstage app {\n    write \"/a\" \"1\"\n    write \"/b\" \"2\"\n    copy \"missing\" \"/\"\n}\nexport {\n    app to=\"img\" format=\"oci\" when=\"always\"\n}\n");
    let r = p.build(&[]);
    r.code(1);
    assert!(r.stderr.contains("missing"), "{}", r.stderr);
    let layout = p.path().join("img");
    let m = manifest(&layout);
    assert_eq!(m["layers"].as_array().unwrap().len(), 2, "{m}");
    let config = blob(&layout, m["config"]["digest"].as_str().unwrap());
    let steps: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created_by"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["kiln: write \"/a\"", "kiln: write \"/b\""]);
}
