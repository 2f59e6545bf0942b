//! libpresently: the C ABI of Presently.
//!
//! Conventions (also in the generated header):
//! - Handles are opaque pointers created by `presently_*_new` or returned by `presently_client_next_event`, and
//!   freed by the matching `presently_*_free`. Strings passed in are borrowed for the duration of the call and
//!   must be UTF-8 and NUL-terminated. Strings returned by event accessors belong to the event and stay valid
//!   until `presently_event_free`.
//! - Every function returns a `PresentlyResult` (or a value with a documented "nothing" case), never unwinds into
//!   C (each entry point runs inside a panic boundary), and answers NULL or non-UTF-8 arguments with a result
//!   code.
//! - Nothing blocks on the network: connecting, sending and reconnecting happen on the library's own thread, which
//!   starts with the first client and stops when the last client is freed.
#![allow(clippy::missing_safety_doc)] // The safety contract is the header's documentation of each function.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use presently_sdk::{Activity, Availability, ConnectionState, Event, Status};

/// The outcome of a call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyResult {
    /// It worked.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 2,
    /// An argument breaks the protocol's rules (too long a message, an empty user id, ...).
    InvalidArgument = 3,
    /// The URL is not a ws:// or wss:// URL.
    InvalidUrl = 4,
    /// `presently_client_next_event`: no event is waiting.
    NoEvent = 5,
    /// The library's thread could not be started.
    RuntimeUnavailable = 6,
    /// A bug in the library was caught at the boundary; the call did nothing.
    Panic = 7,
}

/// What watchers should show.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyAvailability {
    /// Connected and available.
    Online = 0,
    /// Connected but away.
    Away = 1,
    /// Connected, do not disturb.
    Busy = 2,
    /// Not connected (not something to set).
    Offline = 3,
    /// Appear offline while still seeing others (a choice; watchers see `Offline`).
    Invisible = 4,
}

/// The connection's state.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyConnectionState {
    /// Not started.
    Idle = 0,
    /// An attempt is under way.
    Connecting = 1,
    /// A session is up.
    Connected = 2,
    /// Waiting before the next attempt.
    Reconnecting = 3,
    /// Closed by the application.
    Closed = 4,
    /// Stopped by a fatal error (e.g. a bad token).
    Failed = 5,
}

/// What an event is about.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresentlyEventKind {
    /// A watched user's presence changed: `user_id`, `availability`, `message`, `activity_*`.
    PresenceChanged = 0,
    /// The connection state changed: `connection_state`, `message` (the reason, if any).
    StateChanged = 1,
    /// Your own effective status changed: `availability`, `message`, `activity_*`.
    OwnStatusChanged = 2,
    /// Idle: away soon unless there is activity ("still there?").
    IdleWarning = 3,
    /// Activity came after an idle warning.
    IdleWarningCancelled = 4,
    /// The server reported an error: `error_code`, `message`.
    ServerError = 5,
    /// Another kind of event (newer versions may add kinds).
    Other = 6,
}

const VERSION: &CStr = c"0.1.0";

/// The library's version, e.g. "0.1.0" (the same as `PRESENTLY_VERSION_*`). Any thread; never blocks. The string
/// is static: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn presently_version() -> *const c_char {
    VERSION.as_ptr()
}

/// Writes a description of `result` into `buf` (at most `len` bytes including the terminating NUL; truncated if
/// needed) and returns the full length of the description without the NUL. `buf` may be NULL when `len` is 0 (to
/// ask for the length). Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_result_message(
    result: PresentlyResult,
    buf: *mut c_char,
    len: usize,
) -> usize {
    let text = match result {
        PresentlyResult::Ok => "ok",
        PresentlyResult::NullArgument => "a required pointer argument was NULL",
        PresentlyResult::InvalidUtf8 => "a string argument was not valid UTF-8",
        PresentlyResult::InvalidArgument => "an argument breaks the protocol's rules",
        PresentlyResult::InvalidUrl => "the URL is not a ws:// or wss:// URL",
        PresentlyResult::NoEvent => "no event is waiting",
        PresentlyResult::RuntimeUnavailable => "the library's thread could not be started",
        PresentlyResult::Panic => "internal error caught at the library boundary",
    };
    if !buf.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: the caller gives `len` writable bytes at `buf`; we write at most `len - 1` plus a NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    text.len()
}

