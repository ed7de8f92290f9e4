//! Placeholder replaced by the benchmark (issue 5).
fn main() {}
