//! Several server nodes sharing presence through Redis (`docs/cluster.md` describes the keys and messages).
//!
//! Each node keeps its connections, sessions and watch lists to itself, and a replica of the canonical presence
//! ([`Canonical`]) of the users it serves: users with a session on the node and users its sessions watch. The
//! canonical presence lives in Redis, one hash per user, with the contribution of each node's sessions in a
//! field of its own. A change is made optimistically: read the hash, compute the new presence with the same
//! rules as a single server ([`recompute`]), and write it back with a revision check in one script that also
//! publishes it on the users bus; on a conflict the change is made again on what another node wrote. Every node
//! receives the bus and applies newer revisions to its replicas, which fans them out to its watchers.
//!
//! Liveness: a node refreshes a key with a TTL (`node:{id}`) a few times per TTL. When it dies the key expires,
//! and any other node removes the dead node's contributions from the users it had sessions of (listed in
//! `node:{id}:users`), which takes those users offline unless they have sessions elsewhere.
//!
//! Redis going away: changes wait (nothing is dropped) and are written when it is back. A Redis that restarted
//! empty is noticed by its missing epoch key; every node then writes back what it owns (its contributions, and
//! the choices and settings of the users with sessions on it), and after a node TTL also the last known
//! presence of the users it only watches, which their nodes, if alive, have restored by then.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use presently_core::protocol::{Choice, Privacy};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::hub::{
    Canonical, Contribution, Hub, apply_choice, end_of_sessions, expire_message, recompute,
    unix_millis,
};

/// How a server node shares presence with other nodes through Redis.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// The Redis URL, e.g. `redis://127.0.0.1:6379` (`rediss://` for TLS, `redis://:password@host`).
    pub url: String,
    /// How long a node counts as alive after its last heartbeat to Redis; it sends one every quarter of it.
    /// The sessions of a node that died end on every other node within this TTL and a quarter. Default 10 s.
    pub node_ttl: Duration,
    /// The prefix of every key and channel name, so that several deployments can share one Redis.
    /// Default `presently`.
    pub key_prefix: String,
}

impl RedisConfig {
    /// Default settings for this Redis URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            node_ttl: Duration::from_secs(10),
            key_prefix: "presently".into(),
        }
    }
}

/// A change to one user's canonical presence, made by the node that holds the shared store's copy.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// An explicit choice from a session (the newest choice wins).
    Choice(Choice),
    /// The user was active at this Unix ms.
    Active(u64),
    /// New privacy settings.
    Privacy(Privacy),
    /// A new contact list (admin API).
    Contacts(BTreeSet<String>),
    /// The message of the choice made at this Unix ms expired.
    ExpireMessage(u64),
    /// A session of the user ended; its last frame arrived at this Unix ms.
    Left(u64),
    /// The sessions on this node changed (their automatic state, focus, or number).
    Sessions,
    /// Write back what this node knew after the store lost it. `owned`: the user has a session here.
    Restore { canon: Canonical, owned: bool },
    /// Remove the contributions of a dead node, last alive at `last_alive` (Unix ms).
    Reap { node: String, last_alive: u64 },
}

/// A change waiting to be made to the shared store.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) user: String,
    pub(crate) ops: Vec<Op>,
    /// Told when the change is in the store.
    pub(crate) done: Option<oneshot::Sender<()>>,
}

/// Why the shared store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The node is not connected to Redis at the moment.
    #[error("not connected to redis")]
    Unavailable,
    /// Redis did not answer in time.
    #[error("redis did not answer within {0} ms")]
    Timeout(u128),
    /// The channel already has the most members allowed.
    #[error("the channel is full")]
    ChannelFull,
}

/// How long one Redis round trip may take before the connection is considered broken.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// How many commands go in one pipeline when loading replicas.
const LOAD_BATCH: usize = 1_000;

/// The optimistic write of a user's presence (see the module documentation and `docs/cluster.md`).
/// KEYS: user hash, this node's user set. ARGV: expected revision, state, this node's field, its contribution
/// (empty: none), user id, bus channel, then pairs of a dead node's field and its liveness key: the field is
/// deleted only if the key is still gone (a node that came back keeps what it wrote).
const WRITE_USER: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if cur ~= tonumber(ARGV[1]) then return '' end
local t = redis.call('TIME')
local rev = math.max(cur + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
local revs = string.format('%.0f', rev)
redis.call('HSET', KEYS[1], 'rev', revs, 'state', ARGV[2])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], ARGV[3])
  redis.call('SREM', KEYS[2], ARGV[5])
