//! The seccomp filter every command runs under: Docker's default profile
//! (`profiles/seccomp/default.json` in moby) for a container with Docker's
//! default capabilities, compiled to BPF with `seccompiler`.
//!
//! What it allows is an allowlist of system calls; anything else fails
//! with `EPERM`. Like Docker's: `clone` only without namespace flags,
//! `clone3` fails with `ENOSYS` (its flags cannot be inspected, and libc
//! falls back to `clone`), `personality` only for the harmless personas,
//! `socket` for every family but `AF_VSOCK`, `chroot` (Docker grants
//! `CAP_SYS_CHROOT`), `ptrace` within the sandbox's own processes. Refused,
//! as by Docker: `mount`, `umount2`, `unshare`, `setns`, `pivot_root`,
//! `keyctl`, `add_key`, `request_key`, `bpf`, `perf_event_open`,
//! `kexec_*`, `*_module`, `reboot`, `swapon`, `settimeofday`,
//! `open_by_handle_at`, `userfaultfd`, `io_uring_*` (refused by Docker
//! since 25.0) and every call not listed. Calls newer than the list (Linux
//! 6.6 and later) fail with `ENOSYS`, so that libc falls back to older ones,
//! except the few whose older forms are allowed anyway.
//!
//! Two programs are made: the allowlist, and one that answers `ENOSYS`;
//! bubblewrap installs both, and the kernel takes the `ENOSYS` of the later
//! one where both refuse. Only x86_64 and aarch64 are known here; on other
//! machines kiln refuses to run commands rather than run them unfiltered.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Namespace flags `clone` may not use (Docker's mask `0x7E020000`).
const CLONE_NAMESPACES: u64 = 0x7E02_0000;
/// `AF_VSOCK`, the one socket family refused.
const AF_VSOCK: u64 = 40;
/// Personas `personality` may set (Linux, `ADDR_NO_RANDOMIZE`'s forms, and
/// the query `0xffffffff`).
const PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// System calls added since Linux 6.5 (their numbers are the same on every
/// architecture) that are allowed: newer forms of allowed calls.
const NEWER_ALLOWED: &[(&str, i64)] = &[
    ("cachestat", 451),
    ("fchmodat2", 452),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("mseal", 462),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
];
/// The first number past the calls this filter knows; up to [`ENOSYS_END`]
/// unknown calls get `ENOSYS`.
const NEWER_FIRST: i64 = 451;
const ENOSYS_END: i64 = 512;

macro_rules! nrs {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64)),*]
    };
}

/// Docker's allowlist, the calls both architectures have.
const COMMON: &[(&str, i64)] = nrs![
    SYS_accept,
    SYS_accept4,
    SYS_adjtimex,
    SYS_bind,
    SYS_brk,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_clock_adjtime,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_dup,
    SYS_dup3,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_waitv,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_getrlimit,
    SYS_get_robust_list,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_ioctl,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_io_setup,
    SYS_io_submit,
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lgetxattr,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_madvise,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_name_to_handle_at,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_openat,
    SYS_openat2,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe2,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_mrelease,
    SYS_pselect6,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlinkat,
    SYS_readv,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_renameat,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_set_robust_list,
    SYS_setsid,
    SYS_setsockopt,
    SYS_set_tid_address,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd4,
    SYS_socketpair,
    SYS_splice,
    SYS_statfs,
    SYS_statx,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_tee,
    SYS_tgkill,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_uname,
    SYS_unlinkat,
    SYS_utimensat,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
    // Docker allows these from Linux 4.8 on (where ptrace cannot bypass
    // the filter); the sandbox's PID namespace holds only its own processes.
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_ptrace,
    // Docker's default capabilities include CAP_SYS_CHROOT.
    SYS_chroot,
];

/// Docker's allowlist, the calls only x86_64 has (the old forms).
#[cfg(target_arch = "x86_64")]
const ARCH: &[(&str, i64)] = nrs![
    SYS_access,
    SYS_alarm,
    SYS_chmod,
    SYS_chown,
    SYS_creat,
    SYS_dup2,
    SYS_epoll_create,
    SYS_epoll_ctl_old,
    SYS_epoll_wait,
    SYS_epoll_wait_old,
    SYS_eventfd,
    SYS_fork,
    SYS_futimesat,
    SYS_getdents,
    SYS_getpgrp,
    SYS_get_thread_area,
    SYS_inotify_init,
    SYS_lchown,
    SYS_link,
    SYS_lstat,
    SYS_mkdir,
    SYS_mknod,
    SYS_open,
    SYS_pause,
    SYS_pipe,
    SYS_poll,
    SYS_readlink,
    SYS_rename,
    SYS_rmdir,
    SYS_select,
    SYS_set_thread_area,
    SYS_signalfd,
    SYS_stat,
    SYS_symlink,
    SYS_time,
    SYS_unlink,
    SYS_utime,
    SYS_utimes,
    SYS_vfork,
    SYS_arch_prctl,
    SYS_modify_ldt,
];
/// x86_64's `io_pgetevents` and `map_shadow_stack`, which libc does not name.
#[cfg(target_arch = "x86_64")]
const ARCH_NUMBERED: &[(&str, i64)] = &[("io_pgetevents", 333), ("map_shadow_stack", 453)];

