//! A built-in stand-in for a Bitrix24 portal, for `callme replay --dry-run` and `callme demo`.
//!
//! Every request is written out (one JSON object per line, or a readable line for the demo) and
//! answered the way a real portal would answer it, so the whole delivery path runs with no
//! network: a few employees (internal numbers 100, 219, 220, 221), one CRM contact
//! (79991234567, responsible: user 1) and one lead (79997654321, the lab's second caller,
//! responsible: user 19), so the captures of both lab callers register with a CRM owner.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::bitrix::{Error, Reply, Transport};

/// How requests are written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"method": "...", "params": {...}}` per line: the `replay --dry-run` contract.
    JsonLines,
    /// `    → method {params}` for the demo's timeline.
    Timeline,
}

/// `(user id, internal number, name)` of the built-in employees.
pub const USERS: &[(u64, &str, &str)] = &[
    (1, "100", "Ivan Petrov"),
    (19, "219", "Anna Smirnova"),
    (20, "220", "Boris Volkov"),
    (21, "221", "Olga Kuznetsova"),
];

/// The one CRM contact: `(phone digits, contact id, responsible user id)`.
pub const CONTACT: (&str, u64, u64) = ("79991234567", 42, 1);

/// The one CRM lead: `(phone digits, lead id, responsible user id)`. Its owner is a user who
/// never touches the v/w captures' calls, so a replay shows who registers and who finishes.
pub const LEAD: (&str, u64, u64) = ("79997654321", 7, 19);

#[derive(Default)]
struct Portal {
    next_call: u64,
    active: HashSet<String>,
    requests: u64,
}

pub struct DryRun {
    out: Mutex<Box<dyn Write + Send>>,
    format: Format,
    state: Mutex<Portal>,
}

impl DryRun {
    pub fn new(out: Box<dyn Write + Send>, format: Format) -> DryRun {
        DryRun {
            out: Mutex::new(out),
            format,
            state: Mutex::new(Portal::default()),
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.state.lock().map(|s| s.requests).unwrap_or(0)
    }

    fn write(&self, method: &str, params: &Value) {
        let line = match self.format {
            Format::JsonLines => json!({ "method": method, "params": params }).to_string(),
            Format::Timeline => format!("          → {method} {params}"),
        };
        if let Ok(mut out) = self.out.lock() {
            // A closed stdout (`| head`) must not panic the replay.
            let _ = writeln!(out, "{line}");
        }
    }

    fn answer(&self, method: &str, params: &Value) -> Result<Value, Error> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| Error::Decode("poisoned".into()))?;
        st.requests += 1;
        let call_id = params.get("CALL_ID").and_then(Value::as_str).unwrap_or("");
        let not_found = || Error::Api {
            status: 400,
            code: String::new(),
            description: "Call is not found (call should be registered prior to finishing".into(),
        };
        Ok(match method.to_ascii_lowercase().as_str() {
            "user.get" => Value::Array(
                USERS
                    .iter()
                    .map(|(id, inner, name)| {
                        json!({"ID": id.to_string(), "ACTIVE": true, "NAME": name, "UF_PHONE_INNER": inner})
                    })
                    .collect(),
            ),
            "telephony.externalcall.searchcrmentities" => {
                let number = digits(params.get("PHONE_NUMBER"));
                if number == CONTACT.0 {
                    json!([{"CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": CONTACT.1,
                            "ASSIGNED_BY_ID": CONTACT.2.to_string(), "NAME": "Demo Client"}])
                } else if number == LEAD.0 {
                    json!([{"CRM_ENTITY_TYPE": "LEAD", "CRM_ENTITY_ID": LEAD.1,
                            "ASSIGNED_BY_ID": LEAD.2.to_string(), "NAME": "Demo Lead"}])
                } else {
                    json!([])
                }
            }
            "crm.duplicate.findbycomm" => {
                let has = |number: &str| {
                    params
                        .get("values")
                        .and_then(Value::as_array)
                        .is_some_and(|v| v.iter().any(|x| digits(Some(x)) == number))
                };
                if has(CONTACT.0) {
                    json!({"CONTACT": [CONTACT.1]})
                } else if has(LEAD.0) {
                    json!({"LEAD": [LEAD.1]})
                } else {
                    json!([])
                }
            }
            "crm.contact.get" => json!({"ID": CONTACT.1.to_string(), "ASSIGNED_BY_ID": CONTACT.2.to_string()}),
            "crm.lead.get" => json!({"ID": LEAD.1.to_string(), "ASSIGNED_BY_ID": LEAD.2.to_string()}),
            "telephony.externalcall.register" => {
                st.next_call += 1;
                let id = format!("externalCall.dryrun{:04}.{}", st.next_call, st.next_call);
                st.active.insert(id.clone());
                json!({"CALL_ID": id, "CRM_CREATED_LEAD": null, "CRM_CREATED_ENTITIES": [],
                       "CRM_ENTITY_TYPE": "CONTACT", "CRM_ENTITY_ID": CONTACT.1})
            }
            "telephony.externalcall.show" | "telephony.externalcall.hide" => {
                Value::Bool(st.active.contains(call_id))
            }
            "telephony.externalcall.finish" => {
                if !st.active.remove(call_id) {
                    return Err(not_found());
                }
                json!({"CALL_ID": call_id, "CALL_DURATION": params.get("DURATION"),
                       "CALL_FAILED_CODE": params.get("STATUS_CODE")})
            }
            "telephony.externalcall.attachrecord" => json!({"FILE_ID": 1}),
            _ => {
                return Err(Error::Api {
                    status: 404,
                    code: "ERROR_METHOD_NOT_FOUND".into(),
                    description: "Method not found!".into(),
                })
            }
        })
    }
}

fn digits(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

impl Transport for DryRun {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, Error> {
        self.write(method, params);
        let result = self.answer(method, params)?;
        Ok(Reply {
            result,
            next: None,
            total: None,
        })
    }
}
