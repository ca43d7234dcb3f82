//! Which step goes first when the request budget is short (issue #20).
//!
//! Bitrix24 allows about 2 requests a second (burst 50, 50 commands a batch). Under load the
//! steps due at once are more than one request can carry, and what users feel is the card of
//! a phone ringing *now*: a card that opens after the call was answered elsewhere is worse
//! than none. So across calls, the register and show of calls still in progress go first;
//! hides of live calls next; finishes, recordings and anything of a call already over last.
//! Per call nothing changes: only a call's first step is ever due, so its order is kept.

use super::outbox::{CallEntry, Step};
use crate::calls::Action;

/// Lower goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Register, adopt or show of a call that has not ended: a phone may be ringing.
    Ringing,
    /// A hide while the call goes on (answered elsewhere): tidies a screen, nobody waits.
    Tidy,
    /// Finish, recording, and every step of a call already over (its finish is queued).
    Later,
}

/// The priority of `step`, the first pending step of the call `call`.
pub fn of(step: &Step, call: Option<&CallEntry>) -> Priority {
    let over = call.is_some_and(|c| c.finishing);
    match step.action {
        _ if over => Priority::Later,
        Action::Register { .. } | Action::Adopt { .. } | Action::Show { .. } => Priority::Ringing,
        Action::Hide { .. } => Priority::Tidy,
        Action::Finish { .. } | Action::Attach { .. } => Priority::Later,
    }
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

    #[test]
    // CallEntry has private fields: no struct literal with `..Default::default()` here.
    #[allow(clippy::field_reassign_with_default)]
    fn ringing_first_then_tidy_then_later() {
        let live = CallEntry::default();
        let mut over = CallEntry::default();
        over.finishing = true;
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
        assert_eq!(of(&show, Some(&live)), Priority::Ringing);
        assert_eq!(of(&reg, Some(&live)), Priority::Ringing);
        assert_eq!(of(&reg, None), Priority::Ringing);
        assert_eq!(of(&hide, Some(&live)), Priority::Tidy);
        assert_eq!(of(&finish, Some(&live)), Priority::Later);
        // A call that is over: even its register waits behind ringing phones.
        assert_eq!(of(&reg, Some(&over)), Priority::Later);
        assert_eq!(of(&show, Some(&over)), Priority::Later);
        assert!(Priority::Ringing < Priority::Tidy && Priority::Tidy < Priority::Later);
    }
}
