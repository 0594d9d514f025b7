//! Buffered stderr for the line reporters: cache hits come by the thousand
//! in a no-op build, and a write per line would cost more than the build.
//! Lines are flushed when a stage ends or anything else happens, when the
//! buffer grows, and at least every 100 ms.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Sink {
    inner: Mutex<(Vec<u8>, Instant)>,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            inner: Mutex::new((Vec::with_capacity(64 * 1024), Instant::now())),
        }
    }
}

impl Sink {
    /// Add a line; `urgent` lines (not routine cache hits) flush at once.
    pub fn line(&self, text: &str, urgent: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.extend_from_slice(text.as_bytes());
        if !text.ends_with('\n') {
            g.0.push(b'\n');
        }
        let full = g.0.len() > 32 * 1024 || g.1.elapsed() > Duration::from_millis(100);
        drop(g);
        if urgent || full {
            self.flush();
        }
    }

    pub fn flush(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (buf, at) = &mut *g;
        let _ = std::io::stderr().write_all(buf);
        buf.clear();
        *at = Instant::now();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = std::io::stderr().write_all(&g.0);
    }
}
