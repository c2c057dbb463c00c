//! The pool's etcd backend: one lease per instance, one key per member and per owned agent.
//!
//! Keys under the prefix:
//! - `names/{instance}`: the instance's name, claimed under its lease only if absent, so two
//!   replicas given one name cannot both join.
//! - `members/{instance}`: the instance takes agents (it is assignable), under its lease; the
//!   value is the digest of the agents its agents file lists.
//! - `catalogs/{digest}`: those agents, one per line, under the lease of the member that wrote
//!   it last (members with the same file write the same key; one that finds it gone writes it
//!   again).
//! - `owners/{agent}`: the owning instance, under its lease; taken only if absent (an atomic
//!   create: `create_revision == 0`), so at most one instance owns an agent at any revision.
//! - `holders/{agent}`: the Guid hand-off, *not* under a lease: the owner's gateway session
//!   (Guid and cookies), sealed with the pool key (`handoff.rs`). Written after the owner signed
//!   the agent in and after each Guid change; deleted (compare-and-delete) when that session
//!   ends or by a graceful release. A lease that ends (crash, partition) leaves it, so the next
//!   owner can log the session out with its own Guid, even if an owner in between never signed
//!   the agent in.
//!
//! Requests for many agents (take, release) are sent concurrently on the one connection, so a
//! reconcile of 1,000 agents costs about one round trip's wait, not 1,000.
//!
//! Members, owners and holder keys are read once, in pages at one revision, into a local
//! [`Mirror`], and kept current by one watch on the prefix from the next revision; a reconcile
//! reads the mirror. A watch that breaks or that etcd cancels (its revision compacted away),
//! and each new lease, mean a new paged read: after a lost lease the old lease's owner records
//! are surely gone from it.

use super::mirror::{self, Mirror, MIRRORED};
use super::{
    hints, Acquired, Backend, EtcdAuth, EtcdTls, HolderWrite, LeaseRenewal, PoolConfig, PoolError,
    Renewal, View,
};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchResponse, WatchStream,
};
use futures::FutureExt;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// [`Backend`] on etcd v3.
pub struct EtcdBackend {
    endpoints: Vec<String>,
    prefix: String,
    instance: String,
    ttl: Duration,
    tls: Option<EtcdTls>,
    auth: Option<EtcdAuth>,
    client: Option<Client>,
    lease: Option<i64>,
    /// Watch on the whole prefix from the mirror's revision: keeps the mirror current and wakes
    /// the loop.
    watch: Option<WatchStream>,
    /// Members, owners and holder keys (`None`: to be read again, page by page).
    mirror: Option<Mirror>,
    /// Catalogs of the current members, by digest (a digest names its content, so it never
    /// changes; digests no member names any more are dropped).
    catalogs: HashMap<String, Arc<HashSet<String>>>,
}

/// Keys per page of the full read: about 60 KB of owner records, far below any message limit
/// however large the pool.
const PAGE: i64 = 1_000;

/// Holder writes per etcd transaction: well within etcd's default `--max-txn-ops` (128) and
/// its 1.5 MiB request limit (a sealed record is about 150 bytes), so 30,000 agents rotating
/// their Guids every minute cost about eight transactions a second, not 500 requests.
const HOLDER_WRITES_PER_TXN: usize = 64;

/// Deletes `key` if it still holds `record`.
fn forget_holder(key: String, record: &[u8]) -> Txn {
    Txn::new()
        .when([Compare::value(
            key.clone(),
            CompareOp::Equal,
            record.to_vec(),
        )])
        .and_then([TxnOp::delete(key, None)])
}

/// The digest of a list of agents, independent of their order (FNV-1a over the sorted ids).
fn digest(agents: &[String]) -> String {
    let mut sorted: Vec<&str> = agents.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sorted.iter().flat_map(|a| a.bytes().chain([b'\n'])) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}-{}", sorted.len())
}