else
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[5])
end
for i = 7, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[i + 1]) == 0 then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
redis.call('PUBLISH', ARGV[6], '{"user":' .. cjson.encode(ARGV[5]) .. ',"rev":' .. revs .. ',"state":' .. ARGV[2] .. '}')
return revs
"#;

/// A change of a channel's members. KEYS: member set, revision. ARGV: mode (`set`, `add`, `remove`), member
/// limit, bus channel, channel id, users... Returns the new revision, 0 for no change, -1 for a full channel.
const CHANGE_CHANNEL: &str = r#"
local joined, left = {}, {}
local mode = ARGV[1]
if mode == 'set' then
  local new = {}
  for i = 5, #ARGV do new[ARGV[i]] = true end
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if not new[m] then table.insert(left, m) end
  end
  for u, _ in pairs(new) do
    if redis.call('SISMEMBER', KEYS[1], u) == 0 then table.insert(joined, u) end
  end
  for _, m in ipairs(left) do redis.call('SREM', KEYS[1], m) end
  for _, u in ipairs(joined) do redis.call('SADD', KEYS[1], u) end
elseif mode == 'add' then
  if redis.call('SISMEMBER', KEYS[1], ARGV[5]) == 0 then
    if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
    redis.call('SADD', KEYS[1], ARGV[5])
    joined = {ARGV[5]}
  end
else
  if redis.call('SREM', KEYS[1], ARGV[5]) == 1 then left = {ARGV[5]} end
end
if #joined == 0 and #left == 0 then return 0 end
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = redis.call('TIME')
local rev = math.max(prev + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
local revs = string.format('%.0f', rev)
redis.call('SET', KEYS[2], revs)
-- Revisions go as strings: Redis's JSON encoder keeps only 14 significant digits of a number.
redis.call('PUBLISH', ARGV[3], cjson.encode({channel = ARGV[4], prev = string.format('%.0f', prev), rev = revs, joined = joined, left = left}))
return rev
"#;

/// Writes a channel's members back if the store lost them. KEYS: member set, revision. ARGV: revision, users...
const RESTORE_CHANNEL: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 2, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"#;

/// Forgets a reaped node, unless it came back. KEYS: its liveness key, its user set, the node list. ARGV: its id.
const FORGET_NODE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"#;

/// The names of keys and channels under a prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn user(&self, user: &str) -> String {
        format!("{}:user:{user}", self.prefix)
    }
    fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn node_users(&self, node: &str) -> String {
        format!("{}:node:{node}:users", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn members(&self, channel: &str) -> String {
        format!("{}:channel:{channel}:members", self.prefix)
    }
    fn channel_rev(&self, channel: &str) -> String {
        format!("{}:channel:{channel}:rev", self.prefix)
    }
    fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
    fn users_bus(&self) -> String {
        format!("{}:bus:users", self.prefix)
    }
    fn channels_bus(&self) -> String {
        format!("{}:bus:channels", self.prefix)
    }
}

/// The field of a node's contribution in a user hash.
fn node_field(node: &str) -> String {
    format!("node:{node}")
}

/// A message on the users bus.
#[derive(Debug, Deserialize)]
struct UserMessage {
    user: String,
    rev: u64,
    state: Canonical,
}

/// Where a hub sends changes for the shared store, with a count of those not yet written.
#[derive(Debug, Clone)]
pub(crate) struct StoreLink {
    jobs: mpsc::UnboundedSender<Job>,
    outstanding: Arc<AtomicUsize>,
}

impl StoreLink {
    /// Queues a change.
    pub(crate) fn send(&self, job: Job) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A node's link to the shared store.
pub(crate) struct Cluster {
    node_id: String,
    config: RedisConfig,
    keys: Keys,
    hub: Arc<Hub>,
    client: redis::Client,
    /// The command connection while Redis is reachable.
    conn: watch::Sender<Option<MultiplexedConnection>>,
    link: StoreLink,
    /// The epoch of the store as last seen (a store that lost its data has another).
    epoch: Mutex<Option<String>>,
    /// Stops every task of the cluster without writing anything more (the node died).
    kill: CancellationToken,
    /// Stops the tasks after the last changes are written (the node shuts down).
    stop: CancellationToken,
    /// Dead nodes being reaped by this node.
    reaping: Mutex<HashSet<String>>,
    write_user: redis::Script,
    change_channel: redis::Script,
    restore_channel: redis::Script,
    forget_node: redis::Script,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .finish()
    }
}

async fn timed<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REDIS_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(REDIS_TIMEOUT.as_millis())),
    }
}

