//! Newline-delimited JSON events on stderr, one object per line, each with
//! `t_ms` (milliseconds since the build started) and `event`.

use super::sink::Sink;
use super::{Event, Reporter};

pub struct Json {
    out: Sink,
}

impl Json {
    pub fn new() -> Json {
        Json {
            out: Sink::default(),
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
        self.out.line(&v.to_string(), !event.routine());
    }

    fn println(&self, text: &str) {
        self.out.line(text, true);
    }

    fn finish(&self) {
        self.out.flush();
    }
}
