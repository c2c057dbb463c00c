//! The pool's etcd backend: one lease per instance, one key per member and per owned agent.
//!
//! Keys under the prefix:
//! - `members/{instance}`: the instance's membership, under its lease.
//! - `owners/{agent}`: the owning instance, under its lease; taken only if absent (an atomic
//!   create: `create_revision == 0`), so at most one instance owns an agent at any revision.
//! - `holders/{agent}`: the instance that took the agent last, *not* under a lease. A graceful
//!   hand-over deletes it with the owner key; a lease that ends (crash, partition) leaves it, so
//!   the next owner learns that the gateway may still run the crashed holder's session.

use super::{Acquired, Backend, PoolConfig, PoolError, Renewal, View};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use std::future::Future;
use std::time::Duration;

/// [`Backend`] on etcd v3.
pub struct EtcdBackend {
    endpoints: Vec<String>,
    prefix: String,
    instance: String,
    ttl: Duration,
    client: Option<Client>,
    lease: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// Watch on the whole prefix: wakes the loop when a member or an owner changes.
    watch: Option<WatchStream>,
    /// A renewal failed since the membership key was last written: write it again once the
    /// lease is renewed (an etcd that lost acknowledged writes may have lost it).
    reassert: bool,
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
            client: None,
            lease: None,
            keeper: None,
            watch: None,
            reassert: false,
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
        let options = ConnectOptions::new()
            .with_connect_timeout(self.bound())
            .with_timeout(self.bound())
            .with_keep_alive(self.bound(), self.bound());
        let client = Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(coordinator)?;
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, PoolError> {
        match tokio::time::timeout(self.bound(), f).await {
            Ok(r) => r.map_err(coordinator),
            Err(_) => Err(PoolError::Coordinator("request timed out".into())),
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}/{name}", self.prefix)
    }

    fn lease(&self) -> Result<i64, PoolError> {
        self.lease
            .ok_or_else(|| PoolError::Coordinator("no lease".into()))
    }

    /// One keep-alive round trip on the lease's stream (opened on first use).
    async fn renew_once(&mut self) -> Result<Renewal, PoolError> {
        let id = self.lease()?;
        let mut client = self.client().await?;
        if self.keeper.is_none() {
            // Opening the stream sends a first keep-alive; a lease that is gone fails it.
            match tokio::time::timeout(self.bound(), client.lease_keep_alive(id)).await {
                Ok(Ok(keeper)) => self.keeper = Some(keeper),
                Ok(Err(e)) if lease_gone(&e) => {
                    self.lease = None;
                    return Ok(Renewal::Lost);
                }
                Ok(Err(e)) => return Err(coordinator(e)),
                Err(_) => return Err(PoolError::Coordinator("keep-alive timed out".into())),
            }
        }
        let bound = self.bound();
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Err(PoolError::Coordinator("no keep-alive stream".into()));
        };
        let answer = tokio::time::timeout(bound, async {
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match answer {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                Ok(Renewal::Alive(Duration::from_secs(resp.ttl() as u64)))
            }
            Ok(Ok(Some(_))) => {
                self.lease = None;
                self.keeper = None;
                Ok(Renewal::Lost)
            }
            Ok(Ok(None)) => {
                self.keeper = None;
                Err(PoolError::Coordinator("keep-alive stream closed".into()))
            }
            Ok(Err(e)) => {
                self.keeper = None;
                if lease_gone(&e) {
                    self.lease = None;
                    return Ok(Renewal::Lost);
                }
                Err(coordinator(e))
            }
            Err(_) => {
                self.keeper = None;
                Err(PoolError::Coordinator("keep-alive timed out".into()))
            }
        }
    }
}

impl Backend for EtcdBackend {
    async fn join(&mut self) -> Result<Duration, PoolError> {
        let mut client = self.client().await?;
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let grant = self.bounded(client.lease_grant(ttl_secs, None)).await?;
        let id = grant.id();
        let member = self.key("members", &self.instance);
        let put = client.put(
            member,
            self.instance.as_bytes(),
            Some(PutOptions::new().with_lease(id)),
        );
        if let Err(e) = self.bounded(put).await {
            let _ = self.bounded(client.lease_revoke(id)).await;
            return Err(e);
        }
        self.lease = Some(id);
        self.keeper = None;
        Ok(Duration::from_secs(grant.ttl().max(0) as u64))
    }

    async fn renew(&mut self) -> Result<Renewal, PoolError> {
        let renewal = self.renew_once().await;
        match &renewal {
            Ok(Renewal::Alive(_)) if self.reassert => {
                let (mut client, id) = (self.client().await?, self.lease()?);
                let member = self.key("members", &self.instance);
                let put = client.put(
                    member,
                    self.instance.as_bytes(),
                    Some(PutOptions::new().with_lease(id)),
                );
                self.reassert = self.bounded(put).await.is_err();
            }
            Err(_) => self.reassert = true,
            _ => {}
        }
        renewal
    }

    async fn view(&mut self) -> Result<View, PoolError> {
        let mut client = self.client().await?;
        let members = self.key("members", "");
        let owners = self.key("owners", "");
        let txn = Txn::new().and_then([
            TxnOp::get(members.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(owners.clone(), Some(GetOptions::new().with_prefix())),
        ]);
        let resp = self.bounded(client.txn(txn)).await?;
        let mut view = View::default();
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            for kv in get.kvs() {
                let (Ok(key), Ok(value)) = (kv.key_str(), kv.value_str()) else {
                    continue;
                };
                if i == 0 {
                    view.members.push(value.to_owned());
                } else if let Some(agent) = key.strip_prefix(&owners) {
                    view.owners.insert(agent.to_owned(), value.to_owned());
                }
            }
        }
        Ok(view)
    }

    async fn acquire(&mut self, agent: &str) -> Result<Acquired, PoolError> {
        let lease = self.lease()?;
        let mut client = self.client().await?;
        let owner = self.key("owners", agent);
        let holder = self.key("holders", agent);
        let txn = Txn::new()
            .when([Compare::create_revision(owner.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::get(holder.clone(), None),
                TxnOp::put(
                    owner,
                    self.instance.as_bytes(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(holder, self.instance.as_bytes(), None),
            ]);
        let resp = self.bounded(client.txn(txn)).await?;
        if !resp.succeeded() {
            return Ok(Acquired::Held);
        }
        let crashed_holder = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_owned),
            _ => None,
        });
        Ok(Acquired::Won { crashed_holder })
    }

    async fn release(&mut self, agent: &str) -> Result<(), PoolError> {
        let lease = self.lease()?;
        let mut client = self.client().await?;
        let owner = self.key("owners", agent);
        let holder = self.key("holders", agent);
        // Only while the record is still under this instance's lease: never release another's.
        let txn = Txn::new()
            .when([Compare::lease(owner.clone(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(owner, None), TxnOp::delete(holder, None)]);
        self.bounded(client.txn(txn)).await?;
        Ok(())
    }

    async fn changed(&mut self) {
        if self.watch.is_none() {
            let opened = match self.client().await {
                Ok(mut client) => {
                    let options = WatchOptions::new().with_prefix();
                    self.bounded(client.watch(self.prefix.clone(), Some(options)))
                        .await
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
            _ => {
                self.watch = None;
                std::future::pending().await
            }
        }
    }

    async fn leave(&mut self) -> Result<(), PoolError> {
        let Some(id) = self.lease.take() else {
            return Ok(());
        };
        self.keeper = None;
        let mut client = self.client().await?;
        self.bounded(client.lease_revoke(id)).await?;
        Ok(())
    }
}