/// Runs `f` inside a panic boundary.
fn boundary(f: impl FnOnce() -> PresentlyResult) -> PresentlyResult {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(PresentlyResult::Panic)
}

/// A borrowed, NUL-terminated UTF-8 argument.
unsafe fn str_arg<'a>(p: *const c_char) -> Result<&'a str, PresentlyResult> {
    if p.is_null() {
        return Err(PresentlyResult::NullArgument);
    }
    // SAFETY: the caller passes a NUL-terminated string valid for the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| PresentlyResult::InvalidUtf8)
}

/// Like [`str_arg`], but NULL means `None`.
unsafe fn opt_str_arg<'a>(p: *const c_char) -> Result<Option<&'a str>, PresentlyResult> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: as for `str_arg`.
        unsafe { str_arg(p) }.map(Some)
    }
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

fn lock_runtime() -> std::sync::MutexGuard<'static, Runtime> {
    RUNTIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a client in, starting the library's thread if it is the first; returns a handle to it.
fn acquire_runtime() -> Result<tokio::runtime::Handle, PresentlyResult> {
    let mut shared = lock_runtime();
    if shared.runtime.is_none() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("presently")
            .enable_all()
            .build()
            .map_err(|_| PresentlyResult::RuntimeUnavailable)?;
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
        let mut shared = lock_runtime();
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

// ----- clients -----

/// How many events wait for `presently_client_next_event` at most; older ones are dropped beyond it.
const EVENT_QUEUE_LIMIT: usize = 10_000;

/// Called on the library's thread with an event that is valid only during the call (copy what you keep).
/// Must return quickly and must not call `presently_client_free`.
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
struct Delivery {
    queue: VecDeque<Event>,
    push: Option<Callback<unsafe extern "C" fn(*mut c_void, *const PresentlyEvent)>>,
    wake: Option<Callback<unsafe extern "C" fn(*mut c_void)>>,
}

/// One connection shared by every client created with the same URL and token (plugin instances of one user in
/// one DAW), with how many of those clients watch each user.
struct SharedConnection {
    client: presently_sdk::Client,
    watchers: Mutex<HashMap<String, usize>>,
}

/// A shared connection's key: (URL, token).
type ConnectionKey = (String, String);

/// Live shared connections by key.
static SHARED: Mutex<Vec<(ConnectionKey, Weak<SharedConnection>)>> = Mutex::new(Vec::new());

/// A presence client (opaque).
pub struct PresentlyClient {
    shared: Arc<SharedConnection>,
    /// The users this client watches (its share of `SharedConnection::watchers`).
    watching: Mutex<Vec<String>>,
    client: presently_sdk::Client,
    runtime: tokio::runtime::Handle,
    delivery: Arc<Mutex<Delivery>>,
    forwarder: tokio::task::JoinHandle<()>,
}

fn lock_delivery(delivery: &Mutex<Delivery>) -> std::sync::MutexGuard<'_, Delivery> {
    delivery.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands an event to the host: to its event callback if it set one, otherwise to the queue (waking it).
/// Callbacks run without the lock held, so that they may call back into the library.
fn deliver(delivery: &Mutex<Delivery>, event: Event) {
    let mut d = lock_delivery(delivery);
    if let Some(push) = d.push {
        drop(d);
        let event = event_from(event);
        // SAFETY: the host registered this function for these user data; the event outlives the call.
        unsafe { (push.function)(push.user_data, &event) };
        return;
    }
    if d.queue.len() >= EVENT_QUEUE_LIMIT {
        d.queue.pop_front();
    }
    d.queue.push_back(event);
    let wake = d.wake;
    drop(d);
    if let Some(wake) = wake {
        // SAFETY: the host registered this function for these user data.
        unsafe { (wake.function)(wake.user_data) };
    }
}

/// Creates a client for `url` (ws:// or wss://) with `token`, and names the application (`app_name`,
/// `app_version`, `platform`; each at most 64 bytes). Writes the new client to `*out` on success; free it with
/// `presently_client_free`. The client does not connect until `presently_client_connect`. Clients created with
/// the same URL and token (several plugin instances of one user in one process) share one connection; each gets
/// its own events.
/// Any thread except the library's own (the event callback); never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_new(
    url: *const c_char,
    token: *const c_char,
    app_name: *const c_char,
    app_version: *const c_char,
    platform: *const c_char,
    out: *mut *mut PresentlyClient,
) -> PresentlyResult {
    boundary(|| {
        if out.is_null() {
            return PresentlyResult::NullArgument;
        }
        // SAFETY: arguments are NUL-terminated strings valid for the call, as the header documents.
        let args = unsafe {
            (|| {
                Ok((
                    str_arg(url)?,
                    str_arg(token)?,
                    str_arg(app_name)?,
                    str_arg(app_version)?,
                    str_arg(platform)?,
                ))
            })()
        };
        let (url, token, name, version, platform) = match args {
            Ok(args) => args,
            Err(e) => return e,
        };
        let runtime = match acquire_runtime() {
            Ok(runtime) => runtime,
            Err(e) => return e,
        };
        let key = (url.to_owned(), token.to_owned());
        let mut registry = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        registry.retain(|(_, weak)| weak.strong_count() > 0);
        let existing = registry
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, weak)| weak.upgrade());
        let shared = match existing {
            Some(shared) => shared,
            None => {
                let built = {
                    let _context = runtime.enter();
                    presently_sdk::Client::builder(url)
                        .token(token)
                        .client_info(presently_sdk::ClientInfo::new(name, version, platform))
                        .build()
                };
                let client = match built {
                    Ok(client) => client,
                    Err(e) => {
                        drop(registry);
                        release_runtime();
                        return match e {
                            presently_sdk::Error::InvalidUrl { .. } => PresentlyResult::InvalidUrl,
                            _ => PresentlyResult::InvalidArgument,
                        };
                    }
                };
                let shared = Arc::new(SharedConnection {
                    client,
                    watchers: Mutex::new(HashMap::new()),
                });
                registry.push((key, Arc::downgrade(&shared)));
                shared
            }
        };
        drop(registry);
        let client = shared.client.clone();
        let delivery = Arc::new(Mutex::new(Delivery::default()));
        let forwarder = {
            let (mut stream, delivery) = (client.events(), delivery.clone());
            runtime.spawn(async move {
                use futures_util::StreamExt;
                while let Some(event) = stream.next().await {
                    deliver(&delivery, event);
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
        PresentlyResult::Ok
    })
}

/// Closes and frees a client (NULL is ignored). The last client freed stops the library's thread. Any thread
/// except the library's own (the event callback); may block up to about 2 s while the connection says goodbye.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_free(client: *mut PresentlyClient) {
    let _ = boundary(|| {
        if client.is_null() {
            return PresentlyResult::Ok;
        }
        // SAFETY: `client` came from `presently_client_new` and is freed once, as documented.
        let client = unsafe { Box::from_raw(client) };
        let PresentlyClient {
            shared,
            watching,
            client,
            runtime,
            forwarder,
            ..
        } = *client;
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
        PresentlyResult::Ok
    });
}

/// Runs `f` on a client argument.
unsafe fn with_client(
    client: *const PresentlyClient,
    f: impl FnOnce(&PresentlyClient) -> PresentlyResult,
) -> PresentlyResult {
    boundary(|| {
        // SAFETY: a non-NULL `client` came from `presently_client_new` and is not freed yet, as documented.
        match unsafe { client.as_ref() } {
            Some(client) => f(client),
            None => PresentlyResult::NullArgument,
        }
    })
}

fn from_sdk(result: Result<(), presently_sdk::Error>) -> PresentlyResult {
    match result {
        Ok(()) => PresentlyResult::Ok,
        Err(presently_sdk::Error::InvalidUrl { .. }) => PresentlyResult::InvalidUrl,
        Err(_) => PresentlyResult::InvalidArgument,
    }
}

/// Starts connecting (and reconnecting by itself from then on). Returns at once; the outcome arrives as
/// `PRESENTLY_EVENT_KIND_STATE_CHANGED` events. Any thread; never blocks.
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
            PresentlyResult::Ok
        })
    }
}

