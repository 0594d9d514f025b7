//! Every diagnostic's code in one place: its id (what a user sees and
//! searches for; stable across releases) and its class (which decides the
//! exit code). A diagnostic is made from one of these, so no code is
//! written twice with two classes, and control flow compares codes, not
//! strings. An id shared by two entries is one message users know in two
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
    CLI_ARG = "kiln::cli::arg", User;
    CLI_CONTEXT = "kiln::cli::context", User;
    CLI_DOCKER_FLAG = "kiln::cli::docker-flag", User;
    CLI_EMPTY = "kiln::cli::empty", User, "add a `stage NAME { … }` block";
    CLI_JOBS = "kiln::cli::jobs", User;
    CLI_OUTPUT = "kiln::cli::output", User;
    CLI_PLATFORM = "kiln::cli::platform", User;
    CLI_SECRET = "kiln::cli::secret", User;
    CLI_SIZE = "kiln::cli::size", User;
    CLI_SSH = "kiln::cli::ssh", User;
    CLI_TAG = "kiln::cli::tag", User;
    CLI_TARGET = "kiln::cli::target", User;
    CLI_UNUSED_ARG = "kiln::cli::unused-arg", User;
    CONTEXT_CHANGED = "kiln::context::changed", Build;
    CONTEXT_ESCAPE = "kiln::context::escape", User;
    CONTEXT_IGNORE = "kiln::context::ignore", User, "fix or remove the pattern";
    CONTEXT_LINK_TARGET = "kiln::context::link-target", User;
    CONTEXT_MISSING = "kiln::context::missing", User;
    CONTEXT_NAME = "kiln::context::name", User;
    CONTEXT_NOT_A_DIRECTORY = "kiln::context::not-a-directory", User;
    CONTEXT_READ = "kiln::context::read", Environment;
    CONTEXT_WALK = "kiln::context::walk", Environment;
    COPY_DEST = "kiln::copy::dest", Build;
    COPY_ESCAPE = "kiln::copy::escape", User;
    COPY_GLOB = "kiln::copy::glob", User;
    COPY_NO_MATCH = "kiln::copy::no-match", Build, "check the path; paths are relative to the context root (or the stage root with `from=`), and ignore files may exclude it";
    COPY_OWNER = "kiln::copy::owner", Build;
    COPY_SOURCE = "kiln::copy::source", Build;
    COPY_UNPACK = "kiln::copy::unpack", Build;
    COPY_UNPACK_LIMIT = "kiln::copy::unpack-limit", Build;
    DOCKERFILE_IMPORT = "kiln::dockerfile::import", User;
    DOCKERFILE_READ = "kiln::dockerfile::read", User;
    DOCKERFILE_SYNTAX = "kiln::dockerfile::syntax", User, "fix the Dockerfile; kiln reads it as Docker (BuildKit) does";
    DOCKERFILE_UNSUPPORTED = "kiln::dockerfile::unsupported", User;
    DOCKERFILE_UNUSED_ARG = "kiln::dockerfile::unused-arg", User;
    EXEC_THREADS = "kiln::exec::threads", Environment;
    EXPLAIN_NONE = "kiln::explain::none", User, "run `kiln build` first";
    EXPORT_BASE = "kiln::export::base", Environment;
    EXPORT_DANGEROUS = "kiln::export::dangerous", User;
    EXPORT_EMPTY = "kiln::export::empty", User;
    EXPORT_EXISTS = "kiln::export::exists", User;
    EXPORT_OUTSIDE = "kiln::export::outside", User;
    EXPORT_PUSH = "kiln::export::push", Environment;
    EXPORT_REMOVE = "kiln::export::remove", Environment;
    EXPORT_TWICE = "kiln::export::twice", User;
    EXPORT_UNTRUSTED = "kiln::export::untrusted", User;
    FETCH_CHECKSUM = "kiln::fetch::checksum", Build;
    FETCH_NAME = "kiln::fetch::name", User;
    FETCH_NETWORK = "kiln::fetch::network", Environment;
    FETCH_UNLOCKED = "kiln::fetch::unlocked", User;
    GC_SIZE = "kiln::gc::size", User;
    GIT_CHECKOUT = "kiln::git::checkout", Environment;
    GIT_RESOLVE = "kiln::git::resolve", Environment;
    GIT_SUBMODULE = "kiln::git::submodule", Build;
    GIT_UNLOCKED = "kiln::git::unlocked", User;
    IMAGE_REFUSED = "kiln::image::refused", Build;
    IMAGE_RESOLVE = "kiln::image::resolve", User;
    IMAGE_RESOLVE_ENV = "kiln::image::resolve", Environment;
    IMAGE_UNPACK = "kiln::image::unpack", Environment;
    IMPORT_EXISTS = "kiln::import::exists", User;
    INTERNAL = "kiln::internal", Internal;
    INTERRUPTED = "kiln::interrupted", User;
    IO = "kiln::io", Environment;
    LOCK_CONFLICT = "kiln::lock::conflict", User;
    LOCK_ENTRY = "kiln::lock::entry", User;
    LOCK_SYNTAX = "kiln::lock::syntax", User;
    LOCK_UNKNOWN = "kiln::lock::unknown", User;
    LOCK_VERSION = "kiln::lock::version", User;
    PLUGIN_EXISTS = "kiln::plugin::exists", User;
    PLUGIN_NAME = "kiln::plugin::name", User;
    RMI_UNKNOWN = "kiln::rmi::unknown", User;
    RUN_CHANGES = "kiln::run::changes", Build;
    RUN_EMPTY = "kiln::run::empty", User;
    RUN_EXIT = "kiln::run::exit", Build;
    RUN_HOST_INPUT = "kiln::run::host-input", User;
    RUN_HOST_WORKDIR = "kiln::run::host-workdir", User;
    RUN_INTERRUPTED = "kiln::run::interrupted", Build;
    RUN_LAYERS_CHANGED = "kiln::run::layers-changed", Environment;
    RUN_MOUNT = "kiln::run::mount", User;
    RUN_MOUNT_FAILED = "kiln::run::mount", Build;
    RUN_NO_PROGRAM = "kiln::run::no-program", User;
    RUN_PLATFORM = "kiln::run::platform", User;
    RUN_SANDBOX = "kiln::run::sandbox", Environment;
    RUN_SECRET = "kiln::run::secret", User;
    RUN_SECRET_ENV = "kiln::run::secret", Environment;
    RUN_SSH = "kiln::run::ssh", User;
    RUN_SSH_ENV = "kiln::run::ssh", Environment;
    RUN_TIMEOUT = "kiln::run::timeout", Build;
    RUN_USER = "kiln::run::user", Build;
    RUN_USER_WITHOUT_ROOT = "kiln::run::user-without-root", Environment, "run kiln as root (in CI, or with sudo), or run this step as `root`";
    SPEC_ARGUMENTS = "kiln::spec::arguments", User;
    SPEC_BAD_NAME = "kiln::spec::bad-name", User;
    SPEC_BAD_PIN = "kiln::spec::bad-pin", User;
    SPEC_CHECKSUM = "kiln::spec::checksum", User;
    SPEC_CHILDREN = "kiln::spec::children", User;
    SPEC_COPY_DEST = "kiln::spec::copy-dest", User;
    SPEC_COPY_SOURCE = "kiln::spec::copy-source", User;
    SPEC_CYCLE = "kiln::spec::cycle", User;
    SPEC_DUPLICATE_ARG = "kiln::spec::duplicate-arg", User;
    SPEC_DUPLICATE_CONTEXT = "kiln::spec::duplicate-context", User;
    SPEC_DUPLICATE_FROM = "kiln::spec::duplicate-from", User;
    SPEC_DUPLICATE_PLUGIN = "kiln::spec::duplicate-plugin", User;
    SPEC_DUPLICATE_PROPERTY = "kiln::spec::duplicate-property", User;
    SPEC_DUPLICATE_STAGE = "kiln::spec::duplicate-stage", User;
    SPEC_DUPLICATE_VERSION = "kiln::spec::duplicate-version", User;
    SPEC_DURATION = "kiln::spec::duration", User;
    SPEC_EMPTY = "kiln::spec::empty", User;
    SPEC_ENV_NAME = "kiln::spec::env-name", User;
    SPEC_EXPORT_COMPRESSION = "kiln::spec::export-compression", User;
    SPEC_EXPORT_FORMAT = "kiln::spec::export-format", User;
    SPEC_EXPORT_IMAGE = "kiln::spec::export-image", User;
    SPEC_EXPORT_SQUASH = "kiln::spec::export-squash", User;
    SPEC_EXPORT_TAG = "kiln::spec::export-tag", User;
    SPEC_EXPORT_WHEN = "kiln::spec::export-when", User;
    SPEC_FETCH = "kiln::spec::fetch", User;
    SPEC_GIT_REF = "kiln::spec::git-ref", User;
    SPEC_GIT_SUBDIR = "kiln::spec::git-subdir", User;
    SPEC_GIT_URL = "kiln::spec::git-url", User;
    SPEC_GLOB = "kiln::spec::glob", User;
    SPEC_HEALTHCHECK = "kiln::spec::healthcheck", User;
    SPEC_HOST_INPUT = "kiln::spec::host-input", User;
    SPEC_INCLUDE = "kiln::spec::include", User;
    SPEC_INCLUDE_CYCLE = "kiln::spec::include-cycle", User;
    SPEC_KDL_V1 = "kiln::spec::kdl-v1", User;
    SPEC_LATE_FROM = "kiln::spec::late-from", User;
    SPEC_MEMORY = "kiln::spec::memory", User;
    SPEC_MISSING_PROPERTY = "kiln::spec::missing-property", User;
    SPEC_MODE = "kiln::spec::mode", User;
    SPEC_MOUNT = "kiln::spec::mount", User;
    SPEC_MOUNT_SOURCE = "kiln::spec::mount-source", User;
    SPEC_OWNER = "kiln::spec::owner", User;
    SPEC_PLUGIN_SOURCE = "kiln::spec::plugin-source", User;
    SPEC_PLUGIN_URL = "kiln::spec::plugin-url", User;
    SPEC_PORT = "kiln::spec::port", User;
    SPEC_READ = "kiln::spec::read", User;
    SPEC_RETRIES = "kiln::spec::retries", User;
    SPEC_RUN = "kiln::spec::run", User;
    SPEC_RUN_MODE = "kiln::spec::run-mode", User;
    SPEC_RUN_MOUNT = "kiln::spec::run-mount", User;
    SPEC_SIGNAL = "kiln::spec::signal", User;
    SPEC_SUBSTITUTION = "kiln::spec::substitution", User;
    SPEC_SYNTAX = "kiln::spec::syntax", User;
    SPEC_TOO_DEEP = "kiln::spec::too-deep", User;
    SPEC_TYPE = "kiln::spec::type", User;
    SPEC_UNKNOWN_CONTEXT = "kiln::spec::unknown-context", User;
    SPEC_UNKNOWN_NODE = "kiln::spec::unknown-node", User;
    SPEC_UNKNOWN_PLUGIN = "kiln::spec::unknown-plugin", User;
    SPEC_UNKNOWN_PROPERTY = "kiln::spec::unknown-property", User;
    SPEC_UNKNOWN_STAGE = "kiln::spec::unknown-stage", User;
    SPEC_UNKNOWN_STEP = "kiln::spec::unknown-step", User;
    SPEC_UNPACK = "kiln::spec::unpack", User;
    SPEC_UNPINNED = "kiln::spec::unpinned", User;
    SPEC_VERSION = "kiln::spec::version", User;
    STATE_OWNER = "kiln::state::owner", User;
    STEP_INTERRUPTED = "kiln::step::interrupted", User;
    STEP_PATH = "kiln::step::path", Build;
    STEP_RM = "kiln::step::rm", Build;
    STORE_DAMAGED = "kiln::store::damaged", Environment;
    STORE_REPAIRED = "kiln::store::repaired", User;
    VERIFY_DIFFERS = "kiln::verify::differs", Build;
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
    WORKDIR_USER = "kiln::workdir::user", Build;
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
        }
    }
}
