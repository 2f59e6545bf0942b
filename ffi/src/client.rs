//! Clients: the library's thread, shared connections and event delivery.

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use presently_sdk::{Activity, Availability, ConnectionState, Status};

use crate::config::{
    Credential, PresentlyConfig, PresentlyDndSchedule, Settings, TokenSource, schedule_arg,
};
use crate::error::{PresentlyResult, fail, from_sdk, guarded, non_null, opt_str_arg, str_arg};
use crate::event::{
    PresentlyAvailability, PresentlyConnectionState, PresentlyEvent, PresentlyTransport,
    connection_state,
};

/// Locks a mutex, going on after a panic elsewhere (the data stays consistent: every critical section is short
/// and has no partial states).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

// ----- the library's thread -----

struct Runtime {
    runtime: Option<tokio::runtime::Runtime>,
    clients: usize,
}

static RUNTIME: Mutex<Runtime> = Mutex::new(Runtime {
    runtime: None,
    clients: 0,
});

/// Counts a client in, starting the library's thread if it is the first; returns a handle to it.
fn acquire_runtime() -> Result<tokio::runtime::Handle, PresentlyResult> {
    let mut shared = lock(&RUNTIME);
    if shared.runtime.is_none() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("presently")
            .enable_all()
            .build()
            .map_err(|e| fail(PresentlyResult::RuntimeUnavailable, e))?;
        shared.runtime = Some(runtime);
    }
    shared.clients += 1;
    shared
        .runtime
        .as_ref()
        .map(|r| r.handle().clone())
        .ok_or(PresentlyResult::RuntimeUnavailable)
}

/// Counts a client out; the last one stops the library's thread.
fn release_runtime() {
    let last = {
        let mut shared = lock(&RUNTIME);
        shared.clients = shared.clients.saturating_sub(1);
        if shared.clients == 0 {
            shared.runtime.take()
        } else {
            None
        }
    };
    if let Some(runtime) = last {
        runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

// ----- event delivery -----

/// How many events wait for `presently_client_next_event` at most; older ones are dropped beyond it.
const EVENT_QUEUE_LIMIT: usize = 10_000;

/// Called on the library's thread with an event that is valid only during the call (copy what you keep; never
/// free it). Must return quickly and must not call `presently_client_free`.
pub type PresentlyEventCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const PresentlyEvent)>;

/// Called on the library's thread when an event is queued for `presently_client_next_event`, so that the host
/// can schedule a drain on its own thread. Must return quickly and must not call `presently_client_free`.
pub type PresentlyWakeCallback = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// A host callback with its `user_data`, which the host promises may be used from the library's thread.
#[derive(Clone, Copy)]
struct Callback<F> {
    function: F,
    user_data: *mut c_void,
}

// SAFETY: the header documents that callbacks and their user data are used on the library's thread.
unsafe impl<F: Send> Send for Callback<F> {}

#[derive(Default)]
struct DeliveryState {
    queue: VecDeque<PresentlyEvent>,
    push: Option<Callback<unsafe extern "C" fn(*mut c_void, *const PresentlyEvent)>>,
    wake: Option<Callback<unsafe extern "C" fn(*mut c_void)>>,
    /// Set when the client is freed: nothing is delivered after.
    closed: bool,
}

/// Where one client's events go.
#[derive(Default)]
struct Delivery {
    state: Mutex<DeliveryState>,
    /// Held while host callbacks run, so that `presently_client_free` can wait for a call under way.
    gate: Mutex<()>,
}

impl Delivery {
    /// Hands events to the host: to its event callback if it set one (queued events first, in order),
    /// otherwise to the queue, waking it. Callbacks run without the state's lock held, so that they may call back
    /// into the library.
    fn deliver(&self, events: impl IntoIterator<Item = PresentlyEvent>) {
        let _gate = lock(&self.gate);
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        if let Some(push) = state.push {
            let pending = std::mem::take(&mut state.queue);
            drop(state);
            for event in pending.into_iter().chain(events) {
                // SAFETY: the host registered this function for these user data; the event outlives the call.
                unsafe { (push.function)(push.user_data, &event) };
            }
            return;
        }
        let mut queued = false;
        for event in events {
            if state.queue.len() >= EVENT_QUEUE_LIMIT {
                state.queue.pop_front();
            }
            state.queue.push_back(event);
            queued = true;
        }
        let wake = state.wake;
        drop(state);
        if let (true, Some(wake)) = (queued, wake) {
            // SAFETY: the host registered this function for these user data.
            unsafe { (wake.function)(wake.user_data) };
        }
    }

    /// Stops delivery for good, waiting for a callback under way to return.
    fn close(&self) {
        let _gate = lock(&self.gate);
        lock(&self.state).closed = true;
    }
}

// ----- shared connections -----

/// One connection shared by every client created with equal settings (plugin instances of one user in one
/// DAW), with how many of those clients watch each user.
struct SharedConnection {
    client: presently_sdk::Client,
    watchers: Mutex<HashMap<String, usize>>,
}

/// Live shared connections by settings.
static SHARED: Mutex<Vec<(Settings, Weak<SharedConnection>)>> = Mutex::new(Vec::new());

/// The longest token a token callback may return, in bytes.
const TOKEN_LIMIT: usize = 64 * 1024;

/// Asks the host's token callback for a token.
fn ask_token(source: TokenSource) -> Result<String, String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: the host registered this callback for these user data; `buf` holds `buf.len()` writable bytes.
        let len =
            unsafe { (source.function)(source.user_data, buf.as_mut_ptr().cast(), buf.len()) };
        if len == 0 {
            return Err("the token callback returned no token".into());
        }
        if len > TOKEN_LIMIT {
            return Err(format!(
                "the token callback returned {len} bytes; at most {TOKEN_LIMIT}"
            ));
        }
        if len <= buf.len() {
            buf.truncate(len);
            return String::from_utf8(buf)
                .map_err(|_| "the token callback wrote a token that is not UTF-8".into());
        }
        buf = vec![0u8; len];
    }
}