/// Sets your status: `availability` (not OFFLINE), an optional `message` (at most 200 characters; NULL for none)
/// and an optional activity (`activity_kind` like "in_studio", `activity_detail` like "Ableton Live 12"; NULL for
/// none). INVISIBLE appears offline to others. Any thread; never blocks.
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
            let parts = (|| {
                Ok((
                    opt_str_arg(message)?,
                    opt_str_arg(activity_kind)?,
                    opt_str_arg(activity_detail)?,
                ))
            })();
            let (message, kind, detail) = match parts {
                Ok(parts) => parts,
                Err(e) => return e,
            };
            let availability = match availability {
                PresentlyAvailability::Online => Availability::Online,
                PresentlyAvailability::Away => Availability::Away,
                PresentlyAvailability::Busy => Availability::Busy,
                PresentlyAvailability::Offline => return PresentlyResult::InvalidArgument,
                PresentlyAvailability::Invisible => Availability::Invisible,
            };
            let mut status = Status::new(availability);
            status.message = message.map(str::to_owned);
            status.activity = kind.map(|k| Activity {
                kind: k.to_owned(),
                detail: detail.map(str::to_owned),
            });
            from_sdk(c.client.set_status(status))
        })
    }
}

/// Reads `count` user ids from `users` (each a NUL-terminated UTF-8 string).
unsafe fn user_list(
    users: *const *const c_char,
    count: usize,
) -> Result<Vec<String>, PresentlyResult> {
    if users.is_null() && count > 0 {
        return Err(PresentlyResult::NullArgument);
    }
    (0..count)
        // SAFETY: the caller gives `count` valid pointers at `users`.
        .map(|i| unsafe { str_arg(*users.add(i)) }.map(str::to_owned))
        .collect()
}

