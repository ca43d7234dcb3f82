//! Step one of loading the config: the raw, untyped INI parse.
//!
//! The syntax follows Asterisk's own `.conf` files, which our users edit every day:
//! `[section]`, `key = value`, `;` or `#` comments, blank lines. This step knows nothing about
//! which sections and keys exist; it only records *where* every entry came from, so that the
//! validation step can point at `FILE:LINE` for every problem.
//!
//! Comment rule: `;` or `#` starts a comment at the beginning of a line (after indentation) or
//! when it follows whitespace. Glued to other text it is data, so `secret = a;b` keeps `a;b`
//! (AMI secrets and webhook codes may contain `;` or `#`) while `port = 5038 ; AMI` is `5038`.

use std::fmt;

use super::Error;

/// Keys whose values never appear in `Debug` output or error messages.
pub(crate) const SECRET_KEYS: &[&str] = &[
    "secret",
    "app_token",
    "webhook_url",
    "client_secret",
    "ops_token",
];

/// One `key = value` line.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    /// Trimmed, comment removed; may be empty.
    pub value: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// Manual so a stray `{:?}` of the raw parse cannot leak a secret.
impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = if SECRET_KEYS.contains(&self.key.as_str()) {
            &"***"
        } else {
            &self.value
        };
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("value", value)
            .field("line", &self.line)
            .finish()
    }
}

/// One `[section]` with its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub name: String,
    /// Line of the `[section]` header.
    pub line: usize,
    pub entries: Vec<Entry>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// The whole file: sections in file order, each name at most once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ini {
    pub sections: Vec<Section>,
}

impl Ini {
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// Split a list value: comma-separated, items trimmed, empty items dropped
/// (so `a, b,` and `a,,b` are both two items, and an empty value is an empty list).
pub(crate) fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Stop reporting after this many syntax errors.
const MAX_ERRORS: usize = 20;

const ALLOWED_LINES: &str =
    "allowed: [section], key = value, a comment starting with ; or #, or a blank line";

/// Parse `text`; `file` is only used in error messages.
///
/// All syntax errors in the file are collected, so one `check-config` run shows every broken line.
pub(crate) fn parse(text: &str, file: &str) -> Result<Ini, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text); // BOM from Windows editors
    let mut ini = Ini::default();
    let mut errors = Vec::new();
    // Index into ini.sections of the section being filled; None before the first header.
    let mut current: Option<usize> = None;
    let syntax = |line: usize, msg: String| Error::Syntax {
        file: file.to_string(),
        line,
        msg,
    };

    for (idx, raw) in text.lines().enumerate() {
        let n = idx + 1;
        if errors.len() >= MAX_ERRORS {
            // Most likely the wrong file (`-c /etc/asterisk/manager.conf`?): do not flood the
            // terminal or the journal.
            errors.push(syntax(
                n,
                "too many errors, stopping here (is this a callme config file?)".to_string(),
            ));
            break;
        }
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some((name, after)) = rest.split_once(']') else {
                errors.push(syntax(
                    n,
                    "section header without closing `]` (allowed: [name])".to_string(),
                ));
                continue;
            };
            let name = name.trim();
            if !after.trim().is_empty() {
                // Escaped: the name is not checked yet and may hold control characters,
                // which must not reach a terminal or the journal.
                let name = name.escape_debug();
                errors.push(syntax(
                    n,
                    format!(
                        "unexpected text after [{name}] (allowed: only a comment, e.g. `[{name}] ; note`; templates like `[x](y)` are not supported)"
                    ),
                ));
                continue;
            }
            if !is_name(name) {
                errors.push(syntax(
                    n,
                    format!(
                        "bad section name [{}] (allowed: letters, digits, _ . -)",
                        name.escape_debug()
                    ),
                ));
                continue;
            }
            if let Some(pos) = ini.sections.iter().position(|s| s.name == name) {
                errors.push(syntax(
                    n,
                    format!(
                        "duplicate section [{name}], first opened on line {} (allowed: each section once; merge them)",
                        ini.sections[pos].line
                    ),
                ));
                // Keep filling the first one so duplicate keys are still reported.
                current = Some(pos);
                continue;
            }
            ini.sections.push(Section {
                name: name.to_string(),
                line: n,
                entries: Vec::new(),
            });
            current = Some(ini.sections.len() - 1);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            let hint = if line.contains(':') {
                "; use `key = value`, not `key: value`"
            } else {
                ""
            };
            // The line itself is not echoed: it may be a mistyped secret.
            errors.push(syntax(
                n,
                format!("not a valid line ({ALLOWED_LINES}{hint})"),
            ));
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() {
            errors.push(syntax(
                n,
                format!("missing key name before `=` ({ALLOWED_LINES})"),
            ));
            continue;
        }
        if key.contains(char::is_whitespace) {
            // Not echoed: `secret abc=def` (a forgotten `=`) would show part of the secret.
            errors.push(syntax(
                n,
                "key name with spaces (allowed: letters, digits, _ . -; is an `=` missing?)"
                    .to_string(),
            ));
            continue;
        }
        if !is_name(key) {
            errors.push(syntax(
                n,
                format!(
                    "bad key name `{}` (allowed: letters, digits, _ . -)",
                    key.escape_debug()
                ),
            ));
            continue;
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            errors.push(syntax(
                n,
                format!("control character in the value of `{key}` (allowed: printable text)"),
            ));
            continue;
        }
        let Some(si) = current else {
            errors.push(syntax(
                n,
                format!("key `{key}` before any [section] (allowed: keys only inside a section such as [asterisk])"),
            ));
            continue;
        };
        let section = &mut ini.sections[si];
        if let Some(first) = section.get(key) {
            errors.push(syntax(
                n,
                format!(
                    "duplicate key `{key}` in [{}], first set on line {} (allowed: each key once per section)",
                    section.name, first.line
                ),
            ));
            continue;
        }
        section.entries.push(Entry {
            key: key.to_string(),
            value: value.to_string(),
            line: n,
        });
    }

    if errors.is_empty() {
        Ok(ini)
    } else {
        Err(Error::from_list(errors))
    }
}