/// Builds the Rust client for `settings`; must run inside the library's runtime.
fn build_client(settings: &Settings) -> Result<presently_sdk::Client, PresentlyResult> {
    let mut builder = presently_sdk::Client::builder(settings.url.clone());
    match &settings.credential {
        Credential::Missing => {
            return Err(fail(
                PresentlyResult::InvalidArgument,
                "set a token (presently_config_set_token) or a token callback first",
            ));
        }
        Credential::Token(token) => builder = builder.token(token.clone()),
        Credential::Callback(source) => {
            let source = *source;
            builder = builder.token_provider(move || async move {
                tokio::task::spawn_blocking(move || ask_token(source))
                    .await
                    .map_err(|e| format!("the token callback did not return: {e}"))?
            });
        }
    }
    if let Some(info) = &settings.client_info {
        builder = builder.client_info(info.clone());
    }
    if let Some(timeout) = settings.idle_timeout {
        builder = builder.idle_timeout(timeout);
    }
    if let Some(lead) = settings.idle_warning {
        builder = builder.idle_warning(lead);
    }
    if let Some(after) = settings.background_away_after {
        builder = builder.background_away_after(after);
    }
    if let Some(policy) = settings.transport {
        builder = builder.transport(policy);
    }
    if let Some(attempts) = settings.fallback_after {
        builder = builder.fallback_after(attempts);
    }
    if let Some(policy) = &settings.reconnect {
        builder = builder.reconnect_policy(policy.clone());
    }
    if let Some(schedule) = &settings.dnd {
        builder = builder.dnd_schedule(schedule.clone());
    }
    builder.build().map_err(|e| {
        let code = match e {
            presently_sdk::Error::InvalidUrl { .. } => PresentlyResult::InvalidUrl,
            _ => PresentlyResult::InvalidArgument,
        };
        fail(code, e)
    })
}

// ----- clients -----

/// A presence client (opaque): create with `presently_client_new`, free with `presently_client_free`.
pub struct PresentlyClient {
    shared: Arc<SharedConnection>,
    /// The users this client watches (its share of `SharedConnection::watchers`).
    watching: Mutex<Vec<String>>,
    client: presently_sdk::Client,
    runtime: tokio::runtime::Handle,
    delivery: Arc<Delivery>,
    forwarder: tokio::task::JoinHandle<()>,
}