/// The lease's keep-alive stream: [`LeaseRenewal`] on etcd, run by the keep-alive task.
pub struct EtcdLease {
    client: Client,
    /// The last attempt timed out: its connection may be a black hole (a dead peer, a
    /// partition that drops packets without a reset), which HTTP/2 keep-alive notices only
    /// after up to two more bounds. The next attempt connects afresh instead (issue 23
    /// point 3: a blackholed renewal must not cost the lease).
    reconnect: bool,
    id: i64,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// For keep-alive failures worded as every other etcd failure (cause and fix).
    setup: hints::OwnedSetup,
}

/// A client of `setup`'s endpoints whose every request, connection attempt and HTTP/2
/// keep-alive ping is bounded by `bound`.
async fn connect(setup: &hints::Setup<'_>, bound: Duration) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(bound)
        .with_timeout(bound)
        .with_keep_alive(bound, bound);
    if let Some(tls) = setup.tls {
        let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, &key[..]));
        }
        options = options.with_tls(config);
    }
    if let Some(auth) = setup.auth {
        options = options.with_user(auth.user.clone(), auth.password.expose());
    }
    Client::connect(setup.endpoints, Some(options)).await
}

/// Whether etcd answered that the lease no longer exists (expired or revoked).
fn lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::NotFound,
        _ => false,
    }
}

fn coordinator(e: impl std::fmt::Display) -> PoolError {
    PoolError::Coordinator(e.to_string())
}

impl EtcdBackend {
    /// A backend for `config`; it connects on first use (etcd may come up after the bridge).
    pub async fn connect(config: &PoolConfig) -> Result<Self, PoolError> {
        Ok(Self {
            endpoints: config.endpoints.clone(),
            prefix: config.prefix.clone(),
            instance: config.instance.clone(),
            ttl: config.lease_ttl,
            tls: config.tls.clone(),
            auth: config.auth.clone(),
            client: None,
            lease: None,
            watch: None,
            mirror: None,
            catalogs: HashMap::new(),
        })
    }

    /// Every request's bound: a third of the TTL, so a slow etcd cannot outlast the lease.
    fn bound(&self) -> Duration {
        self.ttl / 3
    }

