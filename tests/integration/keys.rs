//! Keys name what a step reads, never where it was declared: inserting,
//! removing or reordering stages, contexts and plugins moves no key (a
//! stage, context or plugin is an index inside a build, and a key must not
//! hold one).

use crate::harness::Project;
use crate::images_helper::{busybox, sandbox_ready};
use std::path::Path;

fn count_plugin() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist/count.wasm");
    let pin = blake3::hash(&std::fs::read(&path).unwrap()).to_hex();
    format!("plugin count path=\"{}\" blake3=\"{pin}\"", path.display())
}

/// The spec as first written: `lib` and `app`, the context and the plugin
/// declared first.
const FIRST: &str = r#"kiln 1
context assets path="assets"
PLUGIN
stage lib {
    write "/x" "X"
}
stage app {
    copy "/x" "/from-lib" from=lib
    copy "logo.txt" "/logo.txt" context=assets
    wasm count "/counted" "/lib/x" "/assets/logo.txt" {
        mount "/lib" from="lib"
        mount "/assets" context="assets"
    }
}
export {
    app to="out"
}
"#;

/// The same build with a stage, a context and a plugin declared above the
/// ones it uses, and its stages in the other order.
const MOVED: &str = r#"kiln 1
context other path="other"
context assets path="assets"
plugin unused path="unused.wasm"
PLUGIN
stage first {
    write "/unused" "u"
}
stage app {
    copy "/x" "/from-lib" from=lib
    copy "logo.txt" "/logo.txt" context=assets
    wasm count "/counted" "/lib/x" "/assets/logo.txt" {
        mount "/lib" from="lib"
        mount "/assets" context="assets"
    }
}
stage lib {
    write "/x" "X"
}
export {
    app to="out"
}
"#;

#[test]
fn declarations_inserted_and_reordered_move_no_key() {
    let p = Project::new();
    p.file("assets/logo.txt", "logo\n").file("other/o", "o");
    let plugin = count_plugin();
    p.spec(&FIRST.replace("PLUGIN", &plugin));
    let r = p.build(&[]);
    r.ok();
    assert_eq!(r.ran().len(), 4, "{}", r.stderr);
    let counted = p.read("out/counted");
    p.spec(&MOVED.replace("PLUGIN", &plugin));
    let r = p.build(&[]);
    r.ok();
    assert_eq!(r.ran(), Vec::<(String, u64)>::new(), "{}", r.stderr);
    assert_eq!(r.cached(), 4, "{}", r.stderr);
    assert_eq!(p.read("out/counted"), counted);
    // Not vacuous: what the plugin mounts changes, and it runs again.
    p.spec(&MOVED.replace("PLUGIN", &plugin).replace("\"X\"", "\"XY\""));
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().contains(&("app".to_string(), 2)), "{}", r.stderr);
}

#[test]
fn a_command_s_key_names_the_stages_and_contexts_it_mounts() {
    if !sandbox_ready() {
        return;
    }
    let Some(image) = busybox() else {
        return;
    };
    let first = r#"kiln 1
context assets path="assets"
stage tool {
    write "/bin-data/x" "X"
}
stage app {
    from image="IMAGE"
    run "cat /t/x /a/logo.txt > /out; ls /c > /cache-seen" {
        mount "type=bind,from=tool,source=/bin-data,target=/t"
        mount "type=bind,context=assets,target=/a"
        mount "type=cache,target=/c,from=tool,source=/bin-data,id=keys-test"
    }
}
export {
    app to="out"
}
"#
    .replace("IMAGE", &image);
    let moved = first
        .replace(
            "context assets path=\"assets\"\n",
            "context other path=\"other\"\ncontext assets path=\"assets\"\nstage above {\n    write \"/u\" \"u\"\n}\n",
        )
        .replace("stage tool {\n    write \"/bin-data/x\" \"X\"\n}\n", "");
    let moved = moved.replace(
        "export {",
        "stage tool {\n    write \"/bin-data/x\" \"X\"\n}\nexport {",
    );
    assert!(moved.find("stage app").unwrap() < moved.find("stage tool").unwrap());
    let p = Project::new();
    p.file("assets/logo.txt", "logo\n").file("other/o", "o");
    p.spec(&first);
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().contains(&("app".to_string(), 0)), "{}", r.stderr);
    assert_eq!(p.read("out/out"), "Xlogo\n");
    p.spec(&moved);
    let r = p.build(&[]);
    r.ok();
    assert_eq!(r.ran(), Vec::<(String, u64)>::new(), "{}", r.stderr);
    // Not vacuous: the mounted stage changes, and the command runs again.
    p.spec(&moved.replace("\"X\"", "\"Y\""));
    let r = p.build(&[]);
    r.ok();
    assert!(r.ran().contains(&("app".to_string(), 0)), "{}", r.stderr);
    assert_eq!(p.read("out/out"), "Ylogo\n");
}