/// Creates a client from `config` (copied: the config may be freed or changed afterwards) and writes it to
/// `*out`; free it with `presently_client_free`. The client does not connect until `presently_client_connect`.
/// Clients created from equal configurations (several plugin instances of one user in one process) share one
/// connection, and each gets its own events; one that joins a connection already in use first gets its state
/// and your own status as events. Fails with INVALID_URL for a URL that is not ws:// or wss://, and with
/// INVALID_ARGUMENT when the config has neither a token nor a token callback.
/// Any thread except the library's own (a callback); never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_new(
    config: *const PresentlyConfig,
    out: *mut *mut PresentlyClient,
) -> PresentlyResult {
    guarded(|| {
        let out = non_null(out, "out")?;
        // SAFETY: a non-NULL `config` came from `presently_config_new` and is not freed yet, as documented.
        let settings = match unsafe { config.as_ref() } {
            Some(config) => config.settings.clone(),
            None => return Err(fail(PresentlyResult::NullArgument, "`config` is NULL")),
        };
        let runtime = acquire_runtime()?;
        let mut registry = lock(&SHARED);
        registry.retain(|(_, weak)| weak.strong_count() > 0);
        let existing = registry
            .iter()
            .find(|(s, _)| *s == settings)
            .and_then(|(_, weak)| weak.upgrade());
        let (shared, joined) = match existing {
            Some(shared) => (shared, true),
            None => {
                let built = {
                    let _context = runtime.enter();
                    build_client(&settings)
                };
                let client = match built {
                    Ok(client) => client,
                    Err(e) => {
                        drop(registry);
                        release_runtime();
                        return Err(e);
                    }
                };
                let shared = Arc::new(SharedConnection {
                    client,
                    watchers: Mutex::new(HashMap::new()),
                });
                registry.push((settings, Arc::downgrade(&shared)));
                (shared, false)
            }
        };
        drop(registry);
        let client = shared.client.clone();
        let delivery = Arc::new(Delivery::default());
        let mut stream = client.events();
        if joined {
            let state = client.state();
            if state != ConnectionState::Idle {
                delivery.deliver([
                    PresentlyEvent::state(&state),
                    PresentlyEvent::own_status(client.effective_status()),
                ]);
            }
        }
        let forwarder = {
            let delivery = delivery.clone();
            runtime.spawn(async move {
                use futures_util::StreamExt;
                while let Some(event) = stream.next().await {
                    delivery.deliver(PresentlyEvent::from_sdk(event));
                }
            })
        };
        let handle = Box::new(PresentlyClient {
            shared,
            watching: Mutex::new(Vec::new()),
            client,
            runtime,
            delivery,
            forwarder,
        });
        // SAFETY: `out` is non-NULL and writable, as checked and documented.
        unsafe { *out = Box::into_raw(handle) };
        Ok(())
    })
}

/// Closes and frees a client (NULL is ignored). No callback of this client runs after it returns (it waits for
/// one under way). The last client of a shared connection says goodbye to the server; the last client of all
/// stops the library's thread. Any thread except the library's own (a callback); may block up to about 2 s while
/// the connection says goodbye.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_free(client: *mut PresentlyClient) {
    let _ = guarded(|| {
        if client.is_null() {
            return Ok(());
        }
        // SAFETY: `client` came from `presently_client_new` and is freed once, as documented.
        let client = unsafe { Box::from_raw(client) };
        let PresentlyClient {
            shared,
            watching,
            client,
            runtime,
            delivery,
            forwarder,
        } = *client;
        delivery.close();
        forwarder.abort();
        let watching = watching.into_inner().unwrap_or_else(|p| p.into_inner());
        unwatch(&shared, &watching);
        // The last client of a shared connection says goodbye; the others leave it to the rest.
        if Arc::strong_count(&shared) == 1 {
            let closing = client.clone();
            let _ = runtime.block_on(async move {
                tokio::time::timeout(Duration::from_secs(2), closing.close()).await
            });
        }
        drop(client);
        drop(shared);
        release_runtime();
        Ok(())
    });
}

/// Runs `f` on a client argument inside a panic boundary.
unsafe fn with_client(
    client: *const PresentlyClient,
    f: impl FnOnce(&PresentlyClient) -> Result<(), PresentlyResult>,
) -> PresentlyResult {
    guarded(|| {
        // SAFETY: a non-NULL `client` came from `presently_client_new` and is not freed yet, as documented.
        match unsafe { client.as_ref() } {
            Some(client) => f(client),
            None => Err(fail(PresentlyResult::NullArgument, "`client` is NULL")),
        }
    })
}

/// Runs a call of the Rust client that takes no argument and cannot fail (a hint such as `app_backgrounded`).
unsafe fn hint(
    client: *const PresentlyClient,
    call: fn(&presently_sdk::Client),
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            call(&c.client);
            Ok(())
        })
    }
}

