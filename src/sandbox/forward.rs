//! A Unix socket in the sandbox's ids that forwards every connection to a
//! socket of the user's (an SSH agent): the sandbox's unprivileged ids
//! cannot open the user's own socket, and should not see its path.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A listening socket and the thread that forwards its connections; both
/// end when dropped.
pub struct Forward {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forward {
    /// Listen at `path` (owned by the host ids `owner`, with `mode`) and
    /// forward each connection to `target`.
    pub fn start(
        path: &Path,
        target: &Path,
        (uid, gid): (u32, u32),
        mode: u32,
    ) -> std::io::Result<Forward> {
        let listener = UnixListener::bind(path)?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))?;
        let stop = Arc::new(AtomicBool::new(false));
        let target = target.to_path_buf();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let Ok(upstream) = UnixStream::connect(&target) else {
                    continue;
                };
                pipe(conn, upstream);
            }
        });
        Ok(Forward {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

/// Copy both ways between `a` and `b` until either side closes.
fn pipe(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    fn copy(mut from: UnixStream, mut to: UnixStream) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    std::thread::spawn(move || copy(a, b2));
    std::thread::spawn(move || copy(b, a2));
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accepting thread, which then sees it should stop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_reach_the_target_and_the_socket_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("agent");
        let agent = UnixListener::bind(&target).unwrap();
        std::thread::spawn(move || {
            for c in agent.incoming().take(2) {
                let mut c = c.unwrap();
                let mut b = [0u8; 4];
                c.read_exact(&mut b).unwrap();
                c.write_all(&[b[0] + 1, b[1] + 1, b[2] + 1, b[3] + 1])
                    .unwrap();
            }
        });
        let path = dir.path().join("fwd");
        let ids = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let fwd = Forward::start(&path, &target, ids, 0o600).unwrap();
        for _ in 0..2 {
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(b"abcd").unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"bcde");
        }
        drop(fwd);
        assert!(!path.exists());
    }
}
