//! Which step goes first, and which may wait for a ride (issue #20).
//!
//! Bitrix24 allows about 2 requests a second (burst 50, 50 commands a batch). What users
//! feel is the card of a phone ringing *now*: a card that opens after the call was answered
//! elsewhere is worse than none. So across calls:
//!
//! - **urgent** steps go out at once, in the next request: the CRM look-up of a register (the
//!   register waits for it), a register with a card behind it, and a show, of calls not over;
//!   among them the ones that put a card up come before look-ups, so that under overload what
//!   was started is finished, and within each the oldest first;
//! - **waiting** steps (a hide while the call goes on, a register nobody is ringing for yet,
//!   finishes, recordings, every step of a call already over) ride along in the next urgent
//!   request's batch, and go on their own only when they have waited long enough or the
//!   bucket is nearly full (see `deliver.rs`).
//!
//! Per call nothing changes: only a call's first step is ever due, so its order is kept.

use super::outbox::{CallEntry, Step};
use crate::calls::Action;

/// Lower goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// A request that puts a card up: a register with a show behind it (the show rides in
    /// the same batch, or `SHOW=1`), a show or an adopt of a call that has not ended.
    Card,
    /// The CRM look-up a register of a call not over waits for.
    Lookup,
    /// A hide while the call goes on (answered elsewhere), or a register nobody rings for
    /// yet: nobody waits for it. Rides along.
    Tidy,
    /// Finish, recording, and every step of a call already over (its finish is queued).
    /// Rides along.
    Later,
}

impl Priority {
    /// Sent in the next request, whatever the bucket holds.
    pub fn urgent(self) -> bool {
        matches!(self, Priority::Card | Priority::Lookup)
    }
}

/// The priority of the request `method` that `step`, the first pending step of the call
/// `call`, wants next.
pub fn of(step: &Step, call: Option<&CallEntry>, method: &str) -> Priority {
    let over = call.is_some_and(|c| c.finishing);
    // The step after this one: a register with a show behind it puts a card up.
    let show_next = call
        .and_then(|c| c.steps.get(1))
        .is_some_and(|s| matches!(s.action, Action::Show { .. }));
    match step.action {
        _ if over => Priority::Later,
        Action::Register { .. } if !method.eq_ignore_ascii_case(REGISTER) => Priority::Lookup,
        Action::Register { .. } if show_next => Priority::Card,
        Action::Register { .. } => Priority::Tidy,
        Action::Adopt { .. } | Action::Show { .. } => Priority::Card,
        Action::Hide { .. } => Priority::Tidy,
        Action::Finish { .. } | Action::Attach { .. } => Priority::Later,
    }
}

const REGISTER: &str = "telephony.externalcall.register";

/// The order requests are packed in, lower first: by priority, then oldest first.
///
/// Newest first among the urgent ones was measured too (`docs/performance.md`): under
/// overload it put a few more cards up in time at 100 calls/s and fewer at 50, with much
/// later cards for the rest, and the p95 over rings of 3 s or more was "never" either way.
pub fn order(prio: Priority, queued_ms: u64) -> (Priority, u64) {
    (prio, queued_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Direction, FinishUser, Status};

    fn step(action: Action) -> Step {
        Step {
            seq: 1,
            action,
            queued_ms: 0,
        }
    }

    const LOOKUP: &str = "telephony.externalCall.searchCrmEntities";

    #[test]
    // CallEntry has private fields: no struct literal with `..Default::default()` here.
    #[allow(clippy::field_reassign_with_default)]
    fn cards_first_then_lookups_then_the_rest() {
        let show = step(Action::Show { ext: "219".into() });
        let hide = step(Action::Hide { ext: "219".into() });
        let reg = step(Action::Register {
            direction: Direction::Inbound,
            phone: "1".into(),
            line: String::new(),
            started_ms: 0,
            employee: None,
        });
        let finish = step(Action::Finish {
            user: FinishUser::Responsible,
            duration: 0,
            status: Status::ANSWERED,
        });
        let live = CallEntry::default();
        let mut ringing = CallEntry::default();
        ringing.steps = [reg.clone(), show.clone()].into();
        let mut over = CallEntry::default();
        over.finishing = true;
        assert_eq!(of(&show, Some(&live), "x"), Priority::Card);
        assert_eq!(of(&reg, Some(&ringing), REGISTER), Priority::Card);
        assert_eq!(
            of(&reg, Some(&live), REGISTER),
            Priority::Tidy,
            "nobody rings"
        );
        assert_eq!(of(&reg, Some(&live), LOOKUP), Priority::Lookup);
        assert_eq!(of(&reg, None, LOOKUP), Priority::Lookup);
        assert_eq!(of(&hide, Some(&live), "x"), Priority::Tidy);
        assert_eq!(of(&finish, Some(&live), "x"), Priority::Later);
        // A call that is over: even its register and look-up wait behind ringing phones.
        assert_eq!(of(&reg, Some(&over), LOOKUP), Priority::Later);
        assert_eq!(of(&show, Some(&over), "x"), Priority::Later);
        assert!(Priority::Card < Priority::Lookup && Priority::Lookup < Priority::Tidy);
        assert!(Priority::Card.urgent() && Priority::Lookup.urgent());
        assert!(!Priority::Tidy.urgent() && !Priority::Later.urgent());
        // By priority, then oldest first.
        assert!(order(Priority::Card, 10) < order(Priority::Card, 20));
        assert!(order(Priority::Card, 99) < order(Priority::Lookup, 0));
        assert!(order(Priority::Lookup, 99) < order(Priority::Tidy, 0));
    }
}