/// Turns a result of the Rust client into ours.
fn sdk(result: Result<(), presently_sdk::Error>) -> Result<(), PresentlyResult> {
    match from_sdk(result) {
        PresentlyResult::Ok => Ok(()),
        code => Err(code),
    }
}

/// Starts connecting (and reconnecting by itself from then on). Returns at once; the outcome arrives as
/// STATE_CHANGED events. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_connect(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            let sdk = c.client.clone();
            c.runtime.spawn(async move {
                let _ = sdk.connect().await;
            });
            Ok(())
        })
    }
}

/// The connection's current state (IDLE for NULL). Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_state(
    client: *const PresentlyClient,
) -> PresentlyConnectionState {
    let mut state = PresentlyConnectionState::Idle;
    // SAFETY: see `with_client`.
    let _ = unsafe {
        with_client(client, |c| {
            state = connection_state(&c.client.state());
            Ok(())
        })
    };
    state
}

/// The transport a client's connection uses or tries now, while connecting or connected; NONE otherwise (or
/// for a NULL client). Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_transport(
    client: *const PresentlyClient,
) -> PresentlyTransport {
    let mut transport = PresentlyTransport::None;
    // SAFETY: see `with_client`.
    let _ = unsafe {
        with_client(client, |c| {
            transport = match c.client.state() {
                ConnectionState::Connecting { transport, .. }
                | ConnectionState::Connected { transport, .. } => match transport {
                    presently_sdk::Transport::WebSocket => PresentlyTransport::Websocket,
                    presently_sdk::Transport::Sse => PresentlyTransport::Sse,
                },
                _ => PresentlyTransport::None,
            };
            Ok(())
        })
    };
    transport
}

/// Sets your status: `availability` (not OFFLINE), an optional `message` (at most 200 characters; NULL for none)
/// and an optional activity (`activity_kind` like "in_studio", `activity_detail` like "Ableton Live 12"; NULL for
/// none). INVISIBLE appears offline to others while you still see them. Kept across reconnects; idle detection
/// and DND may override it for a while (OWN_STATUS_CHANGED events say what others see). Any thread; never
/// blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_set_status(
    client: *const PresentlyClient,
    availability: PresentlyAvailability,
    message: *const c_char,
    activity_kind: *const c_char,
    activity_detail: *const c_char,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `opt_str_arg`.
    unsafe {
        with_client(client, |c| {
            let message = opt_str_arg(message, "message")?;
            let kind = opt_str_arg(activity_kind, "activity_kind")?;
            let detail = opt_str_arg(activity_detail, "activity_detail")?;
            let availability = match availability {
                PresentlyAvailability::Online => Availability::Online,
                PresentlyAvailability::Away => Availability::Away,
                PresentlyAvailability::Busy => Availability::Busy,
                PresentlyAvailability::Invisible => Availability::Invisible,
                PresentlyAvailability::Offline => {
                    return Err(fail(
                        PresentlyResult::InvalidArgument,
                        "OFFLINE cannot be set: use INVISIBLE to appear offline, or close the client",
                    ));
                }
            };
            if kind.is_none() && detail.is_some() {
                return Err(fail(
                    PresentlyResult::InvalidArgument,
                    "`activity_detail` needs an `activity_kind`",
                ));
            }
            let mut status = Status::new(availability);
            status.message = message.map(str::to_owned);
            status.activity = kind.map(|k| Activity {
                kind: k.to_owned(),
                detail: detail.map(str::to_owned),
            });
            sdk(c.client.set_status(status))
        })
    }
}

/// Reads `count` user ids from `users` (each a NUL-terminated UTF-8 string).
unsafe fn user_list(
    users: *const *const c_char,
    count: usize,
) -> Result<Vec<String>, PresentlyResult> {
    if users.is_null() && count > 0 {
        return Err(fail(PresentlyResult::NullArgument, "`users` is NULL"));
    }
    (0..count)
        // SAFETY: the caller gives `count` valid pointers at `users`.
        .map(|i| unsafe { str_arg(*users.add(i), "users[i]") }.map(str::to_owned))
        .collect()
}

