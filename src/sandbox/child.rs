//! What the child process does between `fork` and the `exec` of
//! bubblewrap: the only unsafe code of kiln, kept to raw system calls that
//! are safe to make in a forked child (no allocation, no locks).
//!
//! As root, in order: enter a mount namespace of the child's own (so what
//! it mounts dies with the sandbox, whatever happens to kiln, and no other
//! process ever sees it); mount the packed layers' images (EROFS) on
//! their directories there, then the stage's overlay; open every path
//! the sandbox shows (the tree, mount sources); cover `/tmp` with a fresh
//! tmpfs and bind each opened path there, as `/tmp/kiln-N` (bubblewrap
//! starts as an unprivileged id, which could not reach them in the state
//! directory, which only root may enter); become that unprivileged id.
//! Always: move the descriptors kiln hands on to 3, 4, …, and mark every
//! other descriptor close-on-exec, so nothing kiln's caller or kiln left
//! open reaches bubblewrap or the command. A failing step is reported by
//! its number on `report`, with the system's error.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Where the paths the sandbox shows are bound in the child: `/tmp/kiln-N`.
pub fn staged(n: usize) -> String {
    format!("/tmp/kiln-{n}")
}

/// What the child mounts (as root).
pub struct Stage {
    /// The overlay: where to mount it, and overlayfs's options.
    pub overlay: Option<(CString, CString)>,
    /// The directory the overlay's lower layers are named relative to.
    pub overlay_dir: Option<CString>,
    /// Packed layers: each EROFS image and the lower it is mounted on,
    /// read-only, before the overlay.
    pub packed: Vec<(CString, CString)>,
    /// Paths to show, bound at [`staged`]`(N)` in this order (the tree
    /// first: the merged overlay, a directory below it, or a directory).
    pub paths: Vec<CString>,
    /// Their places, [`staged`] as C strings.
    pub places: Vec<CString>,
}

/// What the child does before `exec`.
pub struct Launch {
    pub stage: Option<Stage>,
    /// Descriptors of kiln's (kept open by the caller until spawned),
    /// handed on as 3, 4, … in this order.
    pub fds: Vec<RawFd>,
    /// Host `(uid, gid, groups)` to become.
    pub become_ids: Option<(u32, u32, Vec<u32>)>,
    /// The write end of a close-on-exec pipe for a failing step's number.
    pub report: RawFd,
}

/// The steps that can fail, as reported.
pub const STEPS: &[&str] = &[
    "",
    "entering a mount namespace",
    "making the mounts private",
    "mounting the stage's tree (overlayfs)",
    "opening what the sandbox shows",
    "covering /tmp",
    "making a mount point",
    "binding what the sandbox shows",
    "passing descriptors",
    "setting the groups",
    "setting the group id",
    "setting the user id",
    "closing inherited descriptors",
    "mounting a packed layer (erofs)",
];

/// The step that mounts packed layers (see [`STEPS`]).
pub const PACKED_STEP: usize = 13;

