//! The plugin runtime: wasmtime with WASI preview 1 (and preview 2
//! `wasi:cli/command` components), one engine per build. The only module
//! that sees wasmtime.
//!
//! A guest sees its stage tree as `/` (read-write), its mounts read-only,
//! its declared args and env, a wall clock fixed at `SOURCE_DATE_EPOCH`
//! (or 0), a monotonic clock that advances one millisecond per reading,
//! and random bytes seeded from the step's key. Nothing else: no host
//! environment, no network (preview 1 has no sockets; a preview 2
//! component is denied TCP, UDP and name lookup explicitly), no path
//! outside its preopens. A time limit (epoch interruption) and a memory
//! limit (a resource limiter) bound it; its stdout and stderr are
//! captured, each up to [`OUTPUT_LIMIT`].
//!
//! A module is read once per build: the bytes whose digest keys the step
//! are the bytes that are compiled and run, so a file changed between the
//! two can never run under another module's key.
//!
//! Compiled modules are kept by wasmtime's own cache in the state
//! directory, keyed by the module's bytes, wasmtime's version and the
//! engine configuration, so a warm step costs an instantiation.

use crate::ir::{Plugin, PluginSource};
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::{Engine, InstancePre, Linker, Module, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, I32Exit, WasiCtxBuilder};

/// How much of each of stdout and stderr is kept; a guest writing more is
/// stopped.
pub const OUTPUT_LIMIT: usize = 16 << 20;

/// How often the epoch advances, the granularity of time limits.
const TICK: Duration = Duration::from_millis(10);

/// Per-store state: the WASI context and the memory limit.
struct Host {
    wasi: WasiP1Ctx,
    limits: Limits,
}

/// Per-store state for a preview 2 component.
struct HostP2 {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
    limits: Limits,
}

impl wasmtime_wasi::WasiView for HostP2 {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

struct Limits {
    memory: u64,
    /// Set when the guest asked for more memory than its limit.
    hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

/// Captured output that stops the guest (with a trap) when it would grow
/// past its limit, so a flood cannot go on until the time limit.
#[derive(Clone)]
struct Capped {
    buf: Arc<Mutex<Vec<u8>>>,
    limit: usize,
    over: Arc<AtomicBool>,
    /// For the async interface, which preview 1 does not use.
    fallback: MemoryOutputPipe,
}

impl Capped {
    fn new(limit: usize) -> Capped {
        Capped {
            buf: Arc::new(Mutex::new(Vec::new())),
            limit,
            over: Arc::new(AtomicBool::new(false)),
            fallback: MemoryOutputPipe::new(limit),
        }
    }

    fn contents(&self) -> Vec<u8> {
        let mut out = self.buf.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.extend_from_slice(&self.fallback.contents());
        out
    }

    fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    fn trap(&self) -> StreamError {
        self.over.store(true, Ordering::Relaxed);
        StreamError::Trap(wasmtime::format_err!(
            "output limit of {} bytes reached",
            self.limit
        ))
    }
}

impl wasmtime_wasi::cli::IsTerminal for Capped {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for Capped {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        self.fallback.async_stream()
    }
}

impl OutputStream for Capped {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() + bytes.len() > self.limit {
            drop(buf);
            return Err(self.trap());
        }
        buf.extend_from_slice(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        let used = self.buf.lock().unwrap_or_else(|e| e.into_inner()).len();
        if used >= self.limit {
            return Err(self.trap());
        }
        Ok(self.limit - used)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capped {
    async fn ready(&mut self) {}
}

/// A wall clock that never moves.
struct FixedWall(Duration);

impl HostWallClock for FixedWall {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// A monotonic clock that advances one millisecond each time it is read.
struct StepClock(AtomicU64);

impl HostMonotonicClock for StepClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000_000, Ordering::Relaxed)
    }
}

/// A program ready to instantiate: a preview 1 module or a preview 2
/// `wasi:cli/command` component.
pub struct Loaded {
    program: Program,
    /// The engine it was compiled for (the pooled one, or the one that
    /// allocates on demand for a module the pool cannot hold).
    engine: Engine,
}

enum Program {
    Module(InstancePre<Host>),
    Component(wasmtime_wasi::p2::bindings::sync::CommandPre<HostP2>),
}

/// A plugin's module as read: the bytes that are digested are the bytes
/// that run.
pub struct ModuleBytes {
    /// blake3, lowercase hex.
    pub digest: String,
    pub bytes: Vec<u8>,
    /// Whether the bytes were put in the content store in this build (once:
    /// storing hashes them again).
    pub stored: AtomicBool,
}

/// Why a module could not be loaded.
#[derive(Clone, Debug)]
pub enum LoadError {
    /// The file could not be read (the message names it).
    Read(String),
    Pin {
        expected: String,
        actual: String,
    },
    Invalid(String),
}

/// What a run left behind, whatever its outcome.
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How a run failed.
#[derive(Debug)]
pub enum Failure {
    Exit(i32),
    Timeout(Duration),
    Memory(u64),
    Output(&'static str),
    Trap {
        message: String,
        frames: Vec<String>,
    },
    Setup(String),
    /// The build was interrupted (Ctrl-C) while the plugin ran.
    Interrupted,
}

/// Raised from the epoch callback when the build is interrupted.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the build was interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// What one run needs.
pub struct Invocation<'a> {
    pub name: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    /// The stage tree on disk, seen as `/`.
    pub root: &'a Path,
    /// `(host dir, guest path)`, read-only.
    pub mounts: &'a [(PathBuf, String)],
    pub timeout: Duration,
    pub memory: u64,
    pub seed: [u8; 32],
    /// Seconds since the epoch for the wall clock.
    pub epoch: u64,
    /// Set when the build is interrupted: the run stops at the next tick.
    pub cancel: Arc<AtomicBool>,
}

/// Stop a store's guest when its time is up or the build is interrupted,
/// checked every epoch tick.
fn watch<T>(store: &mut Store<T>, timeout: Duration, cancel: Arc<AtomicBool>) {
    let deadline = std::time::Instant::now() + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if cancel.load(Ordering::Relaxed) {
            return Err(wasmtime::Error::new(Interrupted));
        }
        if std::time::Instant::now() >= deadline {
            return Err(Trap::Interrupt.into());
        }
        Ok(wasmtime::UpdateDeadline::Continue(1))
    });
}

/// How a plugin's module bytes are read (from the host, or from the
/// stage that builds it); the error names where.
pub type Read<'a> = dyn Fn() -> Result<Vec<u8>, String> + 'a;

/// Where a plugin's module is, as the runtime's maps key it.
fn module_key(plugin: &Plugin) -> PathBuf {
    match &plugin.source {
        PluginSource::Stage { stage, path } => PathBuf::from(format!("stage {} {path}", stage.0)),
        PluginSource::Url(url) => PathBuf::from(format!("url {url}")),
        PluginSource::Host(path) => path.clone(),
    }
}

/// A module's compilation: done once, awaited by every step that needs it.
type Compiling = std::sync::OnceLock<Result<Arc<Loaded>, LoadError>>;