/// Watches `count` users (`users` is an array of user ids); kept across reconnects. Their presence arrives as
/// PRESENCE_CHANGED events: first what is known now, then every change. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_subscribe(
    client: *const PresentlyClient,
    users: *const *const c_char,
    count: usize,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `user_list`.
    unsafe {
        with_client(client, |c| {
            let users = user_list(users, count)?;
            sdk(c.client.subscribe(users.iter().cloned()))?;
            let mut mine = lock(&c.watching);
            let mut all = lock(&c.shared.watchers);
            // Users other clients of the connection already watch: their snapshot has come and gone, so this
            // client gets what is known now.
            let mut known = Vec::new();
            for user in users {
                if !mine.contains(&user) {
                    let count = all.entry(user.clone()).or_default();
                    if *count > 0 {
                        known.push(user.clone());
                    }
                    *count += 1;
                    mine.push(user);
                }
            }
            if !known.is_empty() {
                let (sdk, delivery) = (c.client.clone(), c.delivery.clone());
                // Read on the library's thread, in order with the events it forwards.
                c.runtime.spawn(async move {
                    delivery.deliver(known.iter().filter_map(|u| sdk.presence(u)).map(|p| {
                        PresentlyEvent::presence(
                            crate::event::PresentlyEventKind::PresenceChanged,
                            p,
                        )
                    }));
                });
            }
            Ok(())
        })
    }
}

/// Stops watching `count` users. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_unsubscribe(
    client: *const PresentlyClient,
    users: *const *const c_char,
    count: usize,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `user_list`.
    unsafe {
        with_client(client, |c| {
            let users = user_list(users, count)?;
            let mut mine = lock(&c.watching);
            let mine_now: Vec<String> = users.into_iter().filter(|u| mine.contains(u)).collect();
            mine.retain(|u| !mine_now.contains(u));
            drop(mine);
            unwatch(&c.shared, &mine_now);
            Ok(())
        })
    }
}

/// Takes a client's share of watching `users`: the connection stops watching those no other client watches.
fn unwatch(shared: &SharedConnection, users: &[String]) {
    let mut all = lock(&shared.watchers);
    let mut unwatched = Vec::new();
    for user in users {
        if let Some(count) = all.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                all.remove(user);
                unwatched.push(user.clone());
            }
        }
    }
    drop(all);
    if !unwatched.is_empty() {
        shared.client.unsubscribe(unwatched);
    }
}

/// Query ids, unique in the process.
static NEXT_QUERY_ID: AtomicU64 = AtomicU64::new(1);

/// Asks the server once for the presence of `count` users without watching them, and writes the query's id to
/// `*query_id`. The answer arrives as events of this client only: one QUERY_RESULT per distinct user, then
/// QUERY_COMPLETED (with an error code if the query failed, e.g. the connection dropped). Returns NOT_CONNECTED
/// at once when there is no connection. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_query(
    client: *const PresentlyClient,
    users: *const *const c_char,
    count: usize,
    query_id: *mut u64,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `user_list`.
    unsafe {
        with_client(client, |c| {
            let query_id = non_null(query_id, "query_id")?;
            let users = user_list(users, count)?;
            // Sent now, or refused at once (not connected, invalid ids); the answer is awaited on the library's
            // thread, and one that arrives before that is kept for it.
            let answer = match c.client.send_query(&users) {
                Ok(answer) => answer,
                Err(e) => return sdk(Err(e)),
            };
            let id = NEXT_QUERY_ID.fetch_add(1, Ordering::Relaxed);
            *query_id = id;
            let delivery = c.delivery.clone();
            c.runtime.spawn(async move {
                match answer.await {
                    Ok(records) => delivery.deliver(
                        records
                            .into_iter()
                            .map(|p| PresentlyEvent::query_result(id, p))
                            .chain([PresentlyEvent::query_completed(id, None)]),
                    ),
                    Err(e) => {
                        let code = match &e {
                            presently_sdk::Error::Query(presently_sdk::QueryError::Server {
                                code,
                                ..
                            }) => code.as_str().to_owned(),
                            presently_sdk::Error::Query(
                                presently_sdk::QueryError::Disconnected,
                            ) => "disconnected".to_owned(),
                            _ => "closed".to_owned(),
                        };
                        delivery.deliver([PresentlyEvent::query_completed(
                            id,
                            Some((code, e.to_string())),
                        )]);
                    }
                }
            });
            Ok(())
        })
    }
}

/// The user did something (mouse, key, MIDI, transport). Call it as often as you like from any thread, including
/// the audio thread: it is wait-free, takes no lock, allocates nothing and makes no syscall on the common path
/// (see BENCHMARKS.md). NULL is ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_record_activity(client: *const PresentlyClient) {
    // No panic boundary needed: the call cannot panic (an atomic load and store), and a boundary would cost.
    // SAFETY: a non-NULL `client` came from `presently_client_new` and is not freed yet.
    if let Some(client) = unsafe { client.as_ref() } {
        client.client.record_activity();
    }
}