    async fn client(&mut self) -> Result<Client, PoolError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let client = connect(&self.setup(), self.bound())
            .await
            .map_err(|e| hints::describe(e, &self.setup()))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn setup(&self) -> hints::Setup<'_> {
        hints::Setup {
            endpoints: &self.endpoints,
            tls: self.tls.as_ref(),
            auth: self.auth.as_ref(),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.prefix)
    }

    fn lease(&self) -> Result<i64, PoolError> {
        self.lease
            .ok_or_else(|| PoolError::Coordinator("no lease".into()))
    }

    /// Takes one agent; with `Won`, the revision of the ownership record (for the mirror).
    async fn acquire_one(
        &self,
        mut client: Client,
        lease: i64,
        agent: &str,
    ) -> Result<(Acquired, i64), PoolError> {
        let owner = self.key("owners", agent);
        // The previous holder's record is read in the same transaction and left as it is until
        // this instance has signed the agent in (and writes its own). A record that exists is
        // read instead: if it is already under this lease (an earlier acquire whose answer was
        // lost), the agent is this instance's.
        let txn = Txn::new()
            .when([Compare::create_revision(owner.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::get(self.key("holders", agent), None),
                TxnOp::put(
                    owner.clone(),
                    self.instance.as_bytes(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ])
            .or_else([TxnOp::get(owner, None)]);
        let resp = self.bounded(client.txn(txn)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let got = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().cloned()),
            _ => None,
        });
        if !resp.succeeded() {
            let ours = got.flatten().is_some_and(|kv| kv.lease() == lease);
            return Ok(match ours {
                true => (Acquired::Won { hand_off: None }, revision),
                false => (Acquired::Held, revision),
            });
        }
        let hand_off = got.flatten().map(|kv| kv.value().to_vec());
        Ok((Acquired::Won { hand_off }, revision))
    }

    /// Gives one agent up; whether it was this lease's, and the revision of the release.
    async fn release_one(
        &self,
        mut client: Client,
        lease: i64,
        agent: &str,
        record: Option<&[u8]>,
    ) -> Result<(bool, i64), PoolError> {
        let owner = self.key("owners", agent);
        // Only while the record is still under this instance's lease: never release another's.
        let mut ops = vec![TxnOp::delete(owner.clone(), None)];
        if let Some(record) = record {
            // The holder record goes only if it is still this instance's last write (its
            // session is signed out now); an earlier holder's record stays with its Guid.
            ops.push(TxnOp::txn(forget_holder(
                self.key("holders", agent),
                record,
            )));
        }
        let txn = Txn::new()
            .when([Compare::lease(owner, CompareOp::Equal, lease)])
            .and_then(ops);
        let resp = self.bounded(client.txn(txn)).await?;
        Ok((resp.succeeded(), resp.header().map_or(0, |h| h.revision())))
    }

    /// Shows this instance's own change of an owner record in the mirror at once.
    fn wrote_owner(&mut self, agent: &str, owner: Option<&[u8]>, revision: i64) {
        if let Some(mirror) = self.mirror.as_mut() {
            mirror.wrote(&format!("owners/{agent}"), owner, revision);
        }
    }

    /// One transaction of at most [`HOLDER_WRITES_PER_TXN`] holder writes, each its own nested
    /// transaction with its own guard, so one agent that moved meanwhile spoils no other's.
    async fn write_holder_batch(
        &self,
        mut client: Client,
        lease: i64,
        writes: &[HolderWrite],
    ) -> Result<(), PoolError> {
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|w| match w {
                HolderWrite::Put { agent, record } => TxnOp::txn(
                    Txn::new()
                        .when([Compare::lease(
                            self.key("owners", agent),
                            CompareOp::Equal,
                            lease,
                        )])
                        .and_then([TxnOp::put(self.key("holders", agent), record.clone(), None)]),
                ),
                HolderWrite::Delete { agent, record } => {
                    TxnOp::txn(forget_holder(self.key("holders", agent), record))
                }
            })
            .collect();
        self.bounded(client.txn(Txn::new().and_then(ops))).await?;
        Ok(())
    }

    /// The agents listed under `digest` (cached; read from etcd the first time), or `None` if
    /// etcd has no such catalog (a member of a version that publishes none, or one whose
    /// catalog went with another member's lease and is not written again yet).
    async fn catalog(
        &mut self,
        client: &mut Client,
        digest: &str,
    ) -> Result<Option<Arc<HashSet<String>>>, PoolError> {
        if let Some(known) = self.catalogs.get(digest) {
            return Ok(Some(known.clone()));
        }
        let resp = self
            .bounded(client.get(self.key("catalogs", digest), None))
            .await?;
        let Some(text) = resp.kvs().first().and_then(|kv| kv.value_str().ok()) else {
            return Ok(None);
        };
        let catalog: Arc<HashSet<String>> = Arc::new(text.lines().map(str::to_owned).collect());
        self.catalogs.insert(digest.to_owned(), catalog.clone());
        Ok(Some(catalog))
    }

    /// Brings the mirror up to date: the changes the watch delivered so far, or without a
    /// watch (first use, a broken or cancelled watch, a new lease) a new paged read and a watch
    /// from the revision after it.
    async fn sync(&mut self) -> Result<(), PoolError> {
        while let Some(answer) = self.watch.as_mut().and_then(|w| w.message().now_or_never()) {
            self.apply(answer);
        }
        if self.watch.is_some() {
            return Ok(());
        }
        let mut client = self.client().await?;
        self.mirror = None;
        let mirror = self.read_all(&mut client).await?;
        tracing::debug!(
            records = mirror.len(),
            revision = mirror.revision(),
            "pool: read the pool's records"
        );
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(mirror.revision() + 1);
        let watch = self
            .bounded(client.watch(self.prefix.clone(), Some(options)))
            .await?;
        self.mirror = Some(mirror);
        self.watch = Some(watch);
        Ok(())
    }

    /// Every member, owner and holder key, in pages of [`PAGE`] keys all read at the
    /// revision of the first page, so the pages add up to one consistent state.
    async fn read_all(&self, client: &mut Client) -> Result<Mirror, PoolError> {
        let mut mirror: Option<Mirror> = None;
        for kind in MIRRORED {
            let start = self.key(kind, "").into_bytes();
            let end = mirror::range_end(&start);
            let mut from = start;
            loop {
                let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
                if let Some(m) = &mirror {
                    options = options.with_revision(m.revision());
                }
                if kind == "holders" {
                    // Keys only: the sealed records mean nothing without the key, and are read
                    // one at a time where they are needed (a take-over's acquire).
                    options = options.with_keys_only();
                }
                let page = self
                    .bounded(client.get(from.clone(), Some(options)))
                    .await?;
                let mirror = mirror
                    .get_or_insert_with(|| Mirror::at(page.header().map_or(0, |h| h.revision())));
                for kv in page.kvs() {
                    if let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix))
                    {
                        mirror.put(key, kv.value(), kv.mod_revision());
                    }
                }
                match page.kvs().last() {
                    Some(last) if page.more() => from = mirror::after(last.key()),
                    _ => break,
                }
            }
        }
        mirror.ok_or_else(|| PoolError::Coordinator("etcd answered no revision".into()))
    }

    /// Applies one watch answer to the mirror; whether a reconcile should look (anything but
    /// probes changed, or the watch ended). A watch that ended, or that etcd cancelled (e.g.
    /// its start revision was compacted), may have missed changes: the next sync reads the
    /// pool again.
    fn apply(&mut self, answer: Result<Option<WatchResponse>, etcd_client::Error>) -> bool {
        let resp = match answer {
            Ok(Some(resp)) if !resp.canceled() => resp,
            Ok(Some(resp)) => {
                tracing::info!(
                    compacted_to = resp.compact_revision(),
                    reason = resp.cancel_reason(),
                    "pool: etcd cancelled the watch on the pool; reading its records again"
                );
                self.watch = None;
                return true;
            }
            Ok(None) | Err(_) => {
                self.watch = None;
                return true;
            }
        };
        let Some(mirror) = self.mirror.as_mut() else {
            return true;
        };
        let mut relevant = false;
        for event in resp.events() {
            let Some(kv) = event.kv() else {
                continue;
            };
            let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&self.prefix)) else {
                continue;
            };
            let value = match event.event_type() {
                EventType::Put => Some(kv.value()),
                EventType::Delete => None,
            };
            relevant |= mirror.changed(key, value, kv.mod_revision());
        }
        relevant
    }

    /// The client and lease every per-agent request needs, or the reason there are none.
    async fn for_agents(&mut self) -> Result<(Client, i64), PoolError> {
        let lease = self.lease()?;
        Ok((self.client().await?, lease))
    }
}

