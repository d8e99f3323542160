//! Waiting on a condition, with a deadline: the one way the tests wait.

use std::time::{Duration, Instant};

use procgroups::{Event, Inbox, Message, Subscription};

/// The deadline of a wait that has no reason for another: far beyond what any condition of
/// these tests takes on a loaded machine, so that only a real failure reaches it.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often [`eventually`] and [`holds_for`] look again.
const POLL: Duration = Duration::from_millis(10);

/// What a check of [`eventually`] or [`holds_for`] returns: `true` or `Ok(())` when the
/// condition holds; `Err` describes what was seen instead (shown when the wait fails).
pub trait Check {
    fn check(self) -> Result<(), String>;
}

impl Check for bool {
    fn check(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("the condition does not hold".into())
        }
    }
}

impl Check for Result<(), String> {
    fn check(self) -> Result<(), String> {
        self
    }
}

/// Looks at `check` until it holds, every 10 ms, and returns how long that took; fails the
/// test after `timeout`, naming `what` and the last thing `check` saw.
///
/// A check may block (the child processes of [`crate::support::child`] answer through
/// blocking calls): the suites that do run on a current-thread runtime, where nothing else
/// waits for the thread.
pub async fn eventually<C: Check>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> C,
) -> Duration {
    let start = Instant::now();
    loop {
        match check().check() {
            Ok(()) => return start.elapsed(),
            Err(seen) => assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Looks at `check` every 10 ms for `how_long`: it must hold every time.
pub async fn holds_for<C: Check>(what: &str, how_long: Duration, mut check: impl FnMut() -> C) {
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        if let Err(seen) = check().check() {
            panic!("no longer true: {what}; seen: {seen}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The next event of `sub`, which must come within [`WAIT`].
pub async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("an event within the timeout")
        .expect("the subscription is open")
}

/// The next message of `inbox`, which must come within [`WAIT`].
pub async fn next_message(inbox: &mut Inbox) -> Message {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("a message within the timeout")
        .expect("the inbox is open")
}

/// Runs `future` to its end on a current-thread runtime of its own: for the bodies of tests
/// that must be plain functions (those `netns::as_root` re-runs in a user namespace).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}
