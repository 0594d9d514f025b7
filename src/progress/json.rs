//! Newline-delimited JSON events on stderr, one object per line, each with
//! `t_ms` (milliseconds since the build started) and `event`.

use super::{Event, Reporter};
use std::io::Write;
use std::sync::Mutex;

pub struct Json {
    out: Mutex<std::io::Stderr>,
}

impl Json {
    pub fn new() -> Json {
        Json {
            out: Mutex::new(std::io::stderr()),
        }
    }
}

impl Default for Json {
    fn default() -> Self {
        Json::new()
    }
}

impl Reporter for Json {
    fn event(&self, at_ms: f64, event: &Event) {
        let mut v = serde_json::to_value(event).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "t_ms".into(),
                serde_json::json!((at_ms * 1000.0).round() / 1000.0),
            );
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{v}");
    }

    fn println(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = write!(out, "{text}");
        if !text.ends_with('\n') {
            let _ = writeln!(out);
        }
    }
}