/// Arrange for `command`'s child to do what `launch` says.
pub fn install(command: &mut Command, launch: Launch) {
    let groups: Vec<libc::gid_t> = launch
        .become_ids
        .as_ref()
        .map(|(_, _, g)| g.clone())
        .unwrap_or_default();
    let n = launch.stage.as_ref().map_or(0, |s| s.paths.len());
    let mut opened: Vec<RawFd> = vec![-1; n];
    let mut hi: Vec<RawFd> = vec![-1; launch.fds.len()];
    // SAFETY: the closure runs in the forked child before `exec`. It only
    // makes system calls (through `libc`), reads data prepared before the
    // fork (`launch`, `groups`) and writes into `opened` and `hi`,
    // allocated before the fork with room for every descriptor: no
    // allocation, no lock, nothing another thread of the parent could
    // have held at the fork.
    unsafe {
        command.pre_exec(move || setup(&launch, &groups, &mut opened, &mut hi));
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Report step `step` failed with `err`, and fail.
fn fail(report: RawFd, step: u8, err: i32) -> std::io::Result<()> {
    // SAFETY: `report` is a descriptor of this process; the buffer lives
    // on the stack for the call.
    unsafe {
        libc::write(report, [step].as_ptr().cast(), 1);
    }
    Err(std::io::Error::from_raw_os_error(err))
}

/// `/proc/self/fd/N` as a C string, in `buf` (no allocation).
fn fd_path(fd: RawFd, buf: &mut [u8; 32]) -> *const libc::c_char {
    let prefix = b"/proc/self/fd/";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[prefix.len() + i] = digits[len - 1 - i];
    }
    buf[prefix.len() + len] = 0;
    buf.as_ptr().cast()
}

fn mount_stage(stage: &Stage, report: RawFd, opened: &mut [RawFd]) -> std::io::Result<()> {
    // SAFETY: system calls on C strings prepared before the fork and on
    // buffers on the stack; the child is single-threaded, so unsharing its
    // mount namespace affects it alone, and nothing it mounts is seen by
    // any other process.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return fail(report, 1, errno());
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return fail(report, 2, errno());
        }
        // The working directory is kiln's again after the mount: the
        // paths below may be relative to it.
        let mut back = -1;
        if let Some(dir) = &stage.overlay_dir {
            back = libc::open(
                c".".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if back < 0 || libc::chdir(dir.as_ptr()) != 0 {
                return fail(report, 3, errno());
            }
        }
        for (image, on) in &stage.packed {
            if libc::mount(
                image.as_ptr(),
                on.as_ptr(),
                c"erofs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NODEV,
                std::ptr::null(),
            ) != 0
            {
                return fail(report, PACKED_STEP as u8, errno());
            }
        }
        if let Some((merged, options)) = &stage.overlay
            && libc::mount(
                c"overlay".as_ptr(),
                merged.as_ptr(),
                c"overlay".as_ptr(),
                0,
                options.as_ptr().cast(),
            ) != 0
        {
            return fail(report, 3, errno());
        }
        if back >= 0 {
            if libc::fchdir(back) != 0 {
                return fail(report, 3, errno());
            }
            libc::close(back);
        }
        // Opened before `/tmp` is covered: a state directory may be there.
        for (i, p) in stage.paths.iter().enumerate() {
            let fd = libc::open(p.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                return fail(report, 4, errno());
            }
            opened[i] = fd;
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755".as_ptr().cast(),
        ) != 0
        {
            return fail(report, 5, errno());
        }
        for (i, place) in stage.places.iter().enumerate() {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(opened[i], &mut st) != 0 {
                return fail(report, 4, errno());
            }
            let made = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mkdir(place.as_ptr(), 0o755)
            } else {
                let f = libc::open(
                    place.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                if f >= 0 {
                    libc::close(f);
                    0
                } else {
                    -1
                }
            };
            if made != 0 {
                return fail(report, 6, errno());
            }
            let mut buf = [0u8; 32];
            if libc::mount(
                fd_path(opened[i], &mut buf),
                place.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return fail(report, 7, errno());
            }
            libc::close(opened[i]);
        }
    }
    Ok(())
}

fn setup(
    launch: &Launch,
    groups: &[libc::gid_t],
    opened: &mut [RawFd],
    hi: &mut [RawFd],
) -> std::io::Result<()> {
    let free = 3 + launch.fds.len() as RawFd;
    // The report pipe must outlive the descriptors moved to 3, 4, ….
    // SAFETY: plain fcntl on a descriptor of this process.
    let report = unsafe { libc::fcntl(launch.report, libc::F_DUPFD_CLOEXEC, free) };
    if report < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if let Some(stage) = &launch.stage {
        mount_stage(stage, report, opened)?;
    }
    // Every descriptor is first copied past the targets, so that moving
    // one to its number never closes another still to be moved.
    for (i, fd) in launch.fds.iter().enumerate() {
        // SAFETY: plain fcntl on a descriptor of this process.
        let copy = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, free) };
        if copy < 0 {
            return fail(report, 8, errno());
        }
        hi[i] = copy;
    }
    for (i, fd) in hi.iter().enumerate() {
        // SAFETY: dup2 between descriptors of this process; the target
        // loses close-on-exec, the copy past the targets keeps it.
        if unsafe { libc::dup2(*fd, 3 + i as RawFd) } < 0 {
            return fail(report, 8, errno());
        }
    }
    if let Some((uid, gid, _)) = &launch.become_ids {
        // SAFETY: credential system calls with prepared arguments; the
        // child is single-threaded, so they change the whole process.
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                return fail(report, 9, errno());
            }
            if libc::setresgid(*gid, *gid, *gid) != 0 {
                return fail(report, 10, errno());
            }
            if libc::setresuid(*uid, *uid, *uid) != 0 {
                return fail(report, 11, errno());
            }
        }
    }
    // Everything else closes at exec: what kiln's caller left open, and
    // what kiln opened without close-on-exec.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only marks descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            free as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r != 0 {
        // Kernels before 5.11: one descriptor at a time, up to the limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct on the stack.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return fail(report, 12, errno());
        }
        let max = lim.rlim_cur.min(1 << 20) as RawFd;
        for fd in free..max {
            // SAFETY: fcntl on a number that may or may not be open; EBADF
            // is expected for the closed ones.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_paths_are_written_without_allocating() {
        let mut buf = [0u8; 32];
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let p = fd_path(fd, &mut buf);
            // SAFETY: `fd_path` wrote a NUL-terminated string into `buf`.
            let got = unsafe { std::ffi::CStr::from_ptr(p) };
            assert_eq!(got.to_str().unwrap(), want);
        }
    }
}