/// Watches `count` users (`users` is an array of user ids); kept across reconnects. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_subscribe(
    client: *const PresentlyClient,
    users: *const *const c_char,
    count: usize,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `user_list`.
    unsafe {
        with_client(client, |c| match user_list(users, count) {
            Ok(users) => {
                let result = from_sdk(c.client.subscribe(users.iter().cloned()));
                if result == PresentlyResult::Ok {
                    let mut mine = c.watching.lock().unwrap_or_else(|p| p.into_inner());
                    let mut all = c.shared.watchers.lock().unwrap_or_else(|p| p.into_inner());
                    for user in users {
                        if !mine.contains(&user) {
                            *all.entry(user.clone()).or_default() += 1;
                            mine.push(user);
                        }
                    }
                }
                result
            }
            Err(e) => e,
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
        with_client(client, |c| match user_list(users, count) {
            Ok(users) => {
                let mut mine = c.watching.lock().unwrap_or_else(|p| p.into_inner());
                let mine_now: Vec<String> =
                    users.into_iter().filter(|u| mine.contains(u)).collect();
                mine.retain(|u| !mine_now.contains(u));
                drop(mine);
                unwatch(&c.shared, &mine_now);
                PresentlyResult::Ok
            }
            Err(e) => e,
        })
    }
}

/// Takes a client's share of watching `users`: the connection stops watching those no other client watches.
fn unwatch(shared: &SharedConnection, users: &[String]) {
    let mut all = shared.watchers.lock().unwrap_or_else(|p| p.into_inner());
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

/// The app went to the background. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_app_backgrounded(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            c.client.app_backgrounded();
            PresentlyResult::Ok
        })
    }
}

/// The app came to the foreground (also checks the connection). Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_app_foregrounded(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            c.client.app_foregrounded();
            PresentlyResult::Ok
        })
    }
}