impl LeaseRenewal for EtcdLease {
    /// One keep-alive round trip on the lease's stream (opened on first use), within `bound`.
    async fn renew(&mut self, bound: Duration) -> Result<Renewal, PoolError> {
        let deadline = tokio::time::Instant::now() + bound;
        if self.reconnect {
            let setup = self.setup.borrowed();
            match tokio::time::timeout_at(deadline, connect(&setup, bound)).await {
                Ok(Ok(client)) => {
                    self.client = client;
                    self.reconnect = false;
                }
                Ok(Err(e)) => return Err(self.setup.describe(e)),
                Err(_) => return Err(PoolError::Coordinator("connecting timed out".into())),
            }
        }
        if self.keeper.is_none() {
            // Opening the stream sends a first keep-alive; a lease that is gone fails it.
            match tokio::time::timeout_at(deadline, self.client.lease_keep_alive(self.id)).await {
                Ok(Ok(keeper)) => self.keeper = Some(keeper),
                Ok(Err(e)) if lease_gone(&e) => return Ok(Renewal::Lost),
                Ok(Err(e)) => return Err(self.setup.describe(e)),
                Err(_) => {
                    self.reconnect = true;
                    return Err(PoolError::Coordinator("keep-alive timed out".into()));
                }
            }
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Err(PoolError::Coordinator("no keep-alive stream".into()));
        };
        let answer = tokio::time::timeout_at(deadline, async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match answer {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                Ok(Renewal::Alive(Duration::from_secs(resp.ttl() as u64)))
            }
            Ok(Ok(Some(_))) => Ok(Renewal::Lost),
            Ok(Ok(None)) => {
                self.keeper = None;
                Err(PoolError::Coordinator("keep-alive stream closed".into()))
            }
            Ok(Err(e)) => {
                self.keeper = None;
                if lease_gone(&e) {
                    return Ok(Renewal::Lost);
                }
                Err(self.setup.describe(e))
            }
            Err(_) => {
                self.keeper = None;
                self.reconnect = true;
                Err(PoolError::Coordinator("keep-alive timed out".into()))
            }
        }
    }
}

