//! Logging setup for every subcommand: `env_logger` on stderr, no timestamps (journald stamps
//! each line itself).

/// `RUST_LOG` wins when set. Otherwise `info`, or `debug` for our own modules with `--debug`.
/// ureq and rustls stay at `info` whatever is asked: at trace level ureq prints request paths,
/// and a webhook path contains its secret code.
pub fn init(debug: bool) {
    let ours = if debug { "debug" } else { "info" };
    let default = format!("{ours},ureq=info,ureq_proto=info,rustls=info");
    let mut b = env_logger::Builder::new();
    b.parse_filters(&default);
    if let Ok(env) = std::env::var("RUST_LOG") {
        b.parse_filters(&env);
        b.filter_module("ureq", log::LevelFilter::Info);
        b.filter_module("ureq_proto", log::LevelFilter::Info);
        b.filter_module("rustls", log::LevelFilter::Info);
    }
    b.format_timestamp(None); // journald stamps every line itself
    let _ = b.try_init();
    crate::panic_hook::install();
}
