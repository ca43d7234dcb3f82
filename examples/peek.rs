use callme::calls::{Tracker, TrackerConfig};
fn main() {
    for p in std::env::args().skip(1) {
        let cap = callme::replay::load(std::path::Path::new(&p)).unwrap();
        let mut t = Tracker::new(TrackerConfig::default());
        let t0 = cap.messages.first().map(|m| m.at_ms).unwrap_or(0);
        println!("== {p} ({} msgs, clock {})", cap.messages.len(), cap.clock);
        for m in &cap.messages {
            for i in t.handle_vec(&m.msg, m.at_ms) {
                println!("  +{:>6.2}s {i}", (m.at_ms - t0) as f64 / 1000.0);
            }
        }
        println!("  left: {} calls, {} channels", t.len(), t.channel_count());
    }
}