impl Cluster {
    /// Connects to Redis, makes `hub` hand its changes to the store, and starts the node's tasks. Fails if
    /// Redis cannot be reached now.
    pub(crate) async fn start(
        config: RedisConfig,
        hub: Arc<Hub>,
        kill: CancellationToken,
    ) -> Result<Arc<Cluster>, StoreError> {
        let client = redis::Client::open(config.url.as_str())?;
        // Refuse to start without a store rather than serve presence no other node sees.
        let mut probe = timed(client.get_multiplexed_async_connection()).await?;
        let _: String = timed(redis::cmd("PING").query_async(&mut probe)).await?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let link = StoreLink {
            jobs,
            outstanding: Arc::new(AtomicUsize::new(0)),
        };
        let keys = Keys {
            prefix: config.key_prefix.clone(),
        };
        let cluster = Arc::new(Cluster {
            node_id: format!("{:016x}", rand::random::<u64>()),
            config,
            keys,
            hub: hub.clone(),
            client,
            conn: watch::Sender::new(None),
            link: link.clone(),
            epoch: Mutex::new(None),
            kill,
            stop: CancellationToken::new(),
            reaping: Mutex::new(HashSet::new()),
            write_user: redis::Script::new(WRITE_USER),
            change_channel: redis::Script::new(CHANGE_CHANNEL),
            restore_channel: redis::Script::new(RESTORE_CHANNEL),
            forget_node: redis::Script::new(FORGET_NODE),
        });
        hub.use_store(link);
        tokio::spawn(cluster.clone().supervise());
        tokio::spawn(cluster.clone().work(rx));
        // Serve only once the node is registered and subscribed.
        let mut ready = cluster.conn.subscribe();
        let _ = tokio::time::timeout(REDIS_TIMEOUT, ready.wait_for(Option::is_some)).await;
        tracing::info!(node = %cluster.node_id, "sharing presence through redis");
        Ok(cluster)
    }

    /// This node's id.
    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The command connection if Redis is reachable now.
    fn current_connection(&self) -> Option<MultiplexedConnection> {
        self.conn.borrow().clone()
    }

