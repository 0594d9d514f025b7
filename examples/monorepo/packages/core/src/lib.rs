pub fn greet() -> &str { "hello" }
