//! Test doubles of the network layer's hosts ([`ScopeHost`], [`InboxSink`]): a scope over a
//! real core with no subscribers, and an inbox sink that records what it is given. They let a
//! unit test drive the behaviour without an application.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::net::host::{InboxSink, ScopeHost};
use crate::net::view::{ScopeNetCounters, ScopeNetView};
use crate::net::wire::Frame;
use crate::proto::messages::{SyncState, Version};
use crate::proto::{CoreConfig, Input, Outcome, Output, Refusal, ScopeCore};
use crate::testing::harness::View;
use crate::vocab::config::ScopeConfig;

/// A scope for the behaviour's unit tests: a real core, no subscribers.
pub(crate) struct TestScope {
    id: Arc<str>,
    config: ScopeConfig,
    core: Mutex<ScopeCore>,
    epoch: Instant,
    counters: ScopeNetCounters,
    /// The last view the behaviour published.
    pub(crate) view: Mutex<ScopeNetView>,
}

impl TestScope {
    pub(crate) fn new(id: &str, config: ScopeConfig, local: PeerId) -> Arc<Self> {
        let core = ScopeCore::new(local, 1, CoreConfig::from_scope(&config, 7));
        Arc::new(TestScope {
            id: id.into(),
            config,
            core: Mutex::new(core),
            epoch: Instant::now(),
            counters: ScopeNetCounters::default(),
            view: Mutex::new(ScopeNetView::default()),
        })
    }

    fn core(&self) -> std::sync::MutexGuard<'_, ScopeCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every slot the core holds, by group.
    pub(crate) fn members(&self) -> View {
        self.core().view()
    }

    /// A local process joins `group` (as the application's scope would).
    pub(crate) fn join(&self, process: u64, group: &str) {
        let groups = [group];
        let join = Input::Join {
            process,
            groups: &groups,
        };
        self.core()
            .handle(join, Duration::ZERO)
            .expect("a local join within the limits");
    }

    pub(crate) fn is_publishing(&self) -> bool {
        self.core().is_publishing()
    }
}

impl ScopeHost for TestScope {
    fn id(&self) -> &Arc<str> {
        &self.id
    }

    fn config(&self) -> &ScopeConfig {
        &self.config
    }

    fn handle(&self, input: Input<'_>, out: &mut Vec<Output>) -> Result<Outcome, Refusal> {
        let mut core = self.core();
        let result = core.handle(input, self.epoch.elapsed());
        while let Some(output) = core.poll_output() {
            if !matches!(output, Output::Changed(_)) {
                out.push(output);
            }
        }
        result
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn version(&self) -> Version {
        self.core().version()
    }

    fn sync_state(&self) -> SyncState {
        self.core().sync_state()
    }

    fn live_origins(&self) -> Vec<PeerId> {
        self.core().live_origins().collect()
    }

    fn counters(&self) -> &ScopeNetCounters {
        &self.counters
    }

    fn set_view(&self, view: ScopeNetView) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

/// An inbox sink that records every frame it is given, with its sender.
#[derive(Default)]
pub(crate) struct RecordingInbox {
    pub(crate) frames: Mutex<Vec<(PeerId, Frame)>>,
}

impl InboxSink for RecordingInbox {
    fn deliver_batch(&self, peer: PeerId, frames: Vec<Frame>, _dropped: &AtomicU64) -> u64 {
        let count = frames.iter().map(|f| f.targets.len() as u64).sum();
        let mut recorded = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        recorded.extend(frames.into_iter().map(|f| (peer, f)));
        count
    }
}