    /// The command connection, waiting for Redis up to `wait`.
    async fn connection(&self, wait: Duration) -> Option<MultiplexedConnection> {
        let mut rx = self.conn.subscribe();
        let ready = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(conn)) => conn.clone(),
            _ => None,
        }
    }

    /// Writes the last changes and stops (a graceful shutdown). The node's liveness key is left to expire: the
    /// contributions of the sessions it drained keep their users online while the clients reconnect to other
    /// nodes, and are reaped after the node TTL.
    pub(crate) async fn shutdown(&self) {
        let deadline = tokio::time::Instant::now() + REDIS_TIMEOUT;
        while self.link.outstanding.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
            && !self.kill.is_cancelled()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.cancel();
    }

    /// Makes sure this node holds the canonical presence of `users`, reading those it lacks from the store.
    pub(crate) async fn load_users(&self, users: &[String]) {
        let missing = self.hub.unloaded_users(users);
        if missing.is_empty() {
            return;
        }
        if let Err(e) = self.read_users(&missing).await {
            tracing::warn!(error = %e, "cannot read presence from redis; using what this node knows");
        }
    }

    /// Reads users from the store and adopts them (also those this node had: newer revisions win).
    async fn read_users(&self, users: &[String]) -> Result<(), StoreError> {
        // Without Redis now, serve what this node knows rather than keep the session waiting; the replicas are
        // read again when Redis is back.
        let Some(mut conn) = self.current_connection() else {
            return Err(StoreError::Unavailable);
        };
        // Bus messages that arrive while the read is under way land in the new replicas.
        self.hub.prepare_users(users);
        for batch in users.chunks(LOAD_BATCH) {
            let mut pipe = redis::pipe();
            for user in batch {
                pipe.cmd("HMGET")
                    .arg(self.keys.user(user))
                    .arg("rev")
                    .arg("state");
            }
            let rows: Vec<(Option<u64>, Option<String>)> =
                timed(pipe.query_async(&mut conn)).await?;
            for (user, (rev, state)) in batch.iter().zip(rows) {
                let canon = match state.as_deref().map(serde_json::from_str::<Canonical>) {
                    Some(Ok(canon)) => canon,
                    Some(Err(e)) => {
                        tracing::warn!(%user, error = %e, "unreadable presence in redis; ignored");
                        Canonical::default()
                    }
                    None => Canonical::default(),
                };
                let expiry = self.hub.apply_user(user, rev.unwrap_or(0), canon, true);
                self.schedule_expiry(user, expiry);
            }
        }
        Ok(())
    }

    /// Makes sure this node holds `channel`'s members and their presence.
    pub(crate) async fn load_channel(&self, channel: &str) {
        if self.hub.channel_loaded(channel) {
            // The members' replicas may have been dropped while nobody here watched them.
            let (_, members) = self.hub.channel_replica(channel);
            self.load_users(&members).await;
            return;
        }
        if let Err(e) = self.read_channel(channel).await {
            tracing::warn!(%channel, error = %e, "cannot read channel from redis");
        }
    }

    async fn read_channel(&self, channel: &str) -> Result<(), StoreError> {
        let Some(mut conn) = self.current_connection() else {
            return Err(StoreError::Unavailable);
        };
        self.hub.prepare_channel(channel);
        // Changes announced while the members are read (and their presence loaded) make the read start over.
        for _ in 0..10 {
            let (members, rev): (BTreeSet<String>, Option<u64>) = timed(
                redis::pipe()
                    .atomic()
                    .smembers(self.keys.members(channel))
                    .get(self.keys.channel_rev(channel))
                    .query_async(&mut conn),
            )
            .await?;
            let rev = rev.unwrap_or(0);
            let list: Vec<String> = members.iter().cloned().collect();
            self.load_users(&list).await;
            if self.hub.channel_announced(channel) > rev {
                continue;
            }
            self.hub.apply_channel_members(channel, rev, members);
            return Ok(());
        }
        Err(StoreError::Unavailable)
    }

    /// The channel's members as the store has them, sorted.
    pub(crate) async fn channel_members(&self, channel: &str) -> Result<Vec<String>, StoreError> {
        let Some(mut conn) = self.connection(REDIS_TIMEOUT).await else {
            return Err(StoreError::Timeout(REDIS_TIMEOUT.as_millis()));
        };
        let members: BTreeSet<String> = timed(conn.smembers(self.keys.members(channel))).await?;
        Ok(members.into_iter().collect())
    }

    /// The user's contacts as the store has them, sorted.
    pub(crate) async fn contacts(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let Some(mut conn) = self.connection(REDIS_TIMEOUT).await else {
            return Err(StoreError::Timeout(REDIS_TIMEOUT.as_millis()));
        };
        let state: Option<String> = timed(conn.hget(self.keys.user(user), "state")).await?;
        let canon: Canonical = state
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        Ok(canon.contacts.into_iter().collect())
    }

    /// Replaces a user's contacts and waits until the store has them. If Redis is away longer than the
    /// timeout, the change stays queued and this returns an error.
    pub(crate) async fn set_contacts(
        &self,
        user: &str,
        contacts: BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.link.send(Job {
            user: user.to_owned(),
            ops: vec![Op::Contacts(contacts)],
            done: Some(done),
        });
        match tokio::time::timeout(REDIS_TIMEOUT * 2, wait).await {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::Timeout((REDIS_TIMEOUT * 2).as_millis())),
        }
    }

    /// Changes a channel's members in the store (`set` replaces them, otherwise `user` is added or removed)
    /// and waits until this node has applied the change.
    pub(crate) async fn change_channel(
        &self,
        channel: &str,
        change: ChannelChange,
    ) -> Result<(), StoreError> {
        let Some(mut conn) = self.connection(REDIS_TIMEOUT).await else {
            return Err(StoreError::Timeout(REDIS_TIMEOUT.as_millis()));
        };
        let mut invocation = self.change_channel.prepare_invoke();
        invocation
            .key(self.keys.members(channel))
            .key(self.keys.channel_rev(channel));
        let (mode, users) = match change {
            ChannelChange::Set(members) => ("set", members.into_iter().collect::<Vec<_>>()),
            ChannelChange::Add(user) => ("add", vec![user]),
            ChannelChange::Remove(user) => ("remove", vec![user]),
        };
        invocation
            .arg(mode)
            .arg(presently_core::protocol::MAX_CHANNEL_MEMBERS)
            .arg(self.keys.channels_bus())
            .arg(channel);
        for user in &users {
            invocation.arg(user);
        }
        let rev: i64 = timed(invocation.invoke_async(&mut conn)).await?;
        if rev < 0 {
            return Err(StoreError::ChannelFull);
        }
        // This node applies the change from the bus like every other; a channel it holds is read again if the
        // message has not arrived yet, so that the caller sees the change applied here.
        let rev = u64::try_from(rev).unwrap_or(0);
        if rev > 0 && self.hub.channel_loaded(channel) && self.hub.channel_rev(channel) < rev {
            self.read_channel(channel).await?;
        }
        Ok(())
    }

    fn schedule_expiry(self: &Cluster, user: &str, expiry: Option<(u64, u64)>) {
        let Some((chosen_at, expires_at)) = expiry else {
            return;
        };
        let wait = Duration::from_millis(expires_at.saturating_sub(unix_millis()));
        let (hub, kill, user) = (self.hub.clone(), self.kill.clone(), user.to_owned());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => hub.expire_message(&user, chosen_at),
                _ = kill.cancelled() => {}
            }
        });
    }

    /// Writes changes to the store: one user at a time per user, users in parallel, later changes of a user
    /// waiting for the running one and then made together.
    async fn work(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Job>) {
        type Pending = (Vec<Op>, Vec<oneshot::Sender<()>>, usize);
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut running: HashSet<String> = HashSet::new();
        let (finished_tx, mut finished) = mpsc::unbounded_channel::<String>();
        loop {
            let user = tokio::select! {
                _ = self.kill.cancelled() => return,
                _ = self.stop.cancelled() => return,
                job = rx.recv() => {
                    let Some(job) = job else { return };
                    let entry = pending.entry(job.user.clone()).or_default();
                    entry.0.extend(job.ops);
                    entry.1.extend(job.done);
                    entry.2 += 1;
                    job.user
                }
                user = finished.recv() => {
                    let Some(user) = user else { return };
                    running.remove(&user);
                    user
                }
            };
            if running.contains(&user) {
                continue;
            }
            let Some((ops, done, count)) = pending.remove(&user) else {
                continue;
            };
            running.insert(user.clone());
            let (cluster, finished_tx) = (self.clone(), finished_tx.clone());
            tokio::spawn(async move {
                cluster.write(&user, &ops).await;
                for done in done {
                    let _ = done.send(());
                }
                cluster.link.outstanding.fetch_sub(count, Ordering::SeqCst);
                let _ = finished_tx.send(user);
            });
        }
    }

    /// Makes the changes `ops` to `user` in the store, retrying on conflicts and while Redis is away.
    async fn write(&self, user: &str, ops: &[Op]) {
        let mut wait = Duration::from_millis(20);
        let mut conflicts = 0u32;
        while !self.kill.is_cancelled() && !self.stop.is_cancelled() {
            let Some(mut conn) = self.connection(Duration::from_secs(1)).await else {
                continue;
            };
            match self.try_write(&mut conn, user, ops).await {
                Ok(true) => return,
                Ok(false) => {
                    // Another node wrote the user meanwhile: again at once, then with a growing pause.
                    conflicts += 1;
                    if conflicts > 3 {
                        let pause = (conflicts * rand::random_range(1..5)).min(100);
                        tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(%user, error = %e, "presence not written yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// One optimistic attempt: `Ok(false)` if another node wrote the user meanwhile.
    async fn try_write(
        &self,
        conn: &mut MultiplexedConnection,
        user: &str,
        ops: &[Op],
    ) -> Result<bool, StoreError> {
        let key = self.keys.user(user);
        let fields: HashMap<String, String> = timed(conn.hgetall(&key)).await?;
        let rev: u64 = fields.get("rev").and_then(|r| r.parse().ok()).unwrap_or(0);
        let stored: Option<Canonical> = match fields.get("state") {
            Some(state) => match serde_json::from_str(state) {
                Ok(canon) => Some(canon),
                Err(e) => {
                    tracing::warn!(%user, error = %e, "unreadable presence in redis; rebuilt");
                    None
                }
            },
            None => None,
        };
        let own_field = node_field(&self.node_id);
        let own = self.hub.contribution(user);
        let own_json = if own.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&own).unwrap_or_default()
        };
        let reaped: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Reap { node, .. } => Some(node_field(node)),
                _ => None,
            })
            .collect();
        let mut contributions: Vec<Contribution> = own.clone();
        let mut dead_fields = Vec::new();
        for (field, value) in &fields {
            if !field.starts_with("node:") || *field == own_field {
                continue;
            }
            if reaped.contains(field) {
                dead_fields.push(field.clone());
                continue;
            }
            match serde_json::from_str::<Vec<Contribution>>(value) {
                Ok(list) => contributions.extend(list),
                Err(e) => {
                    tracing::warn!(%user, %field, error = %e, "unreadable contribution; ignored")
                }
            }
        }
        let mut canon = stored.clone().unwrap_or_default();
        let mut active_at: Option<u64> = None;
        let mut left_at: Option<u64> = None;
        for op in ops {
            match op {
                Op::Choice(choice) => {
                    apply_choice(&mut canon, choice.clone());
                }
                Op::Active(at) => active_at = active_at.max(Some(*at)),
                Op::Privacy(privacy) => canon.privacy = *privacy,
                Op::Contacts(contacts) => canon.contacts = contacts.clone(),
                Op::ExpireMessage(chosen_at) => {
                    expire_message(&mut canon, *chosen_at);
                }
                Op::Left(at) => left_at = left_at.max(Some(*at)),
                Op::Sessions => {}
                Op::Restore {
                    canon: known,
                    owned,
                } => {
                    if stored.is_none() {
                        canon = known.clone();
                    } else if let (true, Some((status, at))) = (*owned, &known.choice) {
                        apply_choice(
                            &mut canon,
                            Choice {
                                status: status.clone(),
                                chosen_at: Some(*at),
                            },
                        );
                    }
                }
                Op::Reap { last_alive, .. } => {
                    if !dead_fields.is_empty() {
                        left_at = left_at.max(Some(*last_alive));
                    }
                }
            }
        }
        if contributions.is_empty() {
            // The choice lasts only while the user has a session somewhere.
            match left_at {
                Some(at) => end_of_sessions(&mut canon, at),
                None => canon.choice = None,
            }
        }
        let now = unix_millis();
        recompute(&mut canon, &contributions, active_at, now);
        let own_unchanged = fields.get(&own_field).map_or("", String::as_str) == own_json;
        if stored.as_ref() == Some(&canon) && own_unchanged && dead_fields.is_empty() {
            return Ok(true);
        }
        if stored.is_none() && !canon.seen && own.is_empty() && dead_fields.is_empty() {
            return Ok(true);
        }
        if self.kill.is_cancelled() {
            return Ok(true);
        }
        let state = serde_json::to_string(&canon).unwrap_or_default();
        let mut invocation = self.write_user.prepare_invoke();
        invocation
            .key(&key)
            .key(self.keys.node_users(&self.node_id))
            .arg(rev)
            .arg(&state)
            .arg(&own_field)
            .arg(&own_json)
            .arg(user)
            .arg(self.keys.users_bus());
        for field in &dead_fields {
            let node = field.strip_prefix("node:").unwrap_or(field);
            invocation.arg(field).arg(self.keys.node(node));
        }
        let written: String = timed(invocation.invoke_async(conn)).await?;
        let Ok(new_rev) = written.parse::<u64>() else {
            return Ok(false);
        };
        let expiry = self.hub.apply_user(user, new_rev, canon, false);
        self.schedule_expiry(user, expiry);
        Ok(true)
    }

    /// Keeps a connection to Redis, reconnecting with backoff after it is lost.
    async fn supervise(self: Arc<Self>) {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.run_connection().await {
                Ok(()) => return,
                Err(e) => {
                    self.conn.send_replace(None);
                    tracing::warn!(error = %e, "lost redis; reconnecting");
                }
            }
            let jittered = wait.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            tokio::select! {
                _ = self.kill.cancelled() => return,
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(jittered) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection to Redis: subscribe to the buses, register, rebuild, then serve until it breaks.
    async fn run_connection(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut conn = timed(self.client.get_multiplexed_async_connection()).await?;
        let pubsub = timed(self.client.get_async_pubsub()).await?;
        let (mut sink, mut stream) = pubsub.split();
        timed(sink.subscribe(&[self.keys.users_bus(), self.keys.channels_bus()])).await?;
        let fresh: String = format!("{:016x}", rand::random::<u64>());
        let _: bool = timed(conn.set_nx(self.keys.epoch(), &fresh)).await?;
        let epoch: String = timed(conn.get(self.keys.epoch())).await?;
        let previous = self
            .epoch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(epoch.clone());
        let lost = previous.is_some_and(|p| p != epoch);
        self.heartbeat(&mut conn).await?;
        self.conn.send_replace(Some(conn.clone()));
        let beat = tokio::spawn(self.clone().beat(conn.clone()));
        let _abort_beat = AbortOnDrop(beat.abort_handle());
        let mut beat = beat;
        self.rebuild(lost).await;
        loop {
            tokio::select! {
                _ = self.kill.cancelled() => return Ok(()),
                _ = self.stop.cancelled() => return Ok(()),
                ended = &mut beat => {
                    return match ended {
                        Ok(Err(e)) => Err(e),
                        _ => Err(StoreError::Unavailable),
                    };
                }
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(StoreError::Redis(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "the subscription connection closed",
                        ))));
                    };
                    self.on_message(message.get_channel_name(), message.get_payload_bytes()).await;
                }
            }
        }
    }

    /// Refreshes this node's liveness key and its entry in the node list.
    /// Returns whether the key was still there: if not, this node was taken for dead (a stall, a partition, a
    /// long Redis outage) and other nodes may have removed its contributions.
    async fn heartbeat(&self, conn: &mut MultiplexedConnection) -> Result<bool, StoreError> {
        let ttl_ms = u64::try_from(self.config.node_ttl.as_millis()).unwrap_or(u64::MAX);
        let now = unix_millis();
        let (previous,): (Option<String>,) = timed(
            redis::pipe()
                .cmd("SET")
                .arg(self.keys.node(&self.node_id))
                .arg(now)
                .arg("PX")
                .arg(ttl_ms)
                .arg("GET")
                .hset(self.keys.nodes(), &self.node_id, now)
                .ignore()
                .query_async(conn),
        )
        .await?;
        Ok(previous.is_some())
    }

    /// Writes this node's contributions again (after it was taken for dead).
    fn reassert(&self) {
        for (user, canon, owned) in self.hub.replicas() {
            if owned {
                self.link.send(Job {
                    user,
                    ops: vec![Op::Restore { canon, owned: true }],
                    done: None,
                });
            }
        }
    }

    /// Refreshes this node's liveness and looks for dead nodes, on its own beat (not behind the bus).
    async fn beat(self: Arc<Self>, mut conn: MultiplexedConnection) -> Result<(), StoreError> {
        let mut tick = tokio::time::interval(self.config.node_ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut sweeps = 0u32;
        loop {
            tick.tick().await;
            if !self.heartbeat(&mut conn).await? {
                tracing::warn!(node = %self.node_id, "this node was taken for dead; writing its sessions again");
                self.reassert();
            }
            self.find_dead(&mut conn).await?;
            sweeps += 1;
            if sweeps == 8 {
                sweeps = 0;
                self.hub.sweep();
            }
        }
    }

    /// Finds nodes whose liveness key expired and reaps each once.
    async fn find_dead(
        self: &Arc<Self>,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), StoreError> {
        let listed: HashMap<String, String> = timed(conn.hgetall(self.keys.nodes())).await?;
        let nodes: HashMap<String, u64> = listed
            .into_iter()
            .map(|(node, at)| (node, at.parse().unwrap_or(0)))
            .collect();
        let others: Vec<(&String, &u64)> =
            nodes.iter().filter(|(n, _)| **n != self.node_id).collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (node, _) in &others {
            pipe.exists(self.keys.node(node));
        }
        let alive: Vec<bool> = timed(pipe.query_async(conn)).await?;
        for ((node, last_alive), alive) in others.into_iter().zip(alive) {
            if alive {
                continue;
            }
            let fresh = self
                .reaping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.clone());
            if fresh {
                tokio::spawn(self.clone().reap(node.clone(), *last_alive));
            }
        }
        Ok(())
    }

    /// Removes a dead node's contributions from every user it had sessions of, then the node itself.
    async fn reap(self: Arc<Self>, node: String, last_alive: u64) {
        let result: Result<(), StoreError> = async {
            let Some(mut conn) = self.connection(REDIS_TIMEOUT).await else {
                return Err(StoreError::Timeout(REDIS_TIMEOUT.as_millis()));
            };
            let users: Vec<String> = timed(conn.smembers(self.keys.node_users(&node))).await?;
            tracing::info!(%node, users = users.len(), "a node died; ending its sessions");
            let mut waits = Vec::new();
            for user in users {
                let (done, wait) = oneshot::channel();
                self.link.send(Job {
                    user,
                    ops: vec![Op::Reap {
                        node: node.clone(),
                        last_alive,
                    }],
                    done: Some(done),
                });
                waits.push(wait);
            }
            for wait in waits {
                let _ = wait.await;
            }
            let mut forget = self.forget_node.prepare_invoke();
            forget
                .key(self.keys.node(&node))
                .key(self.keys.node_users(&node))
                .key(self.keys.nodes())
                .arg(&node);
            let _: i64 = timed(forget.invoke_async(&mut conn)).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%node, error = %e, "reaping a dead node failed; will retry");
        }
        self.reaping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&node);
    }

    /// After (re)connecting: writes back what this node owns, and reads again what it replicates. `lost`: the
    /// store lost its data (a new epoch).
    async fn rebuild(self: &Arc<Self>, lost: bool) {
        let replicas = self.hub.replicas();
        let mut watched_only = Vec::new();
        for (user, canon, owned) in replicas {
            if owned {
                self.link.send(Job {
                    user,
                    ops: vec![Op::Restore { canon, owned: true }],
                    done: None,
                });
            } else if lost {
                watched_only.push((user, canon));
            }
        }
        let (users, channels) = self.hub.replicated();
        if lost {
            tracing::warn!("redis lost its data; writing back what this node knows");
            let conn = self.conn.borrow().clone();
            if let Some(mut conn) = conn {
                for channel in &channels {
                    let (rev, members) = self.hub.channel_replica(channel);
                    let mut invocation = self.restore_channel.prepare_invoke();
                    invocation
                        .key(self.keys.members(channel))
                        .key(self.keys.channel_rev(channel))
                        .arg(rev);
                    for member in members {
                        invocation.arg(member);
                    }
                    let restored: Result<i64, _> = timed(invocation.invoke_async(&mut conn)).await;
                    if let Err(e) = restored {
                        tracing::warn!(%channel, error = %e, "cannot write a channel back");
                    }
                }
            }
            // Users only watched from here are written back after their own nodes had time to do it, so that
            // what a live node restores wins; a user whose node died too ends up offline.
            if !watched_only.is_empty() {
                let (cluster, wait) = (self.clone(), self.config.node_ttl);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cluster.kill.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    for (user, canon) in watched_only {
                        cluster.link.send(Job {
                            user,
                            ops: vec![Op::Restore {
                                canon,
                                owned: false,
                            }],
                            done: None,
                        });
                    }
                });
            }
        }
        // Revisions only grow, also across a Redis that lost its data, so reading again is safe: what the store
        // has newer than a replica wins, and a record it lost leaves the replica as it is.
        if let Err(e) = self.read_users(&users).await {
            tracing::warn!(error = %e, "cannot read presence again after reconnecting");
        }
        for channel in channels {
            if let Err(e) = self.read_channel(&channel).await {
                tracing::warn!(%channel, error = %e, "cannot read a channel again");
            }
        }
    }

    /// A message from a bus.
    async fn on_message(&self, channel: &str, payload: &[u8]) {
        if channel == self.keys.users_bus() {
            match serde_json::from_slice::<UserMessage>(payload) {
                Ok(m) => {
                    let expiry = self.hub.apply_user(&m.user, m.rev, m.state, false);
                    self.schedule_expiry(&m.user, expiry);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable presence message; ignored"),
            }
        } else if channel == self.keys.channels_bus() {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
                tracing::warn!("unreadable channel message; ignored");
                return;
            };
            let list = |name: &str| -> Vec<String> {
                // Redis's JSON encoder writes an empty list as `{}`.
                value
                    .get(name)
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|u| u.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let revision = |name: &str| {
                value
                    .get(name)
                    .and_then(|r| r.as_str())
                    .and_then(|r| r.parse::<u64>().ok())
            };
            let (Some(name), Some(prev), Some(rev)) = (
                value.get("channel").and_then(|c| c.as_str()),
                revision("prev"),
                revision("rev"),
            ) else {
                tracing::warn!("channel message without channel or revision; ignored");
                return;
            };
            if !self.hub.channel_loaded(name) {
                self.hub.announce_channel(name, rev);
                return;
            }
            let (joined, left) = (list("joined"), list("left"));
            self.load_users(&joined).await;
            let applied = self
                .hub
                .apply_channel_change(name, prev, rev, &joined, &left);
            if !applied && let Err(e) = self.read_channel(name).await {
                tracing::warn!(channel = %name, error = %e, "cannot read a channel again");
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A change of a channel's members through the admin API.
#[derive(Debug, Clone)]
pub(crate) enum ChannelChange {
    /// Replace the members.
    Set(BTreeSet<String>),
    /// Add a member (refused when the channel is full).
    Add(String),
    /// Remove a member.
    Remove(String),
}