/// Do not disturb now, for `duration_ms` milliseconds, with an optional `message` (NULL for none). Any thread;
/// never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_snooze_dnd(
    client: *const PresentlyClient,
    duration_ms: u64,
    message: *const c_char,
) -> PresentlyResult {
    // SAFETY: see `with_client` and `opt_str_arg`.
    unsafe {
        with_client(client, |c| match opt_str_arg(message) {
            Ok(message) => from_sdk(c.client.snooze_dnd_for(
                Duration::from_millis(duration_ms),
                message.map(str::to_owned),
            )),
            Err(e) => e,
        })
    }
}

/// Ends a snooze early. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_end_snooze(
    client: *const PresentlyClient,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            c.client.end_snooze();
            PresentlyResult::Ok
        })
    }
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
            PresentlyResult::Ok
        })
    }
}

// ----- events -----

/// An event (opaque): read it with the `presently_event_*` accessors, free it with `presently_event_free`.
pub struct PresentlyEvent {
    kind: PresentlyEventKind,
    availability: PresentlyAvailability,
    state: PresentlyConnectionState,
    user_id: Option<CString>,
    message: Option<CString>,
    activity_kind: Option<CString>,
    activity_detail: Option<CString>,
    error_code: Option<CString>,
}

fn c_string(s: impl Into<String>) -> Option<CString> {
    // Protocol strings hold no control characters; a NUL would only come from a broken peer: drop them.
    CString::new(s.into().replace('\0', "")).ok()
}

fn availability(a: Availability) -> PresentlyAvailability {
    match a {
        Availability::Online => PresentlyAvailability::Online,
        Availability::Away => PresentlyAvailability::Away,
        Availability::Busy => PresentlyAvailability::Busy,
        Availability::Offline => PresentlyAvailability::Offline,
        Availability::Invisible => PresentlyAvailability::Invisible,
    }
}

fn event_from(event: Event) -> PresentlyEvent {
    let mut e = PresentlyEvent {
        kind: PresentlyEventKind::Other,
        availability: PresentlyAvailability::Offline,
        state: PresentlyConnectionState::Idle,
        user_id: None,
        message: None,
        activity_kind: None,
        activity_detail: None,
        error_code: None,
    };
    let status = |e: &mut PresentlyEvent, a, m: Option<String>, act: Option<Activity>| {
        e.availability = availability(a);
        e.message = m.and_then(c_string);
        if let Some(act) = act {
            e.activity_kind = c_string(act.kind);
            e.activity_detail = act.detail.and_then(c_string);
        }
    };
    match event {
        Event::PresenceChanged {
            user_id, current, ..
        } => {
            e.kind = PresentlyEventKind::PresenceChanged;
            e.user_id = c_string(user_id);
            status(
                &mut e,
                current.availability,
                current.message,
                current.activity,
            );
        }
        Event::OwnStatusChanged { effective, .. } => {
            e.kind = PresentlyEventKind::OwnStatusChanged;
            status(
                &mut e,
                effective.availability,
                effective.message,
                effective.activity,
            );
        }
        Event::StateChanged { current, .. } => {
            e.kind = PresentlyEventKind::StateChanged;
            e.state = match &current {
                ConnectionState::Idle => PresentlyConnectionState::Idle,
                ConnectionState::Connecting { .. } => PresentlyConnectionState::Connecting,
                ConnectionState::Connected { .. } => PresentlyConnectionState::Connected,
                ConnectionState::Reconnecting { .. } => PresentlyConnectionState::Reconnecting,
                ConnectionState::Closed => PresentlyConnectionState::Closed,
                ConnectionState::Failed { .. } => PresentlyConnectionState::Failed,
            };
            e.message = c_string(current.to_string());
        }
        Event::IdleWarning { .. } => e.kind = PresentlyEventKind::IdleWarning,
        Event::IdleWarningCancelled => e.kind = PresentlyEventKind::IdleWarningCancelled,
        Event::ServerError { code, message, .. } => {
            e.kind = PresentlyEventKind::ServerError;
            e.error_code = c_string(code.as_str());
            e.message = c_string(message);
        }
        _ => {}
    }
    e
}

