//! Every diagnostic's code in one place: its id (what a user sees and
//! searches for; stable across releases), its class (which decides the
//! exit code) and, where what to do is the same wherever it is raised,
//! its help (a call site that knows more gives its own). A diagnostic is
//! made from one of these, so no code is written twice with two classes,
//! and control flow compares codes, not strings. An id shared by two entries is one message users know in two
//! situations (a spec that is wrong, and the same thing failing when it
//! runs).

use super::Class;

/// A diagnostic's code: its id and class (one pointer wide, so a
/// diagnostic stays small).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code(&'static Info);

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Info {
    id: &'static str,
    class: Class,
    help: Option<&'static str>,
}

impl Code {
    /// The id users see, such as `kiln::spec::syntax`.
    pub fn id(self) -> &'static str {
        self.0.id
    }

    /// The class, which decides the exit code.
    pub fn class(self) -> Class {
        self.0.class
    }

    /// What to do, when it is the same wherever the code is raised (a
    /// diagnostic's own help replaces it).
    pub fn help(self) -> Option<&'static str> {
        self.0.help
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.id)
    }
}

/// Declares each code once: its constant, its id, its class and, where
/// it is the same wherever the code is raised, its help.
macro_rules! codes {
    ($($name:ident = $id:literal, $class:ident $(, $help:literal)?;)*) => {
        impl Code {
            $(pub const $name: Code = Code(&Info {
                id: $id,
                class: Class::$class,
                help: codes!(@help $($help)?),
            });)*
        }

        /// Every code, for the test that no two entries clash.
        #[cfg(test)]
        pub(crate) const ALL: &[Code] = &[$(Code::$name),*];
    };
    (@help) => { None };
    (@help $help:literal) => { Some($help) };
}

