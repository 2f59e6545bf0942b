//! Client configuration and DND schedules built from C.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use presently_sdk::{ClientInfo, DndSchedule, DndWindow, ReconnectPolicy};

use crate::error::{PresentlyResult, fail, guarded, non_null, opt_str_arg, str_arg};

/// Asked for a token before every connection attempt. Write the token (UTF-8, no NUL needed) into `buf`, which
/// holds `len` bytes, and return its length in bytes. If the token is longer than `len`, return its length
/// without writing: the library calls again with a buffer that large. Return 0 when no token is available: the
/// attempt fails and is retried with backoff.
/// Called on a library thread set aside for it, so it may block (e.g. to refresh the token over HTTP) — but not
/// longer than the connect timeout (10 s). Must not call `presently_client_free`.
pub type PresentlyTokenCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, buf: *mut c_char, len: usize) -> usize>;

/// A token callback with its user data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenSource {
    pub(crate) function: unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> usize,
    pub(crate) user_data: *mut c_void,
}

impl PartialEq for TokenSource {
    fn eq(&self, other: &Self) -> bool {
        self.function as usize == other.function as usize && self.user_data == other.user_data
    }
}

// SAFETY: the header documents that the token callback and its user data are used from library threads.
unsafe impl Send for TokenSource {}
// SAFETY: as above; the library calls it from one attempt at a time.
unsafe impl Sync for TokenSource {}

/// How the client proves who it is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Credential {
    /// Nothing set yet.
    Missing,
    /// A fixed token.
    Token(String),
    /// A callback asked before every attempt.
    Callback(TokenSource),
}

/// Everything a client is built from; equal settings share one connection.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) credential: Credential,
    pub(crate) client_info: Option<ClientInfo>,
    /// `None`: the Rust client's default; `Some(None)`: off.
    pub(crate) idle_timeout: Option<Option<Duration>>,
    pub(crate) idle_warning: Option<Option<Duration>>,
    pub(crate) background_away_after: Option<Option<Duration>>,
    pub(crate) reconnect: Option<ReconnectPolicy>,
    pub(crate) transport: Option<presently_sdk::TransportPolicy>,
    pub(crate) fallback_after: Option<u32>,
    pub(crate) dnd: Option<DndSchedule>,
}

/// How a client is set up (opaque): create with `presently_config_new`, adjust with `presently_config_set_*`,
/// pass to `presently_client_new` (which copies it), free with `presently_config_free`.
pub struct PresentlyConfig {
    pub(crate) settings: Settings,
}

/// Runs `f` on a config argument.
unsafe fn with_config(
    config: *mut PresentlyConfig,
    f: impl FnOnce(&mut Settings) -> Result<(), PresentlyResult>,
) -> PresentlyResult {
    guarded(|| {
        let config = non_null(config, "config")?;
        // SAFETY: a non-NULL `config` came from `presently_config_new` and is not freed yet, as documented.
        f(&mut unsafe { &mut *config }.settings)
    })
}

/// Milliseconds as an optional duration: 0 means off.
fn millis_or_off(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Creates a configuration for the server at `url` (ws:// or wss://; checked by `presently_client_new`) and
/// writes it to `*out`; free it with `presently_config_free`. Set a token or a token callback before creating a
/// client. One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_new(
    url: *const c_char,
    out: *mut *mut PresentlyConfig,
) -> PresentlyResult {
    guarded(|| {
        let out = non_null(out, "out")?;
        // SAFETY: `url` is a NUL-terminated string valid for the call, as documented.
        let url = unsafe { str_arg(url, "url") }?;
        let config = Box::new(PresentlyConfig {
            settings: Settings {
                url: url.to_owned(),
                credential: Credential::Missing,
                client_info: None,
                idle_timeout: None,
                idle_warning: None,
                background_away_after: None,
                reconnect: None,
                transport: None,
                fallback_after: None,
                dnd: None,
            },
        });
        // SAFETY: `out` is non-NULL and writable, as documented.
        unsafe { *out = Box::into_raw(config) };
        Ok(())
    })
}

/// Frees a configuration (NULL is ignored). Clients created from it are not affected. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_free(config: *mut PresentlyConfig) {
    if !config.is_null() {
        // SAFETY: `config` came from `presently_config_new` and is freed once.
        drop(unsafe { Box::from_raw(config) });
    }
}