/// Cut the line at the first `;` or `#` that is at the start or follows whitespace.
fn strip_comment(line: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if (c == ';' || c == '#') && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ini: &Ini, section: &str) -> Vec<(String, String, usize)> {
        ini.section(section)
            .unwrap()
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone(), e.line))
            .collect()
    }

    fn err_text(text: &str) -> String {
        parse(text, "t.conf").unwrap_err().to_string()
    }

    #[test]
    fn sections_keys_lines() {
        let ini = parse(
            "; top comment\n# another\n\n[a]\nx = 1\n  y=two words  \n[b] ; note\nz =\n",
            "t.conf",
        )
        .unwrap();
        assert_eq!(
            entries(&ini, "a"),
            vec![
                ("x".into(), "1".into(), 5),
                ("y".into(), "two words".into(), 6)
            ]
        );
        assert_eq!(ini.section("b").unwrap().line, 7);
        assert_eq!(entries(&ini, "b"), vec![("z".into(), "".into(), 8)]);
    }

    #[test]
    fn inline_comments_need_whitespace() {
        let ini = parse(
            "[a]\nk1 = v ; c\nk2 = v # c\nk3 = a;b\nk4 = a#b\nk5 = ;all comment\nk6 = a\t;tab\n",
            "t",
        )
        .unwrap();
        let vals: Vec<String> = entries(&ini, "a").into_iter().map(|e| e.1).collect();
        assert_eq!(vals, vec!["v", "v", "a;b", "a#b", "", "a"]);
    }

    #[test]
    fn crlf_and_bom() {
        let ini = parse("\u{feff}[a]\r\nk = v\r\n", "t").unwrap();
        assert_eq!(entries(&ini, "a"), vec![("k".into(), "v".into(), 2)]);
    }

    #[test]
    fn value_may_contain_equals() {
        let ini = parse("[a]\nk = x=y\n", "t").unwrap();
        assert_eq!(entries(&ini, "a")[0].1, "x=y");
    }

    #[test]
    fn garbage_line() {
        let e = err_text("[a]\nk = 1\njust words\n");
        assert!(e.starts_with("t.conf:3: not a valid line (allowed:"), "{e}");
        let e = err_text("[a]\nhost: x\n");
        assert!(e.contains("not `key: value`"), "{e}");
    }

    #[test]
    fn garbage_line_does_not_echo_content() {
        let e = err_text("[a]\nsecret s3cr3t\n");
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn key_before_section() {
        let e = err_text("k = 1\n[a]\n");
        assert!(
            e.starts_with("t.conf:1: key `k` before any [section]"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_key() {
        let e = err_text("[a]\nk = 1\n\nk = 2\n");
        assert!(
            e.starts_with("t.conf:4: duplicate key `k` in [a], first set on line 2"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_section() {
        let e = err_text("[a]\nk = 1\n[b]\n[a]\nk = 2\n");
        let lines: Vec<&str> = e.lines().collect();
        assert!(
            lines[0].starts_with("t.conf:4: duplicate section [a], first opened on line 1"),
            "{e}"
        );
        // The re-opened section still catches the duplicate key.
        assert!(lines[1].starts_with("t.conf:5: duplicate key `k`"), "{e}");
    }

    #[test]
    fn bad_headers_and_keys() {
        assert!(err_text("[a\n").starts_with("t.conf:1: section header without closing"));
        assert!(err_text("[]\n").starts_with("t.conf:1: bad section name"));
        assert!(err_text("[a](tpl)\n").starts_with("t.conf:1: unexpected text after [a]"));
        assert!(err_text("[a]\n= v\n").starts_with("t.conf:2: missing key name"));
        assert!(err_text("[a]\nmy-k€y = v\n").starts_with("t.conf:2: bad key name `my-k€y`"));
        let e = err_text("[a]\nsecret ab=cd\n");
        assert!(e.starts_with("t.conf:2: key name with spaces"), "{e}");
        assert!(!e.contains("ab"), "{e}");
        assert!(err_text("[a]\nk = a\u{0}b\n").starts_with("t.conf:2: control character"));
    }

    #[test]
    fn all_errors_reported() {
        let e = err_text("oops\n[a]\nk = 1\nk = 2\n???\n");
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(lines[0].starts_with("t.conf:1:"));
        assert!(lines[1].starts_with("t.conf:4:"));
        assert!(lines[2].starts_with("t.conf:5:"));
    }

    #[test]
    fn error_flood_is_capped() {
        let text = "garbage\n".repeat(100);
        let e = parse(&text, "t").unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), MAX_ERRORS + 1, "{e}");
        assert!(
            lines[MAX_ERRORS].starts_with("t:21: too many errors"),
            "{e}"
        );
    }

    #[test]
    fn lists() {
        assert_eq!(split_list(" a, b ,,c, "), vec!["a", "b", "c"]);
        assert!(split_list("").is_empty());
        assert!(split_list(" , ").is_empty());
    }

    /// Found by the hostile-input suite (tests/hostile_parsers.rs, seed 156): a section name
    /// with control characters followed by text was echoed raw.
    #[test]
    fn unexpected_text_after_a_section_is_escaped() {
        let e = parse("[a\u{1}\u{1b}[2Jb] x\n", "t")
            .unwrap_err()
            .to_string();
        assert!(!e.contains(char::is_control), "{e:?}");
        assert!(e.contains("[a\\u{1}\\u{1b}[2Jb]"), "{e}");
    }

    #[test]
    fn entry_debug_hides_secrets() {
        let ini = parse("[a]\nsecret = hunter2\nport = 1\n", "t").unwrap();
        let dbg = format!("{ini:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("\"1\""), "{dbg}");
    }
}
