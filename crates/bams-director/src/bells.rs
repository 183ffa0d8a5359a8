//! Waking agents' long-polls. Each waiting poll listens on its own agent's bell, and one
//! dispatcher per server rings the bells of the agents that have queued runs: when this server
//! queues work at once, and every second for runs queued by another server of the group.
//!
//! Why not one shared signal: with a thousand agents waiting, every queued run woke every
//! poll, and each woken poll tried to claim a run (a catalog write), so one minute's thousand
//! scheduled runs cost a million claims; and each poll re-checked the queue every second on
//! its own (a thousand writes a second while idle). Measured in `bench/agents.sh`: the server
//! sat at one full core and scheduling delay p99 reached 91 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// How often the queue is looked at for runs queued elsewhere (another server of the group).
pub const DISPATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Per-agent wake-up signals of the polls waiting on this server.
#[derive(Default)]
pub struct AgentBells {
    bells: Mutex<HashMap<i64, Arc<Notify>>>,
    /// Rung when this server queued agent work: the dispatcher looks at once.
    kick: Notify,
}

impl AgentBells {
    /// The bell of `agent`, for a poll to wait on (register with `Notified::enable` before
    /// looking at the queue, so a ring in between is not lost).
    pub fn bell(&self, agent: i64) -> Arc<Notify> {
        self.lock().entry(agent).or_default().clone()
    }

    /// Agents with a poll waiting; bells nobody holds any more are dropped on the way.
    pub fn waiting(&self) -> Vec<i64> {
        let mut bells = self.lock();
        bells.retain(|_, b| Arc::strong_count(b) > 1);
        bells.keys().copied().collect()
    }

    /// Wake the polls of `agents` (those not waiting are skipped).
    pub fn ring(&self, agents: &[i64]) {
        let bells = self.lock();
        for a in agents {
            if let Some(b) = bells.get(a) {
                b.notify_waiters();
            }
        }
    }

    /// Ask the dispatcher to look at the queue now (work was just queued here).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Wait for a kick or the dispatch interval, whichever comes first.
    pub(crate) async fn next_round(&self) {
        tokio::select! {
            () = self.kick.notified() => {}
            () = tokio::time::sleep(DISPATCH_INTERVAL) => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Notify>>> {
        self.bells.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ringing_one_agent_wakes_only_its_poll() {
        let bells = AgentBells::default();
        let (one, two) = (bells.bell(1), bells.bell(2));
        let (w1, w2) = (one.notified(), two.notified());
        tokio::pin!(w1, w2);
        w1.as_mut().enable();
        w2.as_mut().enable();
        bells.ring(&[1, 3]);
        tokio::time::timeout(Duration::from_secs(1), w1).await.expect("agent 1 woken");
        assert!(tokio::time::timeout(Duration::from_millis(50), w2).await.is_err(), "agent 2 stays asleep");
    }

    /// A run queued by another server of the group (another catalog handle, no kick here)
    /// wakes this server's waiting poll of that agent within the dispatch interval, and
    /// only that agent's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_queued_by_another_server_rings_the_agents_bell() {
        use bams_catalog::{Catalog, JobSpec, NewRun};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let (here, elsewhere) = (Catalog::open(&url).await.unwrap(), Catalog::open(&url).await.unwrap());
        let repo = here.add_repository("r", "/nonexistent", "/nonexistent.key").await.unwrap();
        let (busy, _) = here.create_agent("busy").await.unwrap();
        let (idle, _) = here.create_agent("idle").await.unwrap();
        let spec: JobSpec = serde_json::from_value(serde_json::json!({"name": "j", "type": "backup",
            "paths": ["/srv"], "repository": repo.id, "agent": busy.id}))
        .unwrap();
        let job = here.create_job(&spec).await.unwrap();
        let opts = crate::DirectorOptions {
            server_id: "here".into(),
            max_concurrent: 1,
            max_concurrent_per_repository: 0,
            tick: Duration::from_secs(3600),
            run_missed: false,
            agent_silence: Duration::from_secs(3600),
            server_silence: Duration::from_secs(3600),
            agent_wait: Duration::from_secs(3600),
            notifications: Default::default(),
        };
        let director = crate::Director::new(Arc::new(crate::RepoPool::new(here, dir.path())), opts);
        director.start().await.unwrap();
        let (b, i) = (director.agent_bells().bell(busy.id), director.agent_bells().bell(idle.id));
        let (wb, wi) = (b.notified(), i.notified());
        tokio::pin!(wb, wi);
        wb.as_mut().enable();
        wi.as_mut().enable();
        let run = NewRun { job_id: job.id, level: None, triggered_by: "manual".into() };
        elsewhere.queue_run(&run).await.unwrap();
        tokio::time::timeout(DISPATCH_INTERVAL * 3, wb).await.expect("the busy agent's poll is woken");
        assert!(tokio::time::timeout(DISPATCH_INTERVAL * 2, wi).await.is_err(), "the idle agent's poll sleeps on");
    }

    #[test]
    fn bells_nobody_holds_are_dropped() {
        let bells = AgentBells::default();
        let held = bells.bell(7);
        drop(bells.bell(8));
        assert_eq!(bells.waiting(), vec![7]);
        drop(held);
        assert!(bells.waiting().is_empty());
    }
}
