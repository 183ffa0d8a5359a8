//! The same catalog scenario on SQLite and on a real PostgreSQL cluster, plus the scale-out
//! claim: two catalogs (as two servers) over one PostgreSQL never fire or run a job twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bams_catalog::*;

async fn scenario(cat: &Catalog) {
    // Users and roles.
    let admin = cat.create_user("admin", "long enough pw", Role::Admin).await.unwrap();
    assert!(matches!(cat.create_user("admin", "long enough pw", Role::Viewer).await, Err(CatalogError::Conflict(_))));
    assert!(matches!(cat.create_user("bad name", "long enough pw", Role::Viewer).await, Err(CatalogError::Invalid(_))));
    assert!(matches!(cat.create_user("shorty", "short", Role::Viewer).await, Err(CatalogError::Invalid(_))));
    let op = cat.create_user("op", "operator pass", Role::Operator).await.unwrap();
    assert_eq!(cat.count_users().await.unwrap(), 2);
    assert!(cat.check_login("admin", "long enough pw").await.unwrap().is_some());
    assert!(cat.check_login("admin", "wrong password").await.unwrap().is_none());
    assert!(cat.check_login("nobody", "long enough pw").await.unwrap().is_none());
    cat.set_password("op", "a new password").await.unwrap();
    assert!(cat.check_login("op", "a new password").await.unwrap().is_some());
    assert!(matches!(cat.update_user(admin.id, Some(Role::Viewer), None).await, Err(CatalogError::Conflict(_))));
    assert!(matches!(cat.delete_user(admin.id).await, Err(CatalogError::Conflict(_))));
    let op = cat.update_user(op.id, None, Some(true)).await.unwrap();
    assert!(op.disabled);
    assert!(cat.check_login("op", "a new password").await.unwrap().is_none(), "disabled users cannot log in");
    cat.update_user(op.id, None, Some(false)).await.unwrap();

    // Tokens: shown once, stored hashed, revocable, expiring; sessions carry CSRF.
    let (tok, secret, csrf) =
        cat.create_token(op.id, TokenKind::Api, "ci", TokenScope::AppendOnly, None).await.unwrap();
    assert!(csrf.is_none());
    let auth = cat.authenticate(&secret).await.unwrap().expect("valid token");
    assert_eq!(auth.user.username, "op");
    assert_eq!(auth.token.scope, TokenScope::AppendOnly);
    assert!(cat.authenticate("bams_t_0000").await.unwrap().is_none());
    let (_, ssecret, scsrf) = cat
        .create_token(admin.id, TokenKind::Session, "login", TokenScope::Full, Some(now_ms() + 60_000))
        .await
        .unwrap();
    assert_eq!(cat.authenticate(&ssecret).await.unwrap().expect("session").csrf, scsrf);
    assert_eq!(cat.list_tokens(Some(op.id)).await.unwrap().len(), 1);
    assert_eq!(cat.list_tokens(None).await.unwrap().len(), 1, "sessions are not listed");
    cat.revoke_token(tok.id).await.unwrap();
    assert!(cat.authenticate(&secret).await.unwrap().is_none(), "revoked token refused");
    assert!(matches!(cat.revoke_token(9999).await, Err(CatalogError::NotFound(_))));
    assert!(cat.create_token(op.id, TokenKind::Api, "old", TokenScope::Full, Some(now_ms() - 1)).await.is_err());

    // Repositories.
    let repo = cat.add_repository("default", "/var/lib/bams/repo", "/var/lib/bams/keys/default").await.unwrap();
    assert!(matches!(cat.add_repository("default", "/x", "/k").await, Err(CatalogError::Conflict(_))));
    assert!(matches!(cat.add_repository("../etc", "/x", "/k").await, Err(CatalogError::Invalid(_))));
    assert_eq!(cat.get_repository_by_name("default").await.unwrap().id, repo.id);

    // Jobs and schedules.
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "etc", "type": "backup", "paths": ["/etc"], "repository": repo.id,
        "retention": {"keep_last": 3}, "options": {"one_file_system": true}
    }))
    .unwrap();
    let job = cat.create_job(&spec).await.unwrap();
    assert_eq!(job.paths, vec!["/etc".to_string()]);
    assert_eq!(job.level, Level::Incremental);
    let mut bad = spec.clone();
    bad.name = "bad".into();
    bad.paths = vec!["/etc/../root".into()];
    assert!(matches!(cat.create_job(&bad).await, Err(CatalogError::Invalid(_))));
    let mut no_repo = spec.clone();
    no_repo.name = "norepo".into();
    no_repo.repository = Some(999);
    assert!(matches!(cat.create_job(&no_repo).await, Err(CatalogError::NotFound(_))));
    assert!(matches!(cat.delete_repository(repo.id).await, Err(CatalogError::Conflict(_))), "repository in use");
    let mut renamed = spec.clone();
    renamed.name = "etc-daily".into();
    assert_eq!(cat.update_job(job.id, &renamed).await.unwrap().name, "etc-daily");

    let past = now_ms() - 1000;
    let sched = cat
        .create_schedule(
            &ScheduleSpec {
                job: job.id,
                cron: "0 3 * * *".into(),
                timezone: None,
                level: Some(Level::Full),
                enabled: true,
            },
            Some(past),
        )
        .await
        .unwrap();
    assert_eq!(sched.timezone, "UTC");
    let due = cat.due_schedules(now_ms()).await.unwrap();
    assert_eq!(due.len(), 1);
    let fired = cat.fire_schedules(&[(due[0].clone(), Some(now_ms() + 86_400_000))], now_ms()).await.unwrap();
    assert!(fired.is_some());
    assert!(
        cat.fire_schedules(&[(due[0].clone(), Some(now_ms() + 86_400_000))], now_ms()).await.unwrap().is_none(),
        "fires once"
    );
    assert!(cat.due_schedules(now_ms()).await.unwrap().is_empty());

    // Runs: queue, claim, log, finish, page, cancel, interrupt.
    let run = cat.claim_run("server-a").await.unwrap().expect("the scheduled run");
    assert_eq!(Some(run.id), fired);
    assert_eq!(run.level, Some(Level::Full));
    assert_eq!(run.status, RunStatus::Running);
    assert!(cat.claim_run("server-a").await.unwrap().is_none());
    cat.append_log(run.id, "line 1\n").await.unwrap();
    cat.append_log(run.id, "line 2\n").await.unwrap();
    assert_eq!(cat.run_log(run.id).await.unwrap(), "line 1\nline 2\n");
    // Live progress while it runs; the final numbers replace it, and later reports are ignored.
    cat.run_progress(run.id, 2, 60).await.unwrap();
    let live = cat.get_run(run.id).await.unwrap();
    assert_eq!((live.files, live.bytes), (2, 60));
    assert_eq!(cat.last_successful_bytes(job.id).await.unwrap(), None);
    let stats = RunStats { files: 3, bytes: 100, new_bytes: 40, errors: 0, snapshot_id: Some("ab".repeat(32)) };
    cat.finish_run(run.id, RunStatus::Succeeded, &stats, "ok").await.unwrap();
    cat.run_progress(run.id, 1, 1).await.unwrap();
    let done = cat.get_run(run.id).await.unwrap();
    assert_eq!((done.files, done.bytes, done.new_bytes), (3, 100, 40));
    assert_eq!(cat.last_successful_bytes(job.id).await.unwrap(), Some(100));
    assert_eq!(cat.growth_since(now_ms() - 86_400_000).await.unwrap(), vec![(repo.id, 40)]);
    assert!(cat.growth_since(now_ms() + 1000).await.unwrap().is_empty());
    let activity = cat.job_activity().await.unwrap();
    let mine = activity.iter().find(|a| a.job_id == job.id).expect("the job's activity");
    assert_eq!((mine.last_status.as_deref(), mine.active, mine.failures_24h), (Some("succeeded"), 0, 0));
    assert!(mine.last_success_at.is_some());
    assert!(cat.last_successful_backup(job.id, true).await.unwrap().is_some());
    for _ in 0..5 {
        cat.queue_run(&NewRun { job_id: job.id, level: None, triggered_by: "manual".into() }).await.unwrap();
    }
    let page = cat.list_runs(&RunFilter { limit: Some(4), ..Default::default() }).await.unwrap();
    assert_eq!(page.items.len(), 4);
    let next = cat
        .list_runs(&RunFilter { limit: Some(4), cursor: page.next_cursor.clone(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(next.items.len(), 2);
    assert!(next.next_cursor.is_none());
    let queued = cat.list_runs(&RunFilter { status: Some("queued".into()), ..Default::default() }).await.unwrap();
    assert_eq!(queued.items.len(), 5);
    assert!(cat.list_runs(&RunFilter { status: Some("bogus".into()), ..Default::default() }).await.is_err());
    let cancelled = cat.request_cancel(queued.items[0].id).await.unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert!(matches!(cat.request_cancel(cancelled.id).await, Err(CatalogError::Conflict(_))));
    let running = cat.claim_run("server-a").await.unwrap().unwrap();
    assert_eq!(running.level, Some(Level::Incremental));
    let flagged = cat.request_cancel(running.id).await.unwrap();
    assert!(flagged.cancel_requested && flagged.status == RunStatus::Running);
    let ended = cat.mark_interrupted("server-a", "server restarted").await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].0, running.id);
    assert_eq!(cat.get_run(running.id).await.unwrap().status, RunStatus::Interrupted);
    // The interrupted run is queued again, once.
    let again = cat.get_run(ended[0].1.expect("queued again")).await.unwrap();
    assert_eq!(
        (again.status, again.triggered_by.as_str()),
        (RunStatus::Queued, format!("requeue:{}", running.id).as_str())
    );
    let d = cat.dashboard().await.unwrap();
    assert_eq!((d.jobs, d.repositories, d.active_runs, d.successes_24h, d.failures_24h), (1, 1, 4, 1, 1));
    assert_eq!(d.new_bytes_24h, 40);

    // Snapshot cache.
    let snaps: Vec<SnapshotSummary> = (0..5)
        .map(|i| SnapshotSummary {
            repository: repo.id,
            id: format!("{i:064x}"),
            time: 1_700_000_000_000 + i * 1000,
            host: if i % 2 == 0 { "alpha".into() } else { "beta".into() },
            paths: vec!["/etc".into()],
            tags: if i == 4 { vec!["db_dump".into(), "x".into()] } else { vec![] },
            parent: None,
            files: i,
            bytes: i * 10,
            new_bytes: i,
            partial: i == 3,
            job: None,
        })
        .collect();
    cat.sync_snapshots(repo.id, &snaps).await.unwrap();
    let found = cat.snapshot_locations(&format!("{:064x}", 3)).await.unwrap();
    assert_eq!(found.iter().map(|s| s.repository).collect::<Vec<_>>(), vec![repo.id]);
    assert!(cat.snapshot_locations("not-there").await.unwrap().is_empty());
    let all = cat.list_snapshots(&SnapshotFilter { limit: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(all.items[0].id, format!("{:064x}", 4));
    let rest = cat
        .list_snapshots(&SnapshotFilter { limit: Some(10), cursor: all.next_cursor, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    let alpha = cat.list_snapshots(&SnapshotFilter { host: Some("alpha".into()), ..Default::default() }).await.unwrap();
    assert_eq!(alpha.items.len(), 3);
    let tagged =
        cat.list_snapshots(&SnapshotFilter { tag: Some("db_dump".into()), ..Default::default() }).await.unwrap();
    assert_eq!(tagged.items.len(), 1);
    let none = cat.list_snapshots(&SnapshotFilter { tag: Some("db".into()), ..Default::default() }).await.unwrap();
    assert!(none.items.is_empty(), "tag filter matches whole tags only");
    assert!(cat
        .list_snapshots(&SnapshotFilter { cursor: Some("garbage".into()), ..Default::default() })
        .await
        .is_err());

    // Audit.
    for (i, user) in ["admin", "op", "admin"].iter().enumerate() {
        cat.audit(&NewAudit {
            time: now_ms() + i as i64,
            username: Some((*user).into()),
            method: "POST".into(),
            route: "/api/v1/jobs".into(),
            target: Some("/api/v1/jobs".into()),
            status: 201,
            result: "ok".into(),
            remote_addr: Some("127.0.0.1".into()),
            object: Some(bams_catalog::AuditObject {
                kind: "job".into(),
                id: Some(i.to_string()),
                name: Some(format!("job{i}")),
                changes: vec!["name".into(), "paths".into()],
            }),
        })
        .await
        .unwrap();
    }
    let a = cat.list_audit(&AuditFilter { user: Some("admin".into()), ..Default::default() }).await.unwrap();
    assert_eq!(a.items.len(), 2);
    let o = a.items[0].object.clone().unwrap();
    assert_eq!((o.kind.as_str(), o.name.as_deref(), o.changes.len()), ("job", Some("job2"), 2));
    let r = cat
        .list_audit(&AuditFilter {
            route: Some("/api/v1/jo".into()),
            since: Some("2000-01-01T00:00:00Z".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.items.len(), 3);
    assert!(cat.list_audit(&AuditFilter { since: Some("yesterday".into()), ..Default::default() }).await.is_err());

    cat.delete_job(job.id).await.unwrap();
    assert!(cat.list_schedules(None).await.unwrap().is_empty());
    assert!(cat.get_run(run.id).await.unwrap().job_id.is_none(), "history survives the job");
    cat.delete_repository(repo.id).await.unwrap();
}

/// Pools as job targets, and schedules of one job that fall due together.
async fn pools_and_schedules(cat: &Catalog) {
    let r1 = cat.add_repository("local", "/srv/local", "/k1").await.unwrap();
    let r2 = cat.add_repository("offsite", "s3://b/p", "/k2").await.unwrap();
    let spec = |v: serde_json::Value| -> PoolSpec { serde_json::from_value(v).unwrap() };
    let pool = cat
        .create_pool(&spec(serde_json::json!({"name": "nightly", "repository": r1.id,
            "retention": {"keep_daily": 7}, "max_snapshots": 100})))
        .await
        .unwrap();
    assert_eq!((pool.repository, pool.jobs, pool.max_snapshots), (r1.id, 0, Some(100)));
    for bad in [
        serde_json::json!({"name": "nightly", "repository": r2.id}),
        serde_json::json!({"name": "second", "repository": r1.id}),
    ] {
        assert!(matches!(cat.create_pool(&spec(bad)).await, Err(CatalogError::Conflict(_))));
    }
    for bad in [
        serde_json::json!({"name": "x", "repository": r2.id, "max_bytes": 0}),
        serde_json::json!({"name": "42", "repository": r2.id}),
        serde_json::json!({"name": "x", "repository": r2.id, "retention": [1]}),
    ] {
        assert!(matches!(cat.create_pool(&spec(bad)).await, Err(CatalogError::Invalid(_))));
    }
    assert!(matches!(
        cat.create_pool(&spec(serde_json::json!({"name": "x", "repository": 999}))).await,
        Err(CatalogError::NotFound(_))
    ));

    // A job names the pool (by name or id) and writes into its repository.
    let (agent, enroll_token) = cat.create_agent("db1").await.unwrap();
    let job_spec = |v: serde_json::Value| -> JobSpec { serde_json::from_value(v).unwrap() };
    let job = cat
        .create_job(&job_spec(serde_json::json!({"name": "db1", "type": "backup", "paths": ["/var/lib"],
            "pool": "nightly", "agent": agent.id})))
        .await
        .unwrap();
    assert_eq!((job.repository, job.pool), (r1.id, Some(pool.id)));

    // The agent's own repository under the pool's: the agent reaches it and not the parent,
    // unless the pool shares its repository across machines.
    let enrolled = cat.enroll_agent(&enroll_token, "db1.example", "0.1").await.unwrap().0;
    let user = enrolled.user_id.unwrap();
    assert_eq!(cat.agent_repositories(user).await.unwrap(), Vec::<i64>::new());
    let own = cat.add_agent_repository(&r1, &enrolled, "/srv/local/agents/db1", "/k3").await.unwrap();
    assert_eq!((own.name.as_str(), own.parent, own.agent), ("local@db1", Some(r1.id), Some(agent.id)));
    assert!(matches!(cat.add_agent_repository(&r1, &enrolled, "/x", "/k").await, Err(CatalogError::Conflict(_))));
    assert!(matches!(cat.add_agent_repository(&own, &enrolled, "/x", "/k").await, Err(CatalogError::Invalid(_))));
    assert_eq!(cat.agent_repository(r1.id, agent.id).await.unwrap().map(|r| r.id), Some(own.id));
    assert_eq!(cat.child_repositories(r1.id).await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![own.id]);
    assert_eq!(cat.agent_repositories(user).await.unwrap(), vec![own.id]);
    let sharing = |on: bool| {
        spec(serde_json::json!({"name": "nightly", "repository": r1.id, "retention": {"keep_daily": 7},
            "max_snapshots": 100, "shared_dedup": on}))
    };
    assert!(cat.update_pool(pool.id, &sharing(true)).await.unwrap().shared_dedup);
    let mut reach = cat.agent_repositories(user).await.unwrap();
    reach.sort_unstable();
    assert_eq!(reach, vec![r1.id, own.id]);
    cat.update_pool(pool.id, &sharing(false)).await.unwrap();
    assert!(matches!(
        cat.create_pool(&spec(serde_json::json!({"name": "mine", "repository": own.id}))).await,
        Err(CatalogError::Invalid(_))
    ));
    assert!(matches!(
        cat.create_job(&job_spec(serde_json::json!({"name": "j2", "type": "backup", "paths": ["/a"],
            "pool": pool.id, "repository": r2.id})))
            .await,
        Err(CatalogError::Invalid(_))
    ));
    assert!(matches!(
        cat.create_job(&job_spec(serde_json::json!({"name": "j3", "type": "backup", "paths": ["/a"], "pool": "nope"})))
            .await,
        Err(CatalogError::NotFound(_))
    ));
    assert!(matches!(
        cat.create_job(&job_spec(serde_json::json!({"name": "j4", "type": "backup", "paths": ["/a"]}))).await,
        Err(CatalogError::Invalid(_))
    ));
    assert_eq!(cat.get_pool(pool.id).await.unwrap().jobs, 1);
    assert!(matches!(cat.delete_pool(pool.id).await, Err(CatalogError::Conflict(_))), "in use");
    // Moving the pool moves its jobs.
    let moved =
        cat.update_pool(pool.id, &spec(serde_json::json!({"name": "nightly", "repository": r2.id}))).await.unwrap();
    assert_eq!((moved.repository, moved.max_snapshots), (r2.id, None));
    assert_eq!(cat.get_job(job.id).await.unwrap().repository, r2.id);
    assert_eq!(cat.pool_of_repository(r2.id).await.unwrap().map(|p| p.id), Some(pool.id));
    assert!(cat.pool_of_repository(r1.id).await.unwrap().is_none());

    // A monthly Full and a daily Incremental due together queue one run, a Full, for the
    // job's agent; the scheduling delay can be read from it.
    let due_at = now_ms() - 500;
    for (cron, level) in [("0 3 1 * *", Level::Full), ("0 3 * * *", Level::Incremental)] {
        let s = ScheduleSpec { job: job.id, cron: cron.into(), timezone: None, level: Some(level), enabled: true };
        cat.create_schedule(&s, Some(due_at)).await.unwrap();
    }
    let due: Vec<_> =
        cat.due_schedules(now_ms()).await.unwrap().into_iter().map(|s| (s, Some(now_ms() + 86_400_000))).collect();
    assert_eq!(due.len(), 2);
    let run = cat.fire_schedules(&due, now_ms()).await.unwrap().expect("fired");
    assert!(cat.fire_schedules(&due, now_ms()).await.unwrap().is_none(), "fires once");
    let run = cat.get_run(run).await.unwrap();
    assert_eq!((run.level, run.agent_id, run.scheduled_for), (Some(Level::Full), Some(agent.id), Some(due_at)));
    assert_eq!(cat.list_runs(&RunFilter { job: Some(job.id), ..Default::default() }).await.unwrap().items.len(), 1);
    while let Some(other) = cat.claim_run("server-a").await.unwrap() {
        assert_ne!(other.id, run.id, "an agent's scheduled run is not the server's");
    }
    // The agent's poll is rung while its run waits, and not once the agent claimed it.
    assert_eq!(cat.agents_with_queued_runs().await.unwrap(), vec![agent.id]);
    let claimed = cat.claim_agent_run(agent.id, "server-a").await.unwrap().expect("the agent's run");
    assert_eq!(claimed.id, run.id);
    assert!(cat.agents_with_queued_runs().await.unwrap().is_empty());
    // Never acknowledged: queued again with its note, once; the next attempt's lines follow
    // the note (it is written with the requeue, not after it).
    assert!(cat.requeue_unacknowledged(60_000, "too early\n").await.unwrap().is_empty());
    assert_eq!(cat.requeue_unacknowledged(-1_000, "queued again\n").await.unwrap(), vec![run.id]);
    assert!(cat.requeue_unacknowledged(-1_000, "twice\n").await.unwrap().is_empty(), "a queued run stays put");
    assert_eq!(cat.agents_with_queued_runs().await.unwrap(), vec![agent.id]);
    let again = cat.claim_agent_run(agent.id, "server-a").await.unwrap().expect("claimed again");
    assert_eq!(again.id, run.id);
    cat.append_log(run.id, "second attempt\n").await.unwrap();
    assert!(cat.run_log(run.id).await.unwrap().ends_with("queued again\nsecond attempt\n"));

    cat.delete_job(job.id).await.unwrap();
    cat.delete_pool(pool.id).await.unwrap();
    assert!(matches!(cat.get_pool(pool.id).await, Err(CatalogError::NotFound(_))));
}

#[tokio::test]
async fn catalog_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let cat = Catalog::open(&url).await.unwrap();
    assert_eq!(cat.backend(), Backend::Sqlite);
    scenario(&cat).await;
    pools_and_schedules(&cat).await;
    // Reopening runs no migration twice and keeps the data.
    drop(cat);
    let cat = Catalog::open(&url).await.unwrap();
    // Two people and the enrolled agent's own user.
    assert_eq!(cat.count_users().await.unwrap(), 3);
}

#[tokio::test]
async fn catalog_on_postgres() {
    let pg = bams_testkit::PgCluster::start();
    let cat = Catalog::open(&pg.url()).await.unwrap();
    assert_eq!(cat.backend(), Backend::Postgres);
    scenario(&cat).await;
    pools_and_schedules(&cat).await;
}

/// A backup job of `/data` into repository `repo`.
async fn backup_job(cat: &Catalog, repo: i64, name: impl std::fmt::Display) -> Job {
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": name.to_string(), "type": "backup", "paths": ["/data"], "repository": repo
    }))
    .unwrap();
    cat.create_job(&spec).await.unwrap()
}

/// Two servers over one catalog: every due schedule fires once and every run is claimed once.
async fn no_double_runs(a: Catalog, b: Catalog) {
    let repo = a.add_repository("r", "/r", "/k").await.unwrap();
    let mut schedules = Vec::new();
    for i in 0..20 {
        let job = backup_job(&a, repo.id, format!("job{i}")).await;
        let s = ScheduleSpec { job: job.id, cron: "* * * * *".into(), timezone: None, level: None, enabled: true };
        schedules.push(a.create_schedule(&s, Some(now_ms() - 10)).await.unwrap());
    }
    let worker = |cat: Catalog, name: &'static str| async move {
        let mut fired = Vec::new();
        for s in cat.due_schedules(now_ms()).await.unwrap() {
            if let Some(run) = cat.fire_schedules(&[(s.clone(), Some(now_ms() + 60_000))], now_ms()).await.unwrap() {
                fired.push(run);
            }
        }
        let mut claimed = Vec::new();
        while let Some(run) = cat.claim_run(name).await.unwrap() {
            claimed.push(run.id);
        }
        (fired, claimed)
    };
    let (ra, rb) = tokio::join!(tokio::spawn(worker(a.clone(), "a")), tokio::spawn(worker(b.clone(), "b")));
    let ((fa, ca), (fb, cb)) = (ra.unwrap(), rb.unwrap());
    let mut fired: Vec<i64> = fa.into_iter().chain(fb).collect();
    fired.sort_unstable();
    let mut claimed: Vec<i64> = ca.iter().chain(cb.iter()).copied().collect();
    claimed.sort_unstable();
    assert_eq!(fired.len(), 20, "each schedule fired exactly once");
    assert_eq!(claimed, fired, "each run claimed exactly once");
}

/// As a surviving server: recover every run in `lost`; returns (run, its re-queue) for those
/// this catalog won.
async fn recover_all(cat: Catalog, lost: Vec<LostRun>) -> Vec<(i64, i64)> {
    let mut won = Vec::new();
    for l in &lost {
        if let Some(again) = cat.interrupt_lost_run(l, "silent").await.unwrap() {
            won.push((l.id, again.unwrap()));
        }
    }
    won
}

/// A server that stops heartbeating loses its runs: exactly one of the surviving servers
/// interrupts each and queues it again once; a run still heartbeating is never taken; the
/// lost server learns from its next heartbeat that the run is no longer its own.
async fn lost_runs_are_requeued_once(a: Catalog, b: Catalog) {
    let repo = a.add_repository("r", "/r", "/k").await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..6 {
        let job = backup_job(&a, repo.id, format!("job{i}")).await;
        a.queue_run(&NewRun { job_id: job.id, level: None, triggered_by: "manual".into() }).await.unwrap();
        jobs.push(job.id);
    }
    let mut dead_runs = Vec::new();
    for _ in 0..3 {
        dead_runs.push(a.claim_run("dead").await.unwrap().unwrap().id);
    }
    let alive = b.claim_run("alive").await.unwrap().unwrap().id;
    assert_eq!(a.server_heartbeat("dead").await.unwrap().len(), 3);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(b.server_heartbeat("alive").await.unwrap(), vec![alive]);
    let lost = b.lost_server_runs(200).await.unwrap();
    assert_eq!(lost.iter().map(|l| l.id).collect::<Vec<_>>(), dead_runs, "only the silent server's runs are lost");
    // Both survivors try to recover every lost run at once: each run is taken exactly once.
    let (ra, rb) = tokio::join!(
        tokio::spawn(recover_all(a.clone(), lost.clone())),
        tokio::spawn(recover_all(b.clone(), lost.clone()))
    );
    let mut won: Vec<(i64, i64)> = ra.unwrap().into_iter().chain(rb.unwrap()).collect();
    won.sort_unstable();
    assert_eq!(won.iter().map(|w| w.0).collect::<Vec<_>>(), dead_runs, "each lost run recovered once");
    for (old, new) in &won {
        assert_eq!(a.get_run(*old).await.unwrap().status, RunStatus::Interrupted);
        let again = a.get_run(*new).await.unwrap();
        assert_eq!(again.status, RunStatus::Queued);
        assert_eq!(again.triggered_by, format!("requeue:{old}"));
        assert_eq!(again.job_id, a.get_run(*old).await.unwrap().job_id);
    }
    assert!(b.lost_server_runs(200).await.unwrap().is_empty());
    // Fencing: the dead server's heartbeat no longer lists the runs taken from it, and its
    // late end of a run changes nothing.
    assert!(a.server_heartbeat("dead").await.unwrap().is_empty());
    a.finish_run(dead_runs[0], RunStatus::Succeeded, &RunStats::default(), "late").await.unwrap();
    assert_eq!(a.get_run(dead_runs[0]).await.unwrap().status, RunStatus::Interrupted);
    // A re-queued run that is lost again is interrupted but not queued a third time.
    let mut requeued = Vec::new();
    while let Some(r) = b.claim_run("dead-too").await.unwrap() {
        requeued.push(r.id);
    }
    assert_eq!(requeued.len(), 5, "3 re-queued + 2 never claimed");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lost = b.lost_server_runs(200).await.unwrap();
    assert_eq!(lost.len(), 6, "the alive server stopped heartbeating too: {lost:?}");
    for l in lost {
        let again = b.interrupt_lost_run(&l, "silent").await.unwrap().expect("ended");
        let was_requeue = b.get_run(l.id).await.unwrap().triggered_by.starts_with("requeue:");
        assert_eq!(again.is_none(), was_requeue, "run {}", l.id);
    }
    // A heartbeat between the read and the recovery wins: the run is not taken.
    let job = backup_job(&a, repo.id, "late").await;
    a.queue_run(&NewRun { job_id: job.id, level: None, triggered_by: "manual".into() }).await.unwrap();
    let run = a.claim_run("slow").await.unwrap().unwrap().id;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lost = b.lost_server_runs(200).await.unwrap();
    let mine: Vec<_> = lost.iter().filter(|l| l.id == run).cloned().collect();
    assert_eq!(mine.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(a.server_heartbeat("slow").await.unwrap(), vec![run]);
    assert!(b.interrupt_lost_run(&mine[0], "silent").await.unwrap().is_none());
    assert_eq!(a.get_run(run).await.unwrap().status, RunStatus::Running);
}

/// Many jobs fire in one transaction; a job another server fired meanwhile is skipped (its
/// savepoint rolled back) without undoing the others.
async fn many_jobs_fire_in_one_transaction(cat: Catalog) {
    let repo = cat.add_repository("r", "/r", "/k").await.unwrap();
    let mut groups = Vec::new();
    for i in 0..3 {
        let job = backup_job(&cat, repo.id, format!("j{i}")).await;
        let s = ScheduleSpec { job: job.id, cron: "* * * * *".into(), timezone: None, level: None, enabled: true };
        let sched = cat.create_schedule(&s, Some(now_ms() - 10)).await.unwrap();
        groups.push(vec![(sched, Some(now_ms() + 60_000))]);
    }
    // Another server fires the second job first.
    assert!(cat.fire_schedules(&groups[1], now_ms()).await.unwrap().is_some());
    let fired = cat.fire_many(&groups, now_ms()).await.unwrap();
    assert!(fired[0].is_some() && fired[1].is_none() && fired[2].is_some(), "{fired:?}");
    let queued = cat.list_runs(&RunFilter { status: Some("queued".into()), ..Default::default() }).await.unwrap();
    assert_eq!(queued.items.len(), 3, "one run per job");
    assert!(cat.fire_many(&groups, now_ms()).await.unwrap().iter().all(Option::is_none), "nothing fires twice");
}

#[tokio::test]
async fn many_jobs_fire_in_one_transaction_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    many_jobs_fire_in_one_transaction(Catalog::open(&format!("sqlite://{}/c.db", dir.path().display())).await.unwrap())
        .await;
}

#[tokio::test]
async fn many_jobs_fire_in_one_transaction_on_postgres() {
    let pg = bams_testkit::PgCluster::start();
    many_jobs_fire_in_one_transaction(Catalog::open(&pg.new_database("fire")).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_server_runs_are_requeued_once_on_postgres() {
    let pg = bams_testkit::PgCluster::start();
    let url = pg.new_database("lost");
    lost_runs_are_requeued_once(Catalog::open(&url).await.unwrap(), Catalog::open(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_server_runs_are_requeued_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    lost_runs_are_requeued_once(Catalog::open(&url).await.unwrap(), Catalog::open(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_postgres_never_run_a_job_twice() {
    let pg = bams_testkit::PgCluster::start();
    let url = pg.new_database("scaleout");
    let a = Catalog::open(&url).await.unwrap();
    let b = Catalog::open(&url).await.unwrap();
    no_double_runs(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_sqlite_never_run_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let a = Catalog::open(&url).await.unwrap();
    let b = Catalog::open(&url).await.unwrap();
    no_double_runs(a, b).await;
}
