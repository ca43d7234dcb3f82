//! Tests of the whole validator, through [`parse_str`] and [`load`]: the helpers here, the
//! tests by topic in the files beside. Unit tests of single parts live in their own files.

mod core_values;
mod features;
mod loading;
mod reporting;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::schema::SCHEMA;
use super::values::secs;
use super::*;

const EXAMPLE: &str = include_str!("../../../callme.conf.example");

/// The smallest valid file: only the required keys.
const MINIMAL: &str = "[asterisk]\nusername = u\nsecret = s3cr3t\n\
                       [bitrix24]\nwebhook_url = https://p.bitrix24.ru/rest/7/c0de/\n";

fn err(text: &str) -> String {
    parse_str(text, "t.conf").unwrap_err().to_string()
}

/// MINIMAL plus extra lines appended to the named section (added as a new section if absent).
fn with(section: &str, lines: &str) -> String {
    let header = format!("[{section}]\n");
    match MINIMAL.find(&header) {
        Some(i) => {
            let at = i + header.len();
            format!("{}{lines}\n{}", &MINIMAL[..at], &MINIMAL[at..])
        }
        None => format!("{MINIMAL}{header}{lines}\n"),
    }
}

/// Line number (1-based) of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
}