/// Uses a fixed `token` (for the reference server, an HS256 JWT from your backend); replaces a token callback.
/// One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_token(
    config: *mut PresentlyConfig,
    token: *const c_char,
) -> PresentlyResult {
    // SAFETY: see `with_config` and `str_arg`.
    unsafe {
        with_config(config, |s| {
            s.credential = Credential::Token(str_arg(token, "token")?.to_owned());
            Ok(())
        })
    }
}

/// Asks `callback(user_data, buf, len)` for a token before every connection attempt (see
/// `PresentlyTokenCallback`), so that short-lived tokens refresh by themselves; replaces a fixed token.
/// `user_data` must stay valid until every client created from this config is freed. One thread at a time per
/// config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_token_callback(
    config: *mut PresentlyConfig,
    callback: PresentlyTokenCallback,
    user_data: *mut c_void,
) -> PresentlyResult {
    // SAFETY: see `with_config`.
    unsafe {
        with_config(config, |s| {
            let function = callback
                .ok_or_else(|| fail(PresentlyResult::NullArgument, "`callback` is NULL"))?;
            s.credential = Credential::Callback(TokenSource {
                function,
                user_data,
            });
            Ok(())
        })
    }
}

/// Names your application in `hello`: `app_name`, `app_version`, `platform` (each at most 64 bytes, e.g.
/// "MyReverb", "2.1.0", "vst3-macos"). One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_client_info(
    config: *mut PresentlyConfig,
    app_name: *const c_char,
    app_version: *const c_char,
    platform: *const c_char,
) -> PresentlyResult {
    // SAFETY: see `with_config` and `str_arg`.
    unsafe {
        with_config(config, |s| {
            let info = ClientInfo::new(
                str_arg(app_name, "app_name")?,
                str_arg(app_version, "app_version")?,
                str_arg(platform, "platform")?,
            );
            presently_sdk::protocol::validate_client_info(&info)
                .map_err(|e| fail(PresentlyResult::InvalidArgument, e))?;
            s.client_info = Some(info);
            Ok(())
        })
    }
}

/// Goes away after `idle_timeout_ms` milliseconds without `presently_client_record_activity`, and back when
/// activity returns; 0 turns idle detection off. Default 300000 (5 minutes). One thread at a time per config;
/// never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_idle_timeout_ms(
    config: *mut PresentlyConfig,
    idle_timeout_ms: u64,
) -> PresentlyResult {
    // SAFETY: see `with_config`.
    unsafe {
        with_config(config, |s| {
            s.idle_timeout = Some(millis_or_off(idle_timeout_ms));
            Ok(())
        })
    }
}

/// Emits `PRESENTLY_EVENT_KIND_IDLE_WARNING` ("still there?") `idle_warning_ms` milliseconds before going away
/// for idleness; 0 (the default) emits none. One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_idle_warning_ms(
    config: *mut PresentlyConfig,
    idle_warning_ms: u64,
) -> PresentlyResult {
    // SAFETY: see `with_config`.
    unsafe {
        with_config(config, |s| {
            s.idle_warning = Some(millis_or_off(idle_warning_ms));
            Ok(())
        })
    }
}

/// Goes away `background_away_ms` milliseconds after `presently_client_app_backgrounded`; 0 leaves the status
/// alone in the background. Default 60000. One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_background_away_ms(
    config: *mut PresentlyConfig,
    background_away_ms: u64,
) -> PresentlyResult {
    // SAFETY: see `with_config`.
    unsafe {
        with_config(config, |s| {
            s.background_away_after = Some(millis_or_off(background_away_ms));
            Ok(())
        })
    }
}