#[rustfmt::skip]
codes! {
    CLI_ARG = "kiln::cli::arg", User, "write `--arg VERSION=1.2.3`";
    CLI_CONTEXT = "kiln::cli::context", User, "name the project's directory: `kiln build DIR`, or `-f DIR/kiln.kdl` (its directory is the context)";
    CLI_DOCKER_FLAG = "kiln::cli::docker-flag", User;
    CLI_EMPTY = "kiln::cli::empty", User, "add a `stage NAME { … }` block";
    CLI_JOBS = "kiln::cli::jobs", User;
    CLI_OUTPUT = "kiln::cli::output", User;
    CLI_PLATFORM = "kiln::cli::platform", User, "write `--platform linux/amd64` (OS/ARCH[/VARIANT])";
    CLI_SECRET = "kiln::cli::secret", User, "write `--secret id=NAME,src=FILE` or `--secret id=NAME,env=VAR`";
    CLI_SIZE = "kiln::cli::size", User, "write a size like `500MiB` or `16GiB`";
    CONFIG = "kiln::config", User, "see spec/language.md, \"Settings files\"";
    CLI_REMOTE = "kiln::cli::remote", User, "write `--remote-cache grpc://HOST:PORT` (or grpcs://), and headers as `--remote-header NAME=VALUE`";
    REMOTE_CACHE = "kiln::remote::cache", Environment, "check the address, or build without the remote cache (`--remote-cache`, `--cache-from`, `--cache-to`, the settings file)";
    CLI_SSH = "kiln::cli::ssh", User, "start an agent (`eval $(ssh-agent)`), or write `--ssh default=SOCKET`";
    CLI_TAG = "kiln::cli::tag", User;
    CLI_TARGET = "kiln::cli::target", User;
    CLI_QUERY = "kiln::cli::query", User;
    CLI_UNUSED_ARG = "kiln::cli::unused-arg", User;
    CONTEXT_CHANGED = "kiln::context::changed", Build, "run the build again once the file stops changing";
    CONTEXT_ESCAPE = "kiln::context::escape", User, "a context file cannot be a symlink to a place outside the context";
    CONTEXT_IGNORE = "kiln::context::ignore", User, "fix or remove the pattern";
    CONTEXT_LINK_TARGET = "kiln::context::link-target", User;
    CONTEXT_MISSING = "kiln::context::missing", User;
    CONTEXT_NAME = "kiln::context::name", User;
    CONTEXT_NOT_A_DIRECTORY = "kiln::context::not-a-directory", User;
    CONTEXT_READ = "kiln::context::read", Environment;
    CONTEXT_WALK = "kiln::context::walk", Environment;
    COPY_DEST = "kiln::copy::dest", Build;
    COPY_ESCAPE = "kiln::copy::escape", User, "copy sources must stay inside the context; a leading `/` means the context root";
    COPY_GLOB = "kiln::copy::glob", User;
    COPY_NO_MATCH = "kiln::copy::no-match", Build, "check the path; paths are relative to the context root (or the stage root with `from=`), and ignore files may exclude it";
    COPY_OWNER = "kiln::copy::owner", Build, "use numeric ids (`1000:1000`), or add the name to the stage first";
    COPY_SOURCE = "kiln::copy::source", Build;
    COPY_UNPACK = "kiln::copy::unpack", Build, "repair the archive, or copy it without extracting (`copy` instead of `ADD`)";
    COPY_UNPACK_LIMIT = "kiln::copy::unpack-limit", Build, "if the archive is meant to be this large, raise the limit with `kiln build --max-unpack-size SIZE`";
    DOCKERFILE_IMPORT = "kiln::dockerfile::import", User;
    DOCKERFILE_READ = "kiln::dockerfile::read", User, "check the Dockerfile's path (it is relative to the working directory)";
    DOCKERFILE_SYNTAX = "kiln::dockerfile::syntax", User, "fix the Dockerfile; kiln reads it as Docker (BuildKit) does";
    DOCKERFILE_UNSUPPORTED = "kiln::dockerfile::unsupported", User;
    DOCKERFILE_UNUSED_ARG = "kiln::dockerfile::unused-arg", User;
    EXEC_THREADS = "kiln::exec::threads", Environment;
    EXPLAIN_NONE = "kiln::explain::none", User, "run `kiln build` first";
    EXPORT_BASE = "kiln::export::base", Environment, "check that the image's registry or file can be reached; its layers go into the image exported";
    EXPORT_DANGEROUS = "kiln::export::dangerous", User;
    EXPORT_EMPTY = "kiln::export::empty", User;
    EXPORT_EXISTS = "kiln::export::exists", User;
    EXPORT_OUTSIDE = "kiln::export::outside", User, "export below the project (such as `dist/`); to write elsewhere, give the destination on the command line (`kiln build --target STAGE -o DEST`), or pass `--allow-export-outside` after reading the export block";
    EXPORT_PUSH = "kiln::export::push", Environment;
    EXPORT_REMOVE = "kiln::export::remove", Environment, "check the permissions of the destination";
    EXPORT_TWICE = "kiln::export::twice", User, "give each export its own destination";
    EXPORT_UNTRUSTED = "kiln::export::untrusted", User;
    FETCH_CHECKSUM = "kiln::fetch::checksum", Build, "the file changed at its source: check it; if the new file is right, update `checksum=` (or, for a download the lock file pins, run `kiln lock --update URL`)";
    FETCH_NAME = "kiln::fetch::name", User, "give the destination a file name";
    FETCH_NETWORK = "kiln::fetch::network", Environment, "check the URL and the network; once fetched, the file is cached by its checksum";
    FETCH_UNLOCKED = "kiln::fetch::unlocked", User, "run a build without `--locked` (or `kiln lock`) to pin it, or give the step a `checksum=`";
    GC_SIZE = "kiln::gc::size", User, "write a size like `500M` or `2G`";
    GIT_CHECKOUT = "kiln::git::checkout", Environment;
    GIT_RESOLVE = "kiln::git::resolve", Environment;
    GIT_SUBMODULE = "kiln::git::submodule", Build, "fix the repository's `.gitmodules`, or check out a commit whose submodules can be fetched";
    GIT_UNLOCKED = "kiln::git::unlocked", User, "run a build without `--locked` (or `kiln lock`) to pin it, or name a full commit id in `ref=`";
    IMAGE_REFUSED = "kiln::image::refused", Build, "the image's source sent bytes that do not match what its manifest says: check the source, or pin another image";
    IMAGE_RESOLVE = "kiln::image::resolve", User;
    IMAGE_RESOLVE_ENV = "kiln::image::resolve", Environment;
    IMAGE_UNPACK = "kiln::image::unpack", Environment, "a layer that is refused (a path out of the root, a device node) means the image is broken or hostile: use another; otherwise check the network and the disk (a damaged blob in the store is fetched again)";
    IMPORT_EXISTS = "kiln::import::exists", User, "pass `--force` to replace it, or choose another file with `-o`";
    INTERNAL = "kiln::internal", Internal, "this is a bug in kiln; please report it with the spec that triggered it";
    INTERRUPTED = "kiln::interrupted", User, "finished steps are cached: run the build again to go on";
    IO = "kiln::io", Environment;
    LOCK_CONFLICT = "kiln::lock::conflict", User, "keep the right entry and delete the other, or delete both and build again to resolve it afresh";
    LOCK_ENTRY = "kiln::lock::entry", User, "fix the entry, or delete it and build again to resolve it afresh";
    LOCK_SYNTAX = "kiln::lock::syntax", User, "delete the lock file and build again to write a new one";
    LOCK_UNKNOWN = "kiln::lock::unknown", User;
    LOCK_VERSION = "kiln::lock::version", User;
    PLUGIN_EXISTS = "kiln::plugin::exists", User, "choose another name, or pass `--dir`";
    PLUGIN_NAME = "kiln::plugin::name", User, "use lowercase letters, digits, `-` and `_`, starting with a letter";
    RMI_UNKNOWN = "kiln::rmi::unknown", User;
    RUN_CHANGES = "kiln::run::changes", Build;
    RUN_EMPTY = "kiln::run::empty", User, "give the step a command";
    RUN_EXIT = "kiln::run::exit", Build;
    RUN_HOST_INPUT = "kiln::run::host-input", User, "name host files that exist, by their absolute paths";
    RUN_HOST_WORKDIR = "kiln::run::host-workdir", User, "set a `workdir` whose first component the host does not have, such as `/work` or `/build`";
    RUN_INTERRUPTED = "kiln::run::interrupted", Build;
    RUN_LAYERS_CHANGED = "kiln::run::layers-changed", Environment, "something is changing files below the state directory's `sandbox/` folder: stop it, then build again";
    RUN_MOUNT = "kiln::run::mount", User;
    RUN_MOUNT_FAILED = "kiln::run::mount", Build;
    RUN_NO_PROGRAM = "kiln::run::no-program", User;
    RUN_PLATFORM = "kiln::run::platform", User, "build for this machine's platform (leave out `--platform`); kiln runs no emulator";
    RUN_SANDBOX = "kiln::run::sandbox", Environment;
    RUN_SECRET = "kiln::run::secret", User;
    RUN_SECRET_ENV = "kiln::run::secret", Environment;
    RUN_SSH = "kiln::run::ssh", User;
    RUN_SSH_ENV = "kiln::run::ssh", Environment;
    RUN_TIMEOUT = "kiln::run::timeout", Build;
    RUN_USER = "kiln::run::user", Build, "add the user to the stage first (`useradd`), or give numeric ids (`user \"1000:1000\"`)";
    RUN_USER_WITHOUT_ROOT = "kiln::run::user-without-root", Environment, "run kiln as root (in CI, or with sudo), or run this step as `root`";
    SPEC_ARGUMENTS = "kiln::spec::arguments", User;
    SPEC_BAD_NAME = "kiln::spec::bad-name", User;
    SPEC_BAD_PIN = "kiln::spec::bad-pin", User, "run `b3sum FILE.wasm` and paste the digest, or remove `blake3=` and run `kiln plugin pin`";
    SPEC_CHECKSUM = "kiln::spec::checksum", User, "write `checksum=\"sha256:…\"`; `sha256sum FILE` prints the digits";
    SPEC_CHILDREN = "kiln::spec::children", User;
    SPEC_COPY_DEST = "kiln::spec::copy-dest", User;
    SPEC_COPY_SOURCE = "kiln::spec::copy-source", User, "split it into two `copy` steps";
    SPEC_CYCLE = "kiln::spec::cycle", User, "a stage cannot depend on itself, directly or through others: break the loop";
    SPEC_DUPLICATE_ARG = "kiln::spec::duplicate-arg", User, "remove one declaration";
    SPEC_DUPLICATE_CONTEXT = "kiln::spec::duplicate-context", User;
    SPEC_DUPLICATE_FROM = "kiln::spec::duplicate-from", User, "keep one `from`; to combine stages use `copy … from=STAGE`";
    SPEC_DUPLICATE_PLUGIN = "kiln::spec::duplicate-plugin", User, "give each plugin its own name";
    SPEC_DUPLICATE_PROPERTY = "kiln::spec::duplicate-property", User, "keep one";
    SPEC_DUPLICATE_STAGE = "kiln::spec::duplicate-stage", User, "stage names are shared by every included file: rename one of them";
    SPEC_DUPLICATE_VERSION = "kiln::spec::duplicate-version", User;
    SPEC_DURATION = "kiln::spec::duration", User;
    SPEC_EMPTY = "kiln::spec::empty", User, "give a path, or set the arg it uses";
    SPEC_ENV_NAME = "kiln::spec::env-name", User, "names are non-empty and contain no `=`";
    SPEC_EXPORT_COMPRESSION = "kiln::spec::export-compression", User;
    SPEC_EXPORT_FORMAT = "kiln::spec::export-format", User;
    SPEC_EXPORT_IMAGE = "kiln::spec::export-image", User;
    SPEC_EXPORT_SQUASH = "kiln::spec::export-squash", User, "remove `squash=#true`";
    SPEC_EXPORT_TAG = "kiln::spec::export-tag", User;
    SPEC_EXPORT_WHEN = "kiln::spec::export-when", User, "write `when=\"success\"` (the default) or `when=\"always\"`";
    SPEC_FETCH = "kiln::spec::fetch", User, "fetch downloads over HTTP; copy local files with `copy`";
    SPEC_GIT_REF = "kiln::spec::git-ref", User, "name a branch (`ref=\"main\"`), a tag (`ref=\"v1.2.0\"`) or a full commit id";
    SPEC_GIT_SUBDIR = "kiln::spec::git-subdir", User, "write the directory relative to the repository's root, without `..`";
    SPEC_GIT_URL = "kiln::spec::git-url", User, "copy a repository already on disk from a context with `copy`";
    SPEC_GLOB = "kiln::spec::glob", User, "use `*`, `?`, `[abc]` and `**`";
    SPEC_HEALTHCHECK = "kiln::spec::healthcheck", User;
    SPEC_HOST_INPUT = "kiln::spec::host-input", User;
    SPEC_INCLUDE = "kiln::spec::include", User;
    SPEC_INCLUDE_CYCLE = "kiln::spec::include-cycle", User;
    SPEC_KDL_V1 = "kiln::spec::kdl-v1", User, "kiln reads KDL v1, but v2 is the current syntax: write `#true`/`#false`, and raw strings as `#\"…\"#`";
    SPEC_LATE_FROM = "kiln::spec::late-from", User, "move `from` to the top of the stage";
    SPEC_MEMORY = "kiln::spec::memory", User, "write a size like \"256MiB\" or \"1GiB\"";
    SPEC_MISSING_PROPERTY = "kiln::spec::missing-property", User;
    SPEC_MODE = "kiln::spec::mode", User;
    SPEC_MOUNT = "kiln::spec::mount", User, "mount at a path such as \"/mnt/src\"; `/` is the stage itself";
    SPEC_MOUNT_SOURCE = "kiln::spec::mount-source", User, "use two mounts";
    SPEC_OWNER = "kiln::spec::owner", User, "write `1000:1000` or `app:app`";
    SPEC_PLUGIN_SOURCE = "kiln::spec::plugin-source", User;
    SPEC_PLUGIN_URL = "kiln::spec::plugin-url", User, "a file on this machine is named with `path=`";
    SPEC_PORT = "kiln::spec::port", User, "write `8080`, `8080/tcp` or `53/udp`";
    SPEC_READ = "kiln::spec::read", User;
    SPEC_RETRIES = "kiln::spec::retries", User, "write `retries=3`";
    SPEC_RUN = "kiln::spec::run", User, "join them into one script, or add `exec=#true` to run a program with these arguments";
    SPEC_RUN_MODE = "kiln::spec::run-mode", User;
    SPEC_RUN_MOUNT = "kiln::spec::run-mount", User;
    SPEC_SIGNAL = "kiln::spec::signal", User, "write a name like `SIGTERM` or a number like `15`";
    SPEC_SUBSTITUTION = "kiln::spec::substitution", User;
    SPEC_SYNTAX = "kiln::spec::syntax", User;
    SPEC_TEST_NAME = "kiln::spec::test-name", User;
    SPEC_TOO_DEEP = "kiln::spec::too-deep", User, "a spec nests a stage's steps one level deep; remove the extra braces";
    SPEC_TYPE = "kiln::spec::type", User;
    SPEC_UNKNOWN_CONTEXT = "kiln::spec::unknown-context", User;
    SPEC_UNKNOWN_NODE = "kiln::spec::unknown-node", User;
    SPEC_UNKNOWN_PLUGIN = "kiln::spec::unknown-plugin", User;
    SPEC_UNKNOWN_PROPERTY = "kiln::spec::unknown-property", User;
    SPEC_UNKNOWN_STAGE = "kiln::spec::unknown-stage", User;
    SPEC_UNKNOWN_STEP = "kiln::spec::unknown-step", User;
    SPEC_UNPACK = "kiln::spec::unpack", User, "copy the archive from the stage, then extract it with a plugin";
    SPEC_UNPINNED = "kiln::spec::unpinned", User;
    SPEC_VERSION = "kiln::spec::version", User, "write `kiln 1`";
    STATE_OWNER = "kiln::state::owner", User, "build as the user who owns the project, or give a state directory of your own with `--state-dir DIR` (or `KILN_STATE_DIR`)";
    STEP_INTERRUPTED = "kiln::step::interrupted", User;
    STEP_PATH = "kiln::step::path", Build, "a path in the stage crosses a file where a directory is needed, or replaces a directory";
    STEP_RM = "kiln::step::rm", Build, "add `force=#true` to ignore missing paths";
    STORE_DAMAGED = "kiln::store::damaged", Environment;
    STORE_REPAIRED = "kiln::store::repaired", User, "if this happens again, check the disk; `kiln gc` empties the quarantine";
    TEST_FAILED = "kiln::test::failed", Build, "its output is below; the stage went on with what the test left, and the test runs again on the next build (a failed test is not cached)";
    TEST_NONE = "kiln::test::none", User, "mark a step as a test by writing `test \"COMMAND\"` where you would write `run`";
    VERIFY_DIFFERS = "kiln::verify::differs", Build, "make the step named above deterministic: no clock, no randomness, no network, sorted output";
    WASM_ENGINE = "kiln::wasm::engine", Environment;
    WASM_EXIT = "kiln::wasm::exit", Build;
    WASM_INTERRUPTED = "kiln::wasm::interrupted", Build;
    WASM_MEMORY = "kiln::wasm::memory", Build;
    WASM_DOWNLOAD = "kiln::wasm::download", User;
    WASM_MODULE = "kiln::wasm::module", User;
    WASM_MOUNT = "kiln::wasm::mount", Build;
    WASM_NAME = "kiln::wasm::name", Build;
    WASM_OUTPUT = "kiln::wasm::output", Build;
    WASM_PIN = "kiln::wasm::pin", User, "if the new module is the one you want, run `kiln plugin pin` to update the pin";
    WASM_SETUP = "kiln::wasm::setup", Build;
    WASM_TIMEOUT = "kiln::wasm::timeout", Build;
    WASM_TRAP = "kiln::wasm::trap", Build;
    WASM_UNPINNED = "kiln::wasm::unpinned", User;
    WORKDIR_USER = "kiln::workdir::user", Build, "add the user to the stage before `workdir` (`useradd`), or give numeric ids";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_each_class_is_named_once() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL {
            assert!(c.id().starts_with("kiln::"), "{}", c.id());
            assert!(
                c.id()[6..].chars().all(|ch| ch.is_ascii_lowercase()
                    || ch.is_ascii_digit()
                    || ch == ':'
                    || ch == '-'),
                "{}",
                c.id()
            );
            assert!(seen.insert((c.id(), c.class())), "{} twice", c.id());
            // Help reads as the rest of a sentence, as call sites write it.
            if let Some(h) = c.help() {
                assert!(
                    !h.is_empty() && h == h.trim() && !h.ends_with('.'),
                    "{}: {h:?}",
                    c.id()
                );
                assert!(!h.starts_with(char::is_uppercase), "{}: {h:?}", c.id());
            }
        }
    }
}
