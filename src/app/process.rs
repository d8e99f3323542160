//! Processes: local, addressable mailboxes owned by the application.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::app::shared::NodeShared;
use crate::vocab::delivery::Delivery;
use crate::vocab::error::{Error, Result};
use crate::vocab::policy::Permission;
use crate::{Instance, Pid};

use crate::app::mailbox::{Inbox, ProcessShared, encode_payload};
/// A process: a local, addressable mailbox owned by the application, and the member of groups.
///
/// Dropping it (or calling [`exit`](Self::exit)) is the process's exit: it leaves every group
/// of every scope, every occurrence, in one change per scope; its subscriptions close and its
/// instances are released. A dead process is never left behind as a member.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// use procgroups::{Node, ScopeConfig};
/// let node = Node::builder()
///     .mdns(false)
///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
///     .scope("app:pg", ScopeConfig::default())
///     .build()
///     .await?;
/// let worker = node.spawn_process();
/// let mut tasks = worker.listen("task");          // listen before joining
/// let pg = worker.open("app:pg")?;
/// pg.join("workers")?;
///
/// let boss = node.spawn_process();
/// let delivery = boss.open("app:pg")?.broadcast("workers", "task", &42u32)?;
/// assert_eq!(delivery.slots(), 1);
/// let msg = tasks.recv().await.unwrap();
/// assert_eq!((msg.from(), msg.decode::<u32>()?), (boss.pid(), 42));
/// # Ok(()) }
/// ```
pub struct Process {
    shared: Arc<ProcessShared>,
    node: Arc<NodeShared>,
}

impl Process {
    pub(crate) fn new(shared: Arc<ProcessShared>, node: Arc<NodeShared>) -> Self {
        Self { shared, node }
    }

    /// The process's address.
    pub fn pid(&self) -> Pid {
        self.shared.pid
    }

    /// Opens an instance of the scope `scope` (`"namespace:name"`): every group operation goes
    /// through it. `NotFound` if the node has no such scope; needs `pg.open` on the scope id.
    pub fn open(&self, scope: &str) -> Result<Instance> {
        self.node.check_running()?;
        crate::vocab::config::validate_scope_id(scope).map_err(|e| match e {
            crate::ConfigError::InvalidScopeId { id, reason } => {
                Error::InvalidScopeId { scope: id, reason }
            }
            other => Error::Config(other),
        })?;
        let found = self.node.scope(scope).ok_or_else(|| Error::ScopeNotFound {
            scope: scope.to_owned(),
        })?;
        self.node
            .check(self.pid(), scope, Permission::Open, scope)?;
        Ok(Instance::new(found, self.shared.clone(), self.node.clone()))
    }

    /// The messages sent to this process under `topic`, from now on.
    ///
    /// Messages for a topic nobody listens to are dropped and counted in
    /// [`dropped`](Self::dropped): listen before joining the groups whose broadcasts you
    /// want. Listening again to the same topic replaces the previous inbox (which ends).
    pub fn listen(&self, topic: &str) -> Inbox {
        self.shared.listen(topic, self.node.mailbox_capacity)
    }

    /// Sends a message to one process. The payload is encoded with CBOR.
    ///
    /// A local target that does not exist is `NotFound`. Otherwise the message is either in
    /// the target's inbox or counted in its [`dropped`](Self::dropped) (nobody listening to the
    /// topic, inbox full), as for a broadcast.
    ///
    /// A message to another node's process goes through that node's outbox and the call does
    /// not wait for it: messages to one node arrive in the order sent, a batch that fails is
    /// retried (`max_retries`, `retry_base_delay`, `retry_max_delay`), and what cannot be
    /// delivered (every attempt failed, breaker open, queue full, shutdown) is given
    /// up and counted by the sending node. The returned [`Delivery`] tells which:
    /// [`outcome`](Delivery::outcome) resolves once the target's node has acknowledged the
    /// message or it was given up, with the [`FailureReason`](crate::FailureReason). A
    /// remote process that does not exist is not an error: its node accepts the message (the
    /// delivery is [`Delivered`](crate::DeliveryOutcome::Delivered)) and drops it. A local
    /// target that exists is delivered at once. The handle may be dropped: the message goes
    /// on its way the same.
    ///
    /// `Unavailable` when the node is shut down, or when `MAX_QUEUED_FRAMES` (src/net/outbox.rs)
    /// messages wait for the network already.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        to: &Pid,
        topic: &str,
        payload: &T,
    ) -> Result<Delivery> {
        self.node.check_running()?;
        if topic.is_empty() {
            return Err(Error::EmptyTopic);
        }
        let payload = encode_payload(payload)?;
        self.node.send_to(self.pid(), to, topic, payload)
    }

    /// Messages to this process that were dropped: nobody listened to their topic, or the
    /// inbox was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Exits now; the same as dropping the process.
    pub fn exit(self) {}
}

impl Drop for Process {
    fn drop(&mut self) {
        self.node.exit_process(&self.shared);
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.pid()).finish()
    }
}
