//! The validator's machinery: walk the raw INI, record every problem as `FILE:LINE: ...`, and
//! fall back to defaults so one run reports all problems. What each key means is in
//! `sections.rs`; how each value is read is in `values.rs`.

use std::path::PathBuf;

use super::ini::{Entry, Ini, SECRET_KEYS};
use super::schema::{suggest, SCHEMA};
use super::values::escape_short;
use super::{Config, Error};

/// One validation run over one parsed file. Problems are collected, not returned, so that every
/// section is still checked after the first bad value; `parse_str` sorts and returns them.
pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    pub(super) ini: &'a Ini,
    pub(super) errors: Vec<Error>,
}

impl<'a> Validator<'a> {
    pub(super) fn error(&mut self, line: usize, msg: String) {
        self.errors.push(Error::Invalid {
            file: self.file.to_string(),
            line,
            msg,
        });
    }

    pub(super) fn entry(&self, section: &str, key: &str) -> Option<&'a Entry> {
        self.ini.section(section).and_then(|s| s.get(key))
    }

    /// Unknown sections and keys. Keys of an unknown section are not reported one by one:
    /// the section error already says what to fix.
    pub(super) fn check_names(&mut self) {
        let allowed_sections: Vec<&str> = SCHEMA.iter().map(|(name, _)| *name).collect();
        for section in &self.ini.sections {
            match SCHEMA.iter().find(|(name, _)| *name == section.name) {
                None => {
                    let hint = suggest(&section.name, &allowed_sections)
                        .map(|s| format!(", did you mean [{s}]?"))
                        .unwrap_or_default();
                    let list = allowed_sections
                        .iter()
                        .map(|s| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.error(
                        section.line,
                        format!(
                            "unknown section [{}]{hint} (allowed sections: {list})",
                            section.name
                        ),
                    );
                }
                Some((_, keys)) => {
                    for e in &section.entries {
                        if !keys.contains(&e.key.as_str()) {
                            let hint = suggest(&e.key, keys)
                                .map(|s| format!(", did you mean `{s}`?"))
                                .unwrap_or_default();
                            self.error(
                                e.line,
                                format!(
                                    "unknown key `{}` in [{}]{hint} (allowed keys: {})",
                                    e.key,
                                    section.name,
                                    keys.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Record a bad value. Secret values are never repeated.
    pub(super) fn bad(&mut self, section: &str, e: &Entry, why: &str) {
        let what = if SECRET_KEYS.contains(&e.key.as_str()) {
            format!("[{section}] {}", e.key)
        } else {
            format!("[{section}] {} = \"{}\"", e.key, escape_short(&e.value))
        };
        self.error(e.line, format!("{what}: {why}"));
    }

    /// A key with a default. On a bad value the error is recorded and the default returned, so
    /// validation goes on and reports every problem (the config is not returned in that case).
    pub(super) fn value<T>(
        &mut self,
        section: &str,
        key: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(e) = self.entry(section, key) else {
            return default;
        };
        match parse(&e.value) {
            Ok(v) => v,
            Err(why) => {
                self.bad(section, e, &why);
                default
            }
        }
    }

    /// An optional key: absent or empty means `None`.
    pub(super) fn optional<T>(
        &mut self,
        section: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let e = self.entry(section, key).filter(|e| !e.value.is_empty())?;
        match parse(&e.value) {
            Ok(v) => Some(v),
            Err(why) => {
                self.bad(section, e, &why);
                None
            }
        }
    }

    /// A required key: absent or empty is an error pointing at the section header.
    pub(super) fn required<T>(
        &mut self,
        section: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.entry(section, key) {
            Some(e) if e.value.is_empty() => {
                self.error(
                    e.line,
                    format!("[{section}] {key} is empty (it is required)"),
                );
                None
            }
            Some(e) => match parse(&e.value) {
                Ok(v) => Some(v),
                Err(why) => {
                    self.bad(section, e, &why);
                    None
                }
            },
            None => {
                match self.ini.section(section) {
                    Some(s) => {
                        let line = s.line;
                        self.error(
                            line,
                            format!("[{section}] {key} is missing (it is required: add `{key} = ...` to this section)"),
                        );
                    }
                    None => self.error(
                        0,
                        format!("[{section}] {key} is missing (it is required: add a [{section}] section with `{key} = ...`)"),
                    ),
                }
                None
            }
        }
    }

    /// Line to blame for a problem involving several keys: the first of them present, else the
    /// section header, else 0.
    pub(super) fn line_of(&self, section: &str, keys: &[&str]) -> usize {
        keys.iter()
            .find_map(|k| self.entry(section, k).map(|e| e.line))
            .or_else(|| self.ini.section(section).map(|s| s.line))
            .unwrap_or(0)
    }

    pub(super) fn build(&mut self) -> Option<Config> {
        let asterisk = self.asterisk();
        let bitrix24 = self.bitrix24();
        let calls = self.calls();
        let phone = self.phone();
        let http = self.http();
        let state = self.state();
        let recording = self.recording();
        let originate = self.originate(&phone);
        Some(Config {
            asterisk: asterisk?,
            bitrix24: bitrix24?,
            calls,
            phone,
            http,
            state,
            recording,
            originate,
            source: PathBuf::from(self.file),
        })
    }
}