/// The app (or the plugin's editor and host) went to the background: away after the configured delay. Any
/// thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_app_backgrounded(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe { hint(client, presently_sdk::Client::app_backgrounded) }
}

/// The app came to the foreground: back from background away, and the connection is checked (an immediate
/// attempt if it was waiting to reconnect). Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_app_foregrounded(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe { hint(client, presently_sdk::Client::app_foregrounded) }
}

/// The network changed (e.g. Wi-Fi came back): retry at once if waiting to reconnect, or probe the link if
/// connected. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_network_changed(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe { hint(client, presently_sdk::Client::network_changed) }
}

/// Replaces the weekly do-not-disturb schedule with `schedule` (copied; NULL removes it). Clients sharing the
/// connection share the schedule. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_set_dnd_schedule(
    client: *const PresentlyClient,
    schedule: *const PresentlyDndSchedule,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `schedule_arg`.
    unsafe {
        with_client(client, |c| {
            c.client.set_dnd_schedule(schedule_arg(schedule)?);
            Ok(())
        })
    }
}

/// Do not disturb now, for `duration_ms` milliseconds (at least 1), with an optional `message` (NULL for none).
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_snooze_dnd(
    client: *const PresentlyClient,
    duration_ms: u64,
    message: *const c_char,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `opt_str_arg`.
    unsafe {
        with_client(client, |c| {
            let message = opt_str_arg(message, "message")?;
            if duration_ms == 0 {
                return Err(fail(PresentlyResult::InvalidArgument, "`duration_ms` is 0"));
            }
            sdk(c.client.snooze_dnd_for(
                Duration::from_millis(duration_ms),
                message.map(str::to_owned),
            ))
        })
    }
}

/// Ends a snooze early. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_end_snooze(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe { hint(client, presently_sdk::Client::end_snooze) }
}

/// Says goodbye and closes the connection, unless other clients share it (then this does nothing: the last of
/// them to close or be freed ends it); the client stays usable (connect again) until freed. Returns at once.
/// Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_close(client: *const PresentlyClient) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            if Arc::strong_count(&c.shared) == 1 {
                let sdk = c.client.clone();
                c.runtime.spawn(async move { sdk.close().await });
            }
            Ok(())
        })
    }
}

/// Takes the oldest waiting event: writes it to `*out` and returns OK (free it with `presently_event_free`), or
/// returns NO_EVENT. Meant for the host's own thread (e.g. a JUCE Timer on the message thread); never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_next_event(
    client: *const PresentlyClient,
    out: *mut *mut PresentlyEvent,
) -> PresentlyResult {
    // SAFETY: see `with_client`; `out` is checked.
    let mut none = false;
    let result = unsafe {
        with_client(client, |c| {
            let out = non_null(out, "out")?;
            match lock(&c.delivery.state).queue.pop_front() {
                Some(event) => *out = Box::into_raw(Box::new(event)),
                None => none = true,
            }
            Ok(())
        })
    };
    if none {
        PresentlyResult::NoEvent
    } else {
        result
    }
}

/// Delivers events by calling `callback(user_data, event)` on the library's thread instead of queueing them for
/// `presently_client_next_event` (NULL goes back to queueing); events already queued go to the callback first.
/// The event is valid only during the call. The callback must not block and must not free the client; a call
/// under way when the callback is replaced may still finish. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_set_event_callback(
    client: *const PresentlyClient,
    callback: PresentlyEventCallback,
    user_data: *mut c_void,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            let mut state = lock(&c.delivery.state);
            state.push = callback.map(|function| Callback {
                function,
                user_data,
            });
            if state.push.is_some() && !state.queue.is_empty() {
                drop(state);
                let delivery = c.delivery.clone();
                c.runtime.spawn(async move { delivery.deliver([]) });
            }
            Ok(())
        })
    }
}

/// Calls `callback(user_data)` on the library's thread whenever an event is queued for
/// `presently_client_next_event` (NULL removes it), e.g. to post a drain to the host's message thread. The
/// callback must not block and must not free the client. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_set_wake_callback(
    client: *const PresentlyClient,
    callback: PresentlyWakeCallback,
    user_data: *mut c_void,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            lock(&c.delivery.state).wake = callback.map(|function| Callback {
                function,
                user_data,
            });
            Ok(())
        })
    }
}