#[cfg(target_arch = "aarch64")]
const ARCH: &[(&str, i64)] = nrs![SYS_sync_file_range2];
#[cfg(target_arch = "aarch64")]
const ARCH_NUMBERED: &[(&str, i64)] = &[("io_pgetevents", 292)];

#[cfg(target_arch = "x86_64")]
fn target() -> Result<TargetArch, String> {
    Ok(TargetArch::x86_64)
}
#[cfg(target_arch = "aarch64")]
fn target() -> Result<TargetArch, String> {
    Ok(TargetArch::aarch64)
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH: &[(&str, i64)] = &[];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ARCH_NUMBERED: &[(&str, i64)] = &[];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn target() -> Result<TargetArch, String> {
    Err(format!(
        "kiln has no seccomp filter for {}: it runs commands on x86_64 and aarch64 only",
        std::env::consts::ARCH
    ))
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn dword(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// The allowlist: allowed calls, `EPERM` for the rest.
fn allowlist(arch: TargetArch) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in COMMON
        .iter()
        .chain(ARCH)
        .chain(ARCH_NUMBERED)
        .chain(NEWER_ALLOWED)
    {
        rules.insert(*nr, Vec::new());
    }
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![condition(
            0,
            SeccompCmpOp::MaskedEq(CLONE_NAMESPACES),
            0,
        )?])?],
    );
    // `socket`'s family is an int: its low 32 bits are compared.
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![dword(0, SeccompCmpOp::Ne, AF_VSOCK)?])?],
    );
    rules.insert(
        libc::SYS_personality,
        PERSONAS
            .iter()
            .map(|p| rule(vec![dword(0, SeccompCmpOp::Eq, *p)?]))
            .collect::<Result<_, _>>()?,
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// `ENOSYS` for `clone3` and for calls newer than the allowlist knows.
fn not_implemented(arch: TargetArch) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    let allowed: Vec<i64> = NEWER_ALLOWED
        .iter()
        .chain(ARCH_NUMBERED)
        .map(|(_, nr)| *nr)
        .collect();
    for nr in NEWER_FIRST..ENOSYS_END {
        if !allowed.contains(&nr) {
            rules.insert(nr, Vec::new());
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// A program as the bytes of `struct sock_filter`s, as `bwrap
/// --add-seccomp-fd` reads them.
fn bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for ins in program {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

/// The two programs, in the order they are installed; made once.
pub fn programs() -> Result<&'static [Vec<u8>], String> {
    static PROGRAMS: std::sync::OnceLock<Result<Vec<Vec<u8>>, String>> = std::sync::OnceLock::new();
    PROGRAMS
        .get_or_init(|| {
            let arch = target()?;
            Ok(vec![
                bytes(&allowlist(arch)?),
                bytes(&not_implemented(arch)?),
            ])
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_compile_and_fit_the_kernels_limit() {
        let programs = programs().unwrap();
        assert_eq!(programs.len(), 2);
        for p in programs {
            assert_eq!(p.len() % 8, 0);
            // BPF_MAXINSNS
            assert!(p.len() / 8 <= 4096, "{} instructions", p.len() / 8);
        }
    }

    #[test]
    fn no_call_is_listed_twice_and_dangerous_ones_are_not_listed() {
        let mut seen = std::collections::HashSet::new();
        for (name, nr) in COMMON
            .iter()
            .chain(ARCH)
            .chain(ARCH_NUMBERED)
            .chain(NEWER_ALLOWED)
        {
            assert!(seen.insert(*nr), "{name} listed twice");
        }
        for banned in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_pivot_root,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_kexec_load,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_settimeofday,
            libc::SYS_open_by_handle_at,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_personality,
        ] {
            assert!(!seen.contains(&banned), "{banned} is allowed outright");
        }
    }
}