/// Waits between connection attempts with full jitter: up to `base_delay_ms` after the first failure, doubling
/// with each further failure up to `max_delay_ms`. Defaults 2000 and 30000. `base_delay_ms` must be at least 1
/// and at most `max_delay_ms`. One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_reconnect_delays_ms(
    config: *mut PresentlyConfig,
    base_delay_ms: u64,
    max_delay_ms: u64,
) -> PresentlyResult {
    // SAFETY: see `with_config`.
    unsafe {
        with_config(config, |s| {
            if base_delay_ms == 0 || base_delay_ms > max_delay_ms {
                return Err(fail(
                    PresentlyResult::InvalidArgument,
                    format!(
                        "reconnect delays must satisfy 1 <= base ({base_delay_ms}) <= max ({max_delay_ms})"
                    ),
                ));
            }
            s.reconnect = Some(ReconnectPolicy {
                base_delay: Duration::from_millis(base_delay_ms),
                max_delay: Duration::from_millis(max_delay_ms),
                ..ReconnectPolicy::default()
            });
            Ok(())
        })
    }
}

/// Which transports a client may use.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // The variants come from C callers.
pub enum PresentlyTransportPolicy {
    /// WebSocket, falling back to HTTP + Server-Sent Events when WebSocket attempts keep failing before the
    /// server's welcome (blocked by a proxy), and returning to WebSocket later without a change others can see.
    Auto = 0,
    /// WebSocket only.
    Websocket = 1,
    /// HTTP + Server-Sent Events only.
    Sse = 2,
}

/// Which transports to use (default AUTO). One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_transport(
    config: *mut PresentlyConfig,
    policy: PresentlyTransportPolicy,
) -> PresentlyResult {
    // SAFETY: see `with_config`.
    unsafe {
        with_config(config, |s| {
            s.transport = Some(match policy {
                PresentlyTransportPolicy::Auto => presently_sdk::TransportPolicy::Auto,
                PresentlyTransportPolicy::Websocket => {
                    presently_sdk::TransportPolicy::WebSocketOnly
                }
                PresentlyTransportPolicy::Sse => presently_sdk::TransportPolicy::SseOnly,
            });
            Ok(())
        })
    }
}

/// With the AUTO transport policy: how many attempts in a row must fail before the server's welcome before the
/// client switches transport (1 to 100; default 2). One thread at a time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_fallback_after(
    config: *mut PresentlyConfig,
    attempts: u32,
) -> PresentlyResult {
    // SAFETY: see `with_config`.
    unsafe {
        with_config(config, |s| {
            if !(1..=100).contains(&attempts) {
                return Err(fail(
                    PresentlyResult::InvalidArgument,
                    format!("fallback_after must be from 1 to 100, not {attempts}"),
                ));
            }
            s.fallback_after = Some(attempts);
            Ok(())
        })
    }
}

/// Uses `schedule` (copied; NULL for none) as the weekly do-not-disturb schedule from the start. One thread at a
/// time per config; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_config_set_dnd_schedule(
    config: *mut PresentlyConfig,
    schedule: *const PresentlyDndSchedule,
) -> PresentlyResult {
    // SAFETY: see `with_config` and `schedule_arg`.
    unsafe {
        with_config(config, |s| {
            s.dnd = schedule_arg(schedule)?;
            Ok(())
        })
    }
}

/// A weekly do-not-disturb schedule (opaque): quiet hours in one IANA timezone, correct across DST changes and
/// midnight. Create with `presently_dnd_schedule_new`, add windows, pass to `presently_config_set_dnd_schedule`
/// or `presently_client_set_dnd_schedule` (both copy it), free with `presently_dnd_schedule_free`.
pub struct PresentlyDndSchedule {
    timezone: String,
    windows: Vec<DndWindow>,
    message: Option<String>,
}

impl PresentlyDndSchedule {
    fn build(&self) -> Result<DndSchedule, PresentlyResult> {
        let invalid = |e: presently_sdk::ScheduleError| fail(PresentlyResult::InvalidArgument, e);
        let schedule = DndSchedule::new(&self.timezone, self.windows.clone()).map_err(invalid)?;
        match &self.message {
            Some(message) => schedule.with_message(message.clone()).map_err(invalid),
            None => Ok(schedule),
        }
    }
}

