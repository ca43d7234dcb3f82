//! The config texts the tests share, and one way to vary them: [`set`] a key in a section.
//! Written once here so that a change to the config contract is one edit, not one per test.

/// `[asterisk]` for the fake AMI on `port`: Ping every second and reconnects within a second,
/// so a test that drops the connection does not wait for production intervals.
pub fn asterisk(port: u16, secret: &str) -> String {
    format!(
        "[asterisk]\nhost = 127.0.0.1\nport = {port}\nusername = callme\nsecret = {secret}\n\
         ping_interval = 1\nreconnect_min = 0.2\nreconnect_max = 1\n"
    )
}

/// A `callme run` config against the fake AMI on `ami_port`, with `bitrix24` as the body of
/// the `[bitrix24]` section: `default_user = 201` (user 1 of the fake portal), the public and
/// the ops listener each on a free port (`Running::http_addr`, `Running::ops_addr`), and
/// `{state}` for the state directory (`Running::start` fills it in).
pub fn daemon(ami_port: u16, secret: &str, bitrix24: &str) -> String {
    format!(
        "{}[bitrix24]\n{bitrix24}\
         [calls]\ndefault_user = 201\n\
         [http]\nlisten = 127.0.0.1:0\nops_listen = 127.0.0.1:0\n\
         [state]\ndir = {{state}}\n",
        asterisk(ami_port, secret)
    )
}

/// [`daemon`] in webhook mode against the fake portal at `webhook_url`.
pub fn webhook(ami_port: u16, secret: &str, webhook_url: &str) -> String {
    daemon(
        ami_port,
        secret,
        &format!("webhook_url = {webhook_url}\ntimeout = 5\n"),
    )
}

/// The `[bitrix24]` body of app mode against the fake portal at `portal_host`
/// (`FakeBitrix::host`) over plain http (`insecure_http`: loopback only), refreshing at
/// `oauth_url` (`FakeOAuth::url`) with the fake OAuth server's client, and the user directory
/// reloaded every second.
pub fn app_bitrix24(portal_host: &str, oauth_url: &str) -> String {
    use super::fake_oauth::{CLIENT_ID, CLIENT_SECRET};
    format!(
        "auth = app\nclient_id = {CLIENT_ID}\nclient_secret = {CLIENT_SECRET}\n\
         portal = {portal_host}\ninsecure_http = yes\noauth_url = {oauth_url}\ntimeout = 5\n\
         users_refresh = 1\n"
    )
}

/// The least config that validates, for library tests that build a `Config` and never
/// connect to AMI.
pub fn offline(webhook_url: &str) -> String {
    format!("[asterisk]\nusername = u\nsecret = s\n[bitrix24]\nwebhook_url = {webhook_url}\n")
}

/// Parse a config text the tests wrote; a text that does not validate is a broken test.
pub fn parse(text: &str) -> callme::config::Config {
    callme::config::parse_str(text, "test.conf").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `text` with `key = value` in `[section]`: the key's line is replaced if the section has
/// one, otherwise the line ends the section; a missing section is added at the end.
pub fn set(text: &str, section: &str, key: &str, value: &str) -> String {
    let line = format!("{key} = {value}");
    let header = format!("[{section}]");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let Some(start) = lines.iter().position(|l| l.trim() == header) else {
        return format!("{text}{header}\n{line}\n");
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let same_key = |l: &String| l.split_once('=').is_some_and(|(k, _)| k.trim() == key);
    match lines[start + 1..end].iter().position(same_key) {
        Some(i) => lines[start + 1 + i] = line,
        None => lines.insert(end, line),
    }
    lines.join("\n") + "\n"
}
