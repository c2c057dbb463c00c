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

use super::{
    hints, Acquired, Backend, EtcdAuth, EtcdTls, HolderWrite, LeaseRenewal, PoolConfig, PoolError,
    Renewal, View,
};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};
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
    /// Watch on the whole prefix: wakes the loop when a member or an owner changes.
    watch: Option<WatchStream>,
    /// Catalogs read so far, by digest (a digest names its content, so it never changes).
    catalogs: HashMap<String, Arc<HashSet<String>>>,
}

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
    id: i64,
    bound: Duration,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// For keep-alive failures worded as every other etcd failure (cause and fix).
    setup: hints::OwnedSetup,
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
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.bound())
            .with_timeout(self.bound())
            .with_keep_alive(self.bound(), self.bound());
        if let Some(tls) = &self.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, &key[..]));
            }
            options = options.with_tls(config);
        }
        if let Some(auth) = &self.auth {
            options = options.with_user(auth.user.clone(), auth.password.expose());
        }
        let client = Client::connect(&self.endpoints, Some(options))
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

    async fn acquire_one(
        &self,
        mut client: Client,
        lease: i64,
        agent: &str,
    ) -> Result<Acquired, PoolError> {
        let owner = self.key("owners", agent);
        // The previous holder's record is read in the same transaction and left as it is until
        // this instance has signed the agent in (and writes its own).
        let txn = Txn::new()
            .when([Compare::create_revision(owner.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::get(self.key("holders", agent), None),
                TxnOp::put(
                    owner,
                    self.instance.as_bytes(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ]);
        let resp = self.bounded(client.txn(txn)).await?;
        if !resp.succeeded() {
            return Ok(Acquired::Held);
        }
        let hand_off = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok(Acquired::Won { hand_off })
    }

    async fn release_one(
        &self,
        mut client: Client,
        lease: i64,
        agent: &str,
        record: Option<&[u8]>,
    ) -> Result<bool, PoolError> {
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
        Ok(self.bounded(client.txn(txn)).await?.succeeded())
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

    /// The client and lease every per-agent request needs, or the reason there are none.
    async fn for_agents(&mut self) -> Result<(Client, i64), PoolError> {
        let lease = self.lease()?;
        Ok((self.client().await?, lease))
    }
}

impl LeaseRenewal for EtcdLease {
    /// One keep-alive round trip on the lease's stream (opened on first use).
    async fn renew(&mut self) -> Result<Renewal, PoolError> {
        if self.keeper.is_none() {
            // Opening the stream sends a first keep-alive; a lease that is gone fails it.
            match tokio::time::timeout(self.bound, self.client.lease_keep_alive(self.id)).await {
                Ok(Ok(keeper)) => self.keeper = Some(keeper),
                Ok(Err(e)) if lease_gone(&e) => return Ok(Renewal::Lost),
                Ok(Err(e)) => return Err(self.setup.describe(e)),
                Err(_) => return Err(PoolError::Coordinator("keep-alive timed out".into())),
            }
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Err(PoolError::Coordinator("no keep-alive stream".into()));
        };
        let answer = tokio::time::timeout(self.bound, async {
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
        let lease = EtcdLease {
            client,
            id,
            bound: self.bound(),
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

    async fn view(&mut self) -> Result<View, PoolError> {
        let mut client = self.client().await?;
        let members = self.key("members", "");
        let owners = self.key("owners", "");
        let holders = self.key("holders", "");
        let txn = Txn::new().and_then([
            TxnOp::get(members.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(owners.clone(), Some(GetOptions::new().with_prefix())),
            // Keys only: the sealed records mean nothing without the key, and are read one
            // at a time where they are needed (a take-over's acquire).
            TxnOp::get(
                holders.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        ]);
        let resp = self.bounded(client.txn(txn)).await?;
        let mut view = View::default();
        let mut digests = Vec::new();
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            for kv in get.kvs() {
                let Ok(key) = kv.key_str() else {
                    continue;
                };
                if let Some(agent) = key.strip_prefix(&holders).filter(|_| i == 2) {
                    view.holders.insert(agent.to_owned());
                    continue;
                }
                let Ok(value) = kv.value_str() else {
                    continue;
                };
                if i == 0 {
                    if let Some(member) = key.strip_prefix(&members) {
                        view.members.push(member.to_owned());
                        digests.push((member.to_owned(), value.to_owned()));
                    }
                } else if let Some(agent) = key.strip_prefix(&owners) {
                    view.owners.insert(agent.to_owned(), value.to_owned());
                }
            }
        }
        for (member, digest) in digests {
            if let Some(catalog) = self.catalog(&mut client, &digest).await? {
                view.catalogs.insert(member, catalog);
            }
        }
        Ok(view)
    }

    async fn acquire(&mut self, agents: &[String]) -> Vec<Result<Acquired, PoolError>> {
        match self.for_agents().await {
            Ok((client, lease)) => {
                let this = &*self;
                let requests = agents
                    .iter()
                    .map(|a| this.acquire_one(client.clone(), lease, a));
                futures::future::join_all(requests).await
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
                futures::future::join_all(requests).await
            }
            Err(e) => agents.iter().map(|_| Err(coordinator(&e))).collect(),
        }
    }

    async fn changed(&mut self) {
        if self.watch.is_none() {
            let opened = match self.client().await {
                Ok(mut client) => {
                    let options = WatchOptions::new().with_prefix();
                    self.bounded(client.watch(self.prefix.clone(), Some(options)))
                        .await
                        .map_err(|e| tracing::debug!(error = %e, "pool: cannot watch the prefix; reconciling at each tick"))
                        .ok()
                }
                Err(_) => None,
            };
            match opened {
                Some(watch) => self.watch = Some(watch),
                // Tried again at the next call; the loop's tick goes on meanwhile.
                None => return std::future::pending().await,
            }
        }
        let Some(watch) = self.watch.as_mut() else {
            return std::future::pending().await;
        };
        match watch.message().await {
            Ok(Some(resp)) if !resp.canceled() => {}
            end => {
                if let Err(e) = end {
                    let e = hints::describe(e, &self.setup());
                    tracing::debug!(error = %e, "pool: the watch on the prefix ended; reconciling at each tick");
                }
                self.watch = None;
                std::future::pending().await
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