impl Backend for EtcdBackend {
    type Lease = EtcdLease;

    async fn join(&mut self) -> Result<(Duration, EtcdLease), PoolError> {
        let mut client = self.client().await?;
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let grant = self.bounded(client.lease_grant(ttl_secs, None)).await?;
        let id = grant.id();
        let name = self.key("names", &self.instance);
        let claim = Txn::new()
            .when([Compare::create_revision(name.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                name.clone(),
                self.instance.as_bytes(),
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(name, None)]);
        let claimed = match self.bounded(client.txn(claim)).await {
            Ok(resp) if resp.succeeded() => Ok(()),
            Ok(resp) => {
                Err(hints::name_taken(&mut client, &self.instance, &resp, self.bound()).await)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = claimed {
            let _ = self.bounded(client.lease_revoke(id)).await;
            return Err(e);
        }
        self.lease = Some(id);
        // Read the pool afresh under the new lease: records of a lost one are gone by now
        // (etcd answers "lease not found" only once its keys are deleted), and a mirror kept
        // from before could still show some as this instance's.
        self.watch = None;
        let lease = EtcdLease {
            client,
            reconnect: false,
            id,
            keeper: None,
            setup: hints::OwnedSetup {
                endpoints: self.endpoints.clone(),
                tls: self.tls.clone(),
                auth: self.auth.clone(),
            },
        };
        Ok((Duration::from_secs(grant.ttl().max(0) as u64), lease))
    }

    async fn set_assignable(&mut self, agents: Option<&[String]>) -> Result<(), PoolError> {
        let (mut client, lease) = self.for_agents().await?;
        let member = self.key("members", &self.instance);
        let Some(agents) = agents else {
            self.bounded(client.delete(member, None)).await?;
            return Ok(());
        };
        let digest = digest(agents);
        let under_lease = || Some(PutOptions::new().with_lease(lease));
        let txn = Txn::new().and_then([
            TxnOp::put(
                self.key("catalogs", &digest),
                agents.join("\n"),
                under_lease(),
            ),
            TxnOp::put(member, digest, under_lease()),
        ]);
        self.bounded(client.txn(txn)).await?;
        Ok(())
    }

    async fn publish_probe(&mut self, ok: bool) -> Result<i64, PoolError> {
        let (mut client, lease) = self.for_agents().await?;
        let value = if ok { mirror::PROBE_OK } else { "failing" };
        let options = PutOptions::new().with_lease(lease);
        let put = self
            .bounded(client.put(self.key("probes", &self.instance), value, Some(options)))
            .await?;
        Ok(put.header().map_or(0, |h| h.revision()))
    }

    async fn view(&mut self) -> Result<View, PoolError> {
        self.sync().await?;
        let Some(mirror) = &self.mirror else {
            return Err(PoolError::Coordinator(
                "the pool's records are not read yet".into(),
            ));
        };
        let members: Vec<(String, String)> = mirror
            .members()
            .map(|(m, d)| (m.to_owned(), d.to_owned()))
            .collect();
        let mut view = View {
            members: members.iter().map(|(m, _)| m.clone()).collect(),
            catalogs: HashMap::new(),
            owners: mirror.owners(),
            holders: mirror.holders(),
            probes: mirror.probes().clone(),
        };
        let mut client = self.client().await?;
        for (member, digest) in &members {
            if let Some(catalog) = self.catalog(&mut client, digest).await? {
                view.catalogs.insert(member.clone(), catalog);
            }
        }
        // Bounded by the members: a digest nobody names any more is not needed again.
        self.catalogs
            .retain(|digest, _| members.iter().any(|(_, d)| d == digest));
        Ok(view)
    }

    async fn acquire(&mut self, agents: &[String]) -> Vec<Result<Acquired, PoolError>> {
        match self.for_agents().await {
            Ok((client, lease)) => {
                let this = &*self;
                let requests = agents
                    .iter()
                    .map(|a| this.acquire_one(client.clone(), lease, a));
                let results = futures::future::join_all(requests).await;
                let instance = self.instance.clone();
                agents
                    .iter()
                    .zip(results)
                    .map(|(agent, result)| {
                        let (acquired, revision) = result?;
                        if matches!(acquired, Acquired::Won { .. }) {
                            self.wrote_owner(agent, Some(instance.as_bytes()), revision);
                        }
                        Ok(acquired)
                    })
                    .collect()
            }
            Err(e) => agents.iter().map(|_| Err(coordinator(&e))).collect(),
        }
    }

    async fn write_holders(&mut self, writes: &[HolderWrite]) -> Vec<Result<(), PoolError>> {
        match self.for_agents().await {
            Ok((client, lease)) => {
                let this = &*self;
                let batches = writes
                    .chunks(HOLDER_WRITES_PER_TXN)
                    .map(|batch| this.write_holder_batch(client.clone(), lease, batch));
                let results = futures::future::join_all(batches).await;
                writes
                    .chunks(HOLDER_WRITES_PER_TXN)
                    .zip(results)
                    .flat_map(|(batch, r)| batch.iter().map(move |_| r.clone()))
                    .collect()
            }
            Err(e) => writes.iter().map(|_| Err(coordinator(&e))).collect(),
        }
    }

    async fn forget_holders(&mut self, agents: &[String]) -> Result<(), PoolError> {
        let mut client = self.client().await?;
        for batch in agents.chunks(HOLDER_WRITES_PER_TXN) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|agent| {
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::create_revision(
                                self.key("owners", agent),
                                CompareOp::Equal,
                                0,
                            )])
                            .and_then([TxnOp::delete(self.key("holders", agent), None)]),
                    )
                })
                .collect();
            self.bounded(client.txn(Txn::new().and_then(ops))).await?;
        }
        Ok(())
    }

    async fn release(
        &mut self,
        agents: &[(String, Option<Vec<u8>>)],
    ) -> Vec<Result<bool, PoolError>> {
        match self.for_agents().await {
            Ok((client, lease)) => {
                let this = &*self;
                let requests = agents.iter().map(|(a, record)| {
                    this.release_one(client.clone(), lease, a, record.as_deref())
                });
                let results = futures::future::join_all(requests).await;
                agents
                    .iter()
                    .zip(results)
                    .map(|((agent, _), result)| {
                        let (released, revision) = result?;
                        if released {
                            self.wrote_owner(agent, None, revision);
                        }
                        Ok(released)
                    })
                    .collect()
            }
            Err(e) => agents.iter().map(|_| Err(coordinator(&e))).collect(),
        }
    }

    async fn changed(&mut self) {
        loop {
            // Without a watch the loop's tick reads the pool, and that read opens one.
            let Some(watch) = self.watch.as_mut() else {
                return std::future::pending().await;
            };
            let answer = watch.message().await;
            if self.apply(answer) {
                return;
            }
        }
    }

    async fn leave(&mut self) -> Result<(), PoolError> {
        let Some(id) = self.lease.take() else {
            return Ok(());
        };
        let mut client = self.client().await?;
        self.bounded(client.lease_revoke(id)).await?;
        Ok(())
    }
}

impl EtcdBackend {
    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, PoolError> {
        match tokio::time::timeout(self.bound(), f).await {
            Ok(r) => r.map_err(|e| hints::describe(e, &self.setup())),
            Err(_) => Err(PoolError::Coordinator("request timed out".into())),
        }
    }
}