pub struct Runtime {
    /// Instances from a pool (on demand where the pool cannot be made).
    main: Backend,
    /// For modules the pool cannot hold (a table or an instance larger
    /// than its slots): made when first needed.
    on_demand: std::sync::OnceLock<Result<Backend, String>>,
    cache_dir: PathBuf,
    slots: u32,
    /// Every engine made, for the epoch thread.
    engines: Arc<Mutex<Vec<Engine>>>,
    /// Modules by path, read once per build.
    modules: Mutex<HashMap<PathBuf, Result<Arc<ModuleBytes>, String>>>,
    /// Compiled modules by path: one cell each, so steps that need the
    /// same module at the same moment wait for one compilation.
    loaded: Mutex<HashMap<PathBuf, Arc<Compiling>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where compiled modules are kept for every build on this machine:
/// `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln/wasm`, else
/// `~/.cache/kiln/wasm` (wasmtime's cache, keyed by the module's bytes,
/// wasmtime's version and the compiler's settings, and trimmed by it).
/// `None` when none can be made: the state directory keeps them then.
pub fn machine_cache_dir() -> Option<PathBuf> {
    let from_env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = from_env("KILN_CACHE_DIR")
        .or_else(|| from_env("XDG_CACHE_HOME").map(|d| d.join("kiln").join("wasm")))
        .or_else(|| from_env("HOME").map(|h| h.join(".cache").join("kiln").join("wasm")))?;
    if !dir.is_absolute() {
        return None;
    }
    std::fs::create_dir_all(&dir).ok()?;
    // Writable by this user (a shared HOME may not be).
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").ok()?;
    let _ = std::fs::remove_file(probe);
    Some(dir)
}

/// The most table elements a pooled instance holds; a module asking for
/// more runs on an engine that allocates on demand.
pub const TABLE_ELEMENTS: usize = 1 << 20;

/// An engine with the linkers for it.
struct Backend {
    engine: Engine,
    pooled: bool,
    linker: Linker<Host>,
    component_linker: wasmtime::component::Linker<HostP2>,
}

impl Backend {
    fn new(cache_dir: &Path, pool: bool, slots: u32) -> Result<Backend, String> {
        let engine = config(cache_dir, pool, slots)
            .and_then(|c| Engine::new(&c))
            .map_err(|e| format!("{e:#}"))?;
        let mut linker: Linker<Host> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi)
            .map_err(|e| format!("{e:#}"))?;
        let mut component_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut component_linker)
            .map_err(|e| format!("{e:#}"))?;
        Ok(Backend {
            engine,
            pooled: pool,
            linker,
            component_linker,
        })
    }

    /// Compile `bytes` for this engine, ready to instantiate.
    fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Loaded> {
        let program = if is_component(bytes) {
            let component = wasmtime::component::Component::from_binary(&self.engine, bytes)?;
            let pre = self.component_linker.instantiate_pre(&component)?;
            Program::Component(wasmtime_wasi::p2::bindings::sync::CommandPre::new(pre)?)
        } else {
            let module = Module::from_binary(&self.engine, bytes)?;
            Program::Module(self.linker.instantiate_pre(&module)?)
        };
        Ok(Loaded {
            program,
            engine: self.engine.clone(),
        })
    }
}

/// What kiln refuses in a core module before compiling it (which takes
/// minutes for a large one): no `_start` (a reactor, not a command), or
/// imports other than WASI preview 1.
pub fn inspect(bytes: &[u8]) -> Result<(), String> {
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut start = false;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            wasmparser::Payload::ImportSection(s) => {
                for imp in s.into_imports() {
                    let imp = imp.map_err(|e| e.to_string())?;
                    if imp.module != "wasi_snapshot_preview1" {
                        imports.push(format!("{}::{}", imp.module, imp.name));
                    }
                }
            }
            wasmparser::Payload::ExportSection(s) => {
                for exp in s {
                    let exp = exp.map_err(|e| e.to_string())?;
                    start |=
                        exp.name == "_start" && matches!(exp.kind, wasmparser::ExternalKind::Func);
                    exports.push(exp.name.to_string());
                }
            }
            // Function bodies are not looked at.
            _ => {}
        }
    }
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        let more = v.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{}, and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    if !imports.is_empty() {
        return Err(format!(
            "it imports what kiln does not provide ({}); a plugin may import only WASI preview 1 (`wasi_snapshot_preview1`)",
            list(&imports)
        ));
    }
    if !start {
        return Err(format!(
            "it has no `_start`: it is a library (a WASI reactor), not a program kiln can run (it exports {})",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                list(&exports)
            }
        ));
    }
    Ok(())
}

/// The engine's configuration. With `pool`, instances come from a pooling
/// allocator sized for `slots` concurrent runs, whose memories stay mapped
/// between runs (reset by writing zeros, not by `madvise`): instantiation
/// then costs microseconds and parallel runs do not serialize on the
/// kernel's memory-map lock.
fn config(cache_dir: &Path, pool: bool, slots: u32) -> wasmtime::Result<wasmtime::Config> {
    let mut cfg = wasmtime::Config::new();
    if pool {
        let mut p = wasmtime::PoolingAllocationConfig::default();
        // A component has a few core instances and memories (adapters).
        p.total_memories(slots * 4)
            .total_tables(slots * 8)
            .total_core_instances(slots * 8)
            .total_component_instances(slots * 2)
            .total_stacks(slots * 2)
            .max_memories_per_module(1)
            .max_memory_size(4 << 30)
            // Address space only, until used: real programs (CPython's
            // reactor has a table of 47,157 functions) fit.
            .table_elements(TABLE_ELEMENTS)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10);
        cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(p))
            .memory_init_cow(false);
    }
    cfg.epoch_interruption(true)
        // The same floats on every machine.
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true);
    let mut cache = wasmtime::CacheConfig::new();
    cache.with_directory(cache_dir);
    cfg.cache(Some(wasmtime::Cache::new(cache)?));
    Ok(cfg)
}