/// Takes the oldest waiting event: writes it to `*out` and returns OK (free it with `presently_event_free`), or
/// returns NO_EVENT. Meant for the host's own thread (e.g. a JUCE Timer on the message thread); never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_next_event(
    client: *const PresentlyClient,
    out: *mut *mut PresentlyEvent,
) -> PresentlyResult {
    // SAFETY: see `with_client`; `out` is checked.
    unsafe {
        with_client(client, |c| {
            if out.is_null() {
                return PresentlyResult::NullArgument;
            }
            let next = lock_delivery(&c.delivery).queue.pop_front();
            match next {
                Some(event) => {
                    *out = Box::into_raw(Box::new(event_from(event)));
                    PresentlyResult::Ok
                }
                None => PresentlyResult::NoEvent,
            }
        })
    }
}

/// Delivers events by calling `callback(user_data, event)` on the library's thread instead of queueing them for
/// `presently_client_next_event` (NULL goes back to queueing). The event is valid only during the call. The
/// callback must not block and must not free the client. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_client_set_event_callback(
    client: *const PresentlyClient,
    callback: PresentlyEventCallback,
    user_data: *mut c_void,
) -> PresentlyResult {
    // SAFETY: see `with_client`.
    unsafe {
        with_client(client, |c| {
            lock_delivery(&c.delivery).push = callback.map(|function| Callback {
                function,
                user_data,
            });
            PresentlyResult::Ok
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
            lock_delivery(&c.delivery).wake = callback.map(|function| Callback {
                function,
                user_data,
            });
            PresentlyResult::Ok
        })
    }
}

/// Frees an event (NULL is ignored); the strings it returned become invalid. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_free(event: *mut PresentlyEvent) {
    if !event.is_null() {
        // SAFETY: `event` came from `presently_client_next_event` and is freed once.
        drop(unsafe { Box::from_raw(event) });
    }
}

unsafe fn event_ref<'a>(event: *const PresentlyEvent) -> Option<&'a PresentlyEvent> {
    // SAFETY: a non-NULL `event` came from `presently_client_next_event` and is not freed yet.
    unsafe { event.as_ref() }
}

fn ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// The event's kind (OTHER for NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_kind(event: *const PresentlyEvent) -> PresentlyEventKind {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(PresentlyEventKind::Other, |e| e.kind)
}

/// The user the event is about (PRESENCE_CHANGED), or NULL. Owned by the event.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_user_id(event: *const PresentlyEvent) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.user_id))
}

/// The availability (PRESENCE_CHANGED, OWN_STATUS_CHANGED; OFFLINE otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_availability(
    event: *const PresentlyEvent,
) -> PresentlyAvailability {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(PresentlyAvailability::Offline, |e| e.availability)
}

/// The custom message (status events), the reason (STATE_CHANGED) or the error message (SERVER_ERROR); NULL if
/// none. Owned by the event.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_message(event: *const PresentlyEvent) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.message))
}

/// The activity kind (e.g. "in_studio"), or NULL. Owned by the event.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_activity_kind(
    event: *const PresentlyEvent,
) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.activity_kind))
}

/// The activity detail (e.g. "Ableton Live 12"), or NULL. Owned by the event.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_activity_detail(
    event: *const PresentlyEvent,
) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.activity_detail))
}

/// The connection state (STATE_CHANGED; IDLE otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_connection_state(
    event: *const PresentlyEvent,
) -> PresentlyConnectionState {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(PresentlyConnectionState::Idle, |e| e.state)
}

/// The server's error code (SERVER_ERROR, e.g. "invalid_token"), or NULL. Owned by the event.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_event_error_code(event: *const PresentlyEvent) -> *const c_char {
    // SAFETY: see `event_ref`.
    unsafe { event_ref(event) }.map_or(std::ptr::null(), |e| ptr(&e.error_code))
}