/// Reads an optional schedule argument: NULL is none; a schedule without windows is an error.
pub(crate) unsafe fn schedule_arg(
    schedule: *const PresentlyDndSchedule,
) -> Result<Option<DndSchedule>, PresentlyResult> {
    // SAFETY: a non-NULL `schedule` came from `presently_dnd_schedule_new` and is not freed yet.
    match unsafe { schedule.as_ref() } {
        None => Ok(None),
        Some(schedule) => schedule.build().map(Some),
    }
}

/// Creates an empty schedule in `timezone`, an IANA name such as "Europe/Berlin" (an unknown name is
/// INVALID_ARGUMENT), and writes it to `*out`; free it with `presently_dnd_schedule_free`. Any thread; never
/// blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_dnd_schedule_new(
    timezone: *const c_char,
    out: *mut *mut PresentlyDndSchedule,
) -> PresentlyResult {
    guarded(|| {
        let out = non_null(out, "out")?;
        // SAFETY: `timezone` is a NUL-terminated string valid for the call, as documented.
        let timezone = unsafe { str_arg(timezone, "timezone") }?.trim();
        if timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(fail(
                PresentlyResult::InvalidArgument,
                presently_sdk::ScheduleError::UnknownTimezone(timezone.to_owned()),
            ));
        }
        let schedule = Box::new(PresentlyDndSchedule {
            timezone: timezone.to_owned(),
            windows: Vec::new(),
            message: None,
        });
        // SAFETY: `out` is non-NULL and writable, as documented.
        unsafe { *out = Box::into_raw(schedule) };
        Ok(())
    })
}

/// Adds a quiet window: on `days` (day names or three-letter abbreviations separated by commas, or "weekdays",
/// "weekend", "daily"; e.g. "mon,tue,fri"), from `start` to `end` (24-hour "HH:MM" local time; an end before the
/// start runs past midnight into the next day). Invalid days or times, or equal start and end, are
/// INVALID_ARGUMENT. One thread at a time per schedule; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_dnd_schedule_add_window(
    schedule: *mut PresentlyDndSchedule,
    days: *const c_char,
    start: *const c_char,
    end: *const c_char,
) -> PresentlyResult {
    guarded(|| {
        let schedule = non_null(schedule, "schedule")?;
        // SAFETY: the strings are NUL-terminated and valid for the call, as documented.
        let (days, start, end) = unsafe {
            (
                str_arg(days, "days")?,
                str_arg(start, "start")?,
                str_arg(end, "end")?,
            )
        };
        let window = DndWindow::parse(days, start, end)
            .map_err(|e| fail(PresentlyResult::InvalidArgument, e))?;
        // SAFETY: a non-NULL `schedule` came from `presently_dnd_schedule_new` and is not freed yet.
        unsafe { &mut *schedule }.windows.push(window);
        Ok(())
    })
}

/// Shows `message` (at most 200 characters; NULL for none) as the custom status while quiet hours are on. One
/// thread at a time per schedule; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_dnd_schedule_set_message(
    schedule: *mut PresentlyDndSchedule,
    message: *const c_char,
) -> PresentlyResult {
    guarded(|| {
        let schedule = non_null(schedule, "schedule")?;
        // SAFETY: `message` is NULL or a NUL-terminated string valid for the call.
        let message = unsafe { opt_str_arg(message, "message") }?;
        if let Some(message) = message {
            let status =
                presently_sdk::Status::new(presently_sdk::Availability::Busy).with_message(message);
            presently_sdk::protocol::validate_status(&status)
                .map_err(|e| fail(PresentlyResult::InvalidArgument, e))?;
        }
        // SAFETY: a non-NULL `schedule` came from `presently_dnd_schedule_new` and is not freed yet.
        unsafe { &mut *schedule }.message = message.map(str::to_owned);
        Ok(())
    })
}

/// Frees a schedule (NULL is ignored). Configs and clients it was given to keep their copies. Any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_dnd_schedule_free(schedule: *mut PresentlyDndSchedule) {
    if !schedule.is_null() {
        // SAFETY: `schedule` came from `presently_dnd_schedule_new` and is freed once.
        drop(unsafe { Box::from_raw(schedule) });
    }
}