impl Runtime {
    /// An engine whose compiled modules are cached in `cache_dir`, for up
    /// to `jobs` runs at once.
    pub fn new(cache_dir: &Path, jobs: usize) -> Result<Runtime, String> {
        let cache_dir = std::path::absolute(cache_dir).unwrap_or_else(|_| cache_dir.to_path_buf());
        let slots = (jobs.max(2) as u32).saturating_mul(2);
        // The pool reserves address space up front; where that is refused
        // (a small `ulimit -v`), instances are allocated on demand.
        let main = Backend::new(&cache_dir, true, slots)
            .or_else(|_| Backend::new(&cache_dir, false, slots))?;
        let engines = Arc::new(Mutex::new(vec![main.engine.clone()]));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engines.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kiln-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    for engine in e.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                        engine.increment_epoch();
                    }
                }
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
        Ok(Runtime {
            main,
            on_demand: std::sync::OnceLock::new(),
            cache_dir,
            slots,
            engines,
            modules: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// Whether the plugin's module is compiled (or failed to) in this build.
    pub fn is_loaded(&self, plugin: &Plugin) -> bool {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&module_key(plugin))
            .is_some_and(|c| c.get().is_some())
    }

    /// A plugin's module as read (once per build, by `read`) and its blake3.
    pub fn module(&self, plugin: &Plugin, read: &Read<'_>) -> Result<Arc<ModuleBytes>, String> {
        let mut map = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(module_key(plugin))
            .or_insert_with(|| {
                read().map(|bytes| {
                    Arc::new(ModuleBytes {
                        stored: AtomicBool::new(false),
                        digest: blake3::hash(&bytes).to_hex().to_string(),
                        bytes,
                    })
                })
            })
            .clone()
    }

    /// Load (compile, or fetch from the cache) a plugin's module, checking its pin.
    pub fn load(&self, plugin: &Plugin, read: &Read<'_>) -> Result<Arc<Loaded>, LoadError> {
        let cell = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(module_key(plugin))
            .or_default()
            .clone();
        cell.get_or_init(|| self.compile(plugin, read)).clone()
    }

    fn compile(&self, plugin: &Plugin, read: &Read<'_>) -> Result<Arc<Loaded>, LoadError> {
        let module = self.module(plugin, read).map_err(LoadError::Read)?;
        let (bytes, actual) = (&module.bytes, &module.digest);
        if let Some(expected) = &plugin.blake3
            && expected != actual
        {
            return Err(LoadError::Pin {
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
        let invalid = |e: wasmtime::Error| LoadError::Invalid(format!("{e:#}"));
        if !is_component(bytes) {
            inspect(bytes).map_err(LoadError::Invalid)?;
        }
        match self.main.compile(bytes) {
            Ok(l) => Ok(Arc::new(l)),
            // The pool sizes every instance alike; a module it cannot hold
            // (a larger table, more memories or globals than a slot) runs
            // on an engine that allocates what each instance needs. A
            // module neither can compile is reported with this error.
            Err(pooled) if self.main.pooled => match self.on_demand()? {
                Some(b) => b.compile(bytes).map(Arc::new).map_err(|_| invalid(pooled)),
                None => Err(invalid(pooled)),
            },
            Err(e) => Err(invalid(e)),
        }
    }

    /// The engine that allocates on demand, made the first time a module
    /// needs it.
    fn on_demand(&self) -> Result<Option<&Backend>, LoadError> {
        let made = self.on_demand.get_or_init(|| {
            let b = Backend::new(&self.cache_dir, false, self.slots)?;
            self.engines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(b.engine.clone());
            Ok(b)
        });
        Ok(made.as_ref().ok())
    }

    /// Run a loaded module to completion.
    pub fn run(&self, module: &Loaded, inv: &Invocation) -> (Output, Result<(), Failure>) {
        let stdout = Capped::new(OUTPUT_LIMIT);
        let stderr = Capped::new(OUTPUT_LIMIT);
        let output = |stdout: &Capped, stderr: &Capped| Output {
            stdout: stdout.contents(),
            stderr: stderr.contents(),
        };
        let mut b = WasiCtxBuilder::new();
        let mut argv = vec![inv.name.to_string()];
        argv.extend(inv.args.iter().cloned());
        b.args(&argv)
            .envs(inv.env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FixedWall(Duration::from_secs(inv.epoch)))
            .monotonic_clock(StepClock(AtomicU64::new(0)))
            .secure_random(rand::rngs::StdRng::from_seed(inv.seed))
            .insecure_random(rand::rngs::StdRng::from_seed(inv.seed))
            .insecure_random_seed(u128::from_le_bytes(
                inv.seed[..16].try_into().unwrap_or([0; 16]),
            ))
            .allow_blocking_current_thread(true)
            // Preview 2 components could open sockets: deny every use.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if let Err(e) = b.preopened_dir(inv.root, "/", FsPerms::ReadWrite) {
            return (
                output(&stdout, &stderr),
                Err(Failure::Setup(format!("{e:#}"))),
            );
        }
        for (host, guest) in inv.mounts {
            if let Err(e) = b.preopened_dir(host, guest, FsPerms::ReadOnly) {
                return (
                    output(&stdout, &stderr),
                    Err(Failure::Setup(format!("{e:#}"))),
                );
            }
        }
        let limits = Limits {
            memory: inv.memory,
            hit: false,
        };
        let (result, memory_hit) = match &module.program {
            Program::Module(pre) => {
                let mut store = Store::new(
                    &module.engine,
                    Host {
                        wasi: b.build_p1(),
                        limits,
                    },
                );
                store.limiter(|h| &mut h.limits);
                watch(&mut store, inv.timeout, inv.cancel.clone());
                let r = pre
                    .instantiate(&mut store)
                    .and_then(|i| i.get_typed_func::<(), ()>(&mut store, "_start"))
                    .and_then(|f| f.call(&mut store, ()));
                (r, store.data().limits.hit)
            }
            Program::Component(pre) => {
                let mut store = Store::new(
                    &module.engine,
                    HostP2 {
                        ctx: b.build(),
                        table: wasmtime::component::ResourceTable::new(),
                        limits,
                    },
                );
                store.limiter(|h| &mut h.limits);
                watch(&mut store, inv.timeout, inv.cancel.clone());
                let r = pre
                    .instantiate(&mut store)
                    .and_then(|c| c.wasi_cli_run().call_run(&mut store))
                    .and_then(|status| match status {
                        Ok(()) => Ok(()),
                        // A component's exit status is only success or failure.
                        Err(()) => Err(wasmtime::Error::new(I32Exit(1))),
                    });
                (r, store.data().limits.hit)
            }
        };
        let out = output(&stdout, &stderr);
        let Err(e) = result else {
            return (out, Ok(()));
        };
        if let Some(exit) = e.downcast_ref::<I32Exit>() {
            return (
                out,
                if exit.0 == 0 {
                    Ok(())
                } else {
                    Err(Failure::Exit(exit.0))
                },
            );
        }
        if e.downcast_ref::<Interrupted>().is_some() {
            return (out, Err(Failure::Interrupted));
        }
        if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
            return (out, Err(Failure::Timeout(inv.timeout)));
        }
        if memory_hit {
            return (out, Err(Failure::Memory(inv.memory)));
        }
        if stdout.over() {
            return (out, Err(Failure::Output("stdout")));
        }
        if stderr.over() {
            return (out, Err(Failure::Output("stderr")));
        }
        let frames = e
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| {
                trim_frames(
                    bt.frames()
                        .iter()
                        .map(|f| {
                            let name = f
                                .func_name()
                                .map(|n| format!("{:#}", rustc_demangle::demangle(n)))
                                .unwrap_or_else(|| format!("function #{}", f.func_index()));
                            match f.module_offset() {
                                Some(o) => format!("{name} (module offset {o:#x})"),
                                None => name,
                            }
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        let message = match e.downcast_ref::<Trap>() {
            Some(t) => t.to_string(),
            None => format!("{e}"),
        };
        (out, Err(Failure::Trap { message, frames }))
    }
}

/// Frames worth reading in a guest's backtrace: Rust names demangled
/// (without their hashes, by the caller), the panic and abort machinery
/// above the plugin's own code left out, and at most
/// [`BACKTRACE_FRAMES`] shown.
fn trim_frames(frames: Vec<String>) -> Vec<String> {
    const MACHINERY: &[&str] = &[
        "std::panicking::",
        "core::panicking::",
        "std::panic::",
        "std::sys::",
        "std::process::abort",
        "std::rt::",
        "__rust_start_panic",
        "__rust_abort",
        "__rustc::",
        "rust_panic",
        "rust_begin_unwind",
        "panic_abort::",
        "abort",
        "__wasi_proc_exit",
    ];
    let is_machinery = |f: &str| MACHINERY.iter().any(|m| f.starts_with(m));
    // The innermost frames are the panic's own: skip them up to the
    // first frame of the plugin (all of them, if nothing else is left).
    let first = frames.iter().position(|f| !is_machinery(f)).unwrap_or(0);
    let mut out: Vec<String> = frames[first..].to_vec();
    if out.len() > BACKTRACE_FRAMES {
        let more = out.len() - BACKTRACE_FRAMES;
        out.truncate(BACKTRACE_FRAMES);
        out.push(format!("… {more} more"));
    }
    out
}

/// The most backtrace frames an error shows.
const BACKTRACE_FRAMES: usize = 16;

/// A WASI preview 2 component (rather than a core module), by its header.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00]
}

#[cfg(test)]
mod tests {
    #[test]
    fn modules_kiln_cannot_run_are_refused_before_compiling() {
        let module = |text: &str| wat::parse_str(text).unwrap();
        let command = module(
            r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                (func (export "_start")))"#,
        );
        assert_eq!(inspect(&command), Ok(()));
        let reactor = module(r#"(module (func (export "_initialize")) (func (export "PyRun")))"#);
        let err = inspect(&reactor).unwrap_err();
        assert!(
            err.contains("no `_start`") && err.contains("_initialize, PyRun"),
            "{err}"
        );
        let foreign =
            module(r#"(module (import "env" "js_eval" (func)) (func (export "_start")))"#);
        let err = inspect(&foreign).unwrap_err();
        assert!(err.contains("env::js_eval"), "{err}");
        // A table the pool cannot hold is not refused: such a module runs
        // on an engine that allocates on demand.
        let big = module(&format!(
            r#"(module (table {} funcref) (func (export "_start")))"#,
            TABLE_ELEMENTS + 1
        ));
        assert_eq!(inspect(&big), Ok(()));
    }

    #[test]
    fn guest_backtraces_are_demangled_and_start_at_the_plugin_s_code() {
        let names = [
            "_ZN4core9panicking9panic_fmt17h0123456789abcdefE",
            "_ZN3std9panicking20rust_panic_with_hook17h0123456789abcdefE",
            "_ZN6plugin5parse17h0123456789abcdefE",
            "_ZN6plugin4main17h0123456789abcdefE",
            "_start",
        ];
        let frames: Vec<String> = names
            .iter()
            .map(|n| format!("{:#}", rustc_demangle::demangle(n)))
            .collect();
        let shown = trim_frames(frames);
        assert_eq!(shown, ["plugin::parse", "plugin::main", "_start"]);
        let many: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let shown = trim_frames(many);
        assert_eq!(shown.len(), BACKTRACE_FRAMES + 1);
        assert_eq!(shown.last().map(String::as_str), Some("… 24 more"));
    }

    use super::*;

    fn dist(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("plugins/dist")
            .join(format!("{name}.wasm"));
        std::fs::read(p).unwrap()
    }

    #[test]
    fn the_bytes_keyed_are_the_bytes_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wasm");
        std::fs::write(&path, dist("noop")).unwrap();
        let rt = Runtime::new(&dir.path().join("cache"), 1).unwrap();
        let mut plugin = Plugin {
            id: crate::ir::PluginId(0),
            name: "p".into(),
            source: PluginSource::Host(path.clone()),
            blake3: None,
            span: crate::diag::Span::new(crate::diag::SourceId(0), 0, 0),
        };
        let read = || std::fs::read(&path).map_err(|e| e.to_string());
        // The key is made from the module as first read...
        let keyed = rt.module(&plugin, &read).unwrap().digest.clone();
        // ...the file is replaced before the step runs...
        std::fs::write(&path, dist("count")).unwrap();
        // ...and what loads is still the module keyed: its pin holds.
        plugin.blake3 = Some(keyed.clone());
        assert!(rt.load(&plugin, &read).is_ok());
        assert_eq!(rt.module(&plugin, &read).unwrap().digest, keyed);
        assert_eq!(
            rt.module(&plugin, &read).unwrap().bytes,
            dist("noop"),
            "the module was read twice"
        );
    }
}
