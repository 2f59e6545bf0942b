//! Presently in the browser: the sans-IO core (`presently-core`) driven by `web_sys::WebSocket` and gloo-timers.
//! No tokio: the driver feeds the core the socket's events and `performance.now()`, sends what it asks to send,
//! and arms one timer for its next deadline. The JavaScript API is [`PresenceClient`]; its TypeScript types are
//! written out below (no `any`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use presently_core as core;
use presently_core::json_text::{JsonObject, Quoted};
use presently_core::{Instant, TransportCommand};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** What watchers see. `invisible` is a choice; watchers see it as `offline`. */
export type Availability = "online" | "away" | "busy" | "offline" | "invisible";

/** What a user is doing, e.g. `{ kind: "in_studio", detail: "Ableton Live 12" }`. */
export interface Activity {
  kind: string;
  detail?: string;
}

/** A watched (or queried) user's presence. Times are Unix milliseconds. */
export interface Presence {
  userId: string;
  availability: Availability;
  message?: string;
  activity?: Activity;
  lastActiveAt?: number;
  since?: number;
}

/** Why your own status is what it is. */
export type StatusReason = "manual" | "idle" | "dnd" | "lifecycle";

/** Your own effective status: what watchers see, and why. */
export interface OwnStatus {
  availability: Availability;
  message?: string;
  activity?: Activity;
  reason: StatusReason;
}

/** The transport a connection uses: a WebSocket, or HTTP + Server-Sent Events where WebSockets are blocked. */
export type Transport = "websocket" | "sse";

/** The connection's state. */
export type ConnectionState =
  | { state: "idle" }
  | { state: "connecting"; attempt: number; transport: Transport }
  | { state: "connected"; sessionId: string; transport: Transport }
  | { state: "reconnecting"; attempt: number; retryInMs: number; reason: string }
  | { state: "closed" }
  | { state: "failed"; code: string; message: string };

/** An error: from the server (`fatal` ones stop the client), or why a call failed. */
export interface PresenceError {
  code: string;
  message: string;
  fatal: boolean;
}

/** One weekly quiet window: `days` like "weekdays", "sat,sun" or "daily"; times are local "HH:MM". */
export interface DndWindow {
  days: string;
  start: string;
  end: string;
}

/** A weekly do-not-disturb schedule in an IANA timezone, correct across DST changes and midnight. */
export interface DndSchedule {
  timezone: string;
  windows: DndWindow[];
  message?: string;
}

/** Whether do-not-disturb is on, until when and when it next starts (Unix milliseconds). */
export interface DndState {
  active: boolean;
  source?: "schedule" | "snooze";
  until?: number;
  nextStart?: number;
  snoozedUntil?: number;
  message?: string;
}

/** What you set with `setStatus`. */
export interface StatusUpdate {
  availability: Exclude<Availability, "offline">;
  message?: string;
  activity?: Activity;
}

/** How a client is set up. Durations are in milliseconds; leave one out for its default. */
export interface PresenceClientOptions {
  /** The server, `wss://…/v1/ws` (or `ws://` for development). */
  url: string;
  /** A fixed token; or give `getToken`. */
  token?: string;
  /** Asked for a fresh token before every connection attempt. */
  getToken?: () => string | Promise<string>;
  appName?: string;
  appVersion?: string;
  platform?: string;
  /** Away after this long without activity; 0 turns idle detection off. Default 300000. */
  idleTimeoutMs?: number;
  /** An `idleWarning` event this long before going away; default none. */
  idleWarningMs?: number;
  /** Away this long after the tab is hidden; 0 never. Default 60000. */
  backgroundAwayMs?: number;
  /** Reconnect delays: full jitter, doubling from the base to the max. Defaults 2000 and 30000. */
  reconnectBaseDelayMs?: number;
  reconnectMaxDelayMs?: number;
  /** Quiet hours from the start. */
  dnd?: DndSchedule;
  /**
   * Which transports to use. "auto" (default): WebSocket, falling back to HTTP + Server-Sent Events when
   * WebSocket attempts keep failing (a proxy that blocks them), and back to WebSocket later. The server must
   * allow the page's origin for HTTP (the reference server allows every origin).
   */
  transport?: "auto" | "websocket" | "sse";
  /** With transport "auto": how many attempts in a row must fail before switching transport. Default 2. */
  fallbackAfter?: number;
  /**
   * How long past the server's heartbeat interval to wait for a sign of life before declaring the link dead
   * and reconnecting. Default 10000.
   */
  livenessGraceMs?: number;
}
"#;

// ----- JavaScript-facing records -----

struct Options {
    url: String,
    token: Option<String>,
    app_name: Option<String>,
    app_version: Option<String>,
    platform: Option<String>,
    idle_timeout_ms: Option<f64>,
    idle_warning_ms: Option<f64>,
    background_away_ms: Option<f64>,
    reconnect_base_delay_ms: Option<f64>,
    reconnect_max_delay_ms: Option<f64>,
    dnd: Option<Schedule>,
    transport: Option<String>,
    fallback_after: Option<f64>,
    liveness_grace_ms: Option<f64>,
}

struct Window {
    days: String,
    start: String,
    end: String,
}

struct Schedule {
    timezone: String,
    windows: Vec<Window>,
    message: Option<String>,
}

struct Update {
    availability: String,
    message: Option<String>,
    activity: Option<ActivityIn>,
}

struct ActivityIn {
    kind: String,
    detail: Option<String>,
}

/// A plain JavaScript object written by `write` (absent fields are left out).
///
/// Values cross the boundary as JSON text parsed by `JSON.parse`, written with the core's `json_text` writer:
/// the smallest code for it (per-field `Reflect.set` calls cost more, and serde's serializers several times more).
fn js_object(write: impl FnOnce(&mut JsonObject<'_>)) -> JsValue {
    let mut text = String::new();
    let mut object = JsonObject::new(&mut text);
    write(&mut object);
    object.end();
    parse(&text)
}

/// The JavaScript value of the JSON `text` (`undefined` if it is not JSON, which the writers here never produce).
fn parse(text: &str) -> JsValue {
    js_sys::JSON::parse(text).unwrap_or(JsValue::UNDEFINED)
}

/// The `activity` field of a `Presence` or `OwnStatus`, if there is one.
fn write_activity(object: &mut JsonObject<'_>, activity: Option<&core::Activity>) {
    if let Some(activity) = activity {
        object.object("activity", |object| {
            object
                .str("kind", &activity.kind)
                .opt_str("detail", activity.detail.as_deref());
        });
    }
}

/// The fields of a `Presence` object.
fn write_presence(object: &mut JsonObject<'_>, p: &core::Presence) {
    object
        .str("userId", &p.user_id)
        .str("availability", p.availability.as_str())
        .opt_str("message", p.message.as_deref());
    write_activity(object, p.activity.as_ref());
    object
        .opt_u64("lastActiveAt", p.last_active_at)
        .opt_u64("since", p.since);
}

/// A `Presence` object.
fn presence(p: &core::Presence) -> JsValue {
    js_object(|object| write_presence(object, p))
}

/// An array of `Presence` objects.
fn presence_list<'p>(records: impl IntoIterator<Item = &'p core::Presence>) -> JsValue {
    let mut text = String::from("[");
    for (i, p) in records.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let mut object = JsonObject::new(&mut text);
        write_presence(&mut object, p);
        object.end();
    }
    text.push(']');
    parse(&text)
}

/// An `OwnStatus` object.
fn own_status(status: &core::Status, reason: core::StatusReason) -> JsValue {
    js_object(|object| {
        object
            .str("availability", status.availability.as_str())
            .opt_str("message", status.message.as_deref());
        write_activity(object, status.activity.as_ref());
        object.str("reason", reason.as_str());
    })
}

/// A `ConnectionState` object.
fn state(s: &core::ConnectionState) -> JsValue {
    js_object(|object| match s {
        core::ConnectionState::Idle => {
            object.str("state", "idle");
        }
        core::ConnectionState::Connecting { attempt, transport } => {
            object
                .str("state", "connecting")
                .u64("attempt", u64::from(*attempt))
                .str("transport", transport.name());
        }
        core::ConnectionState::Connected {
            session_id,
            transport,
        } => {
            object
                .str("state", "connected")
                .str("sessionId", session_id)
                .str("transport", transport.name());
        }
        core::ConnectionState::Reconnecting {
            attempt,
            delay,
            reason,
            ..
        } => {
            object
                .str("state", "reconnecting")
                .u64("attempt", u64::from(*attempt))
                .u64(
                    "retryInMs",
                    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                )
                .str("reason", reason);
        }
        core::ConnectionState::Closed => {
            object.str("state", "closed");
        }
        core::ConnectionState::Failed { code, message } => {
            object
                .str("state", "failed")
                .str("code", code.as_str())
                .str("message", message);
        }
    })
}

/// A plain JavaScript object given to the API, read field by field: a field that is `undefined` or `null`
/// counts as absent, and a field of the wrong type is an error that names it.
struct JsObject<'a> {
    value: &'a JsValue,
    /// What the object is, for errors (e.g. `"options"`).
    what: &'static str,
}

impl<'a> JsObject<'a> {
    /// `value` as an object, or the `Error` to throw.
    fn new(value: &'a JsValue, what: &'static str) -> Result<Self, JsValue> {
        if value.is_object() {
            Ok(JsObject { value, what })
        } else {
            Err(invalid(format!("{what} must be an object")))
        }
    }

    /// The field `name`, unless absent, `undefined` or `null`.
    fn get(&self, name: &str) -> Option<JsValue> {
        js_sys::Reflect::get(self.value, &JsValue::from_str(name))
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
    }

    fn wrong_type(&self, name: &str, kind: &str) -> JsValue {
        invalid(format!("{}.{name} must be {kind}", self.what))
    }

    /// The string field `name`, if present.
    fn string(&self, name: &str) -> Result<Option<String>, JsValue> {
        self.get(name)
            .map(|v| {
                v.as_string()
                    .ok_or_else(|| self.wrong_type(name, "a string"))
            })
            .transpose()
    }

    /// The string field `name`, which must be present.
    fn required_string(&self, name: &str) -> Result<String, JsValue> {
        self.string(name)?
            .ok_or_else(|| invalid(format!("{}.{name} is required", self.what)))
    }

    /// The number field `name`, if present.
    fn number(&self, name: &str) -> Result<Option<f64>, JsValue> {
        self.get(name)
            .map(|v| v.as_f64().ok_or_else(|| self.wrong_type(name, "a number")))
            .transpose()
    }
}

impl Options {
    /// The options object given to `new PresenceClient(…)`.
    fn read(value: &JsValue) -> Result<Self, JsValue> {
        let o = JsObject::new(value, "options")?;
        Ok(Options {
            url: o.required_string("url")?,
            token: o.string("token")?,
            app_name: o.string("appName")?,
            app_version: o.string("appVersion")?,
            platform: o.string("platform")?,
            idle_timeout_ms: o.number("idleTimeoutMs")?,
            idle_warning_ms: o.number("idleWarningMs")?,
            background_away_ms: o.number("backgroundAwayMs")?,
            reconnect_base_delay_ms: o.number("reconnectBaseDelayMs")?,
            reconnect_max_delay_ms: o.number("reconnectMaxDelayMs")?,
            dnd: o.get("dnd").map(|v| Schedule::read(&v)).transpose()?,
            transport: o.string("transport")?,
            fallback_after: o.number("fallbackAfter")?,
            liveness_grace_ms: o.number("livenessGraceMs")?,
        })
    }
}

impl Schedule {
    /// A `DndSchedule` object.
    fn read(value: &JsValue) -> Result<Self, JsValue> {
        let o = JsObject::new(value, "dnd")?;
        let windows = o
            .get("windows")
            .filter(js_sys::Array::is_array)
            .ok_or_else(|| o.wrong_type("windows", "an array"))?;
        let windows = js_sys::Array::from(&windows)
            .iter()
            .map(|w| {
                let w = JsObject::new(&w, "window")?;
                Ok(Window {
                    days: w.required_string("days")?,
                    start: w.required_string("start")?,
                    end: w.required_string("end")?,
                })
            })
            .collect::<Result<_, JsValue>>()?;
        Ok(Schedule {
            timezone: o.required_string("timezone")?,
            windows,
            message: o.string("message")?,
        })
    }
}

impl Update {
    /// A `StatusUpdate` object.
    fn read(value: &JsValue) -> Result<Self, JsValue> {
        let o = JsObject::new(value, "status")?;
        let activity = match o.get("activity") {
            None => None,
            Some(v) => {
                let a = JsObject::new(&v, "activity")?;
                Some(ActivityIn {
                    kind: a.required_string("kind")?,
                    detail: a.string("detail")?,
                })
            }
        };
        Ok(Update {
            availability: o.required_string("availability")?,
            message: o.string("message")?,
            activity,
        })
    }
}

/// A `PresenceError` object.
fn error_value(code: &str, message: impl Into<String>, fatal: bool) -> JsValue {
    js_object(|object| {
        object
            .str("code", code)
            .str("message", &message.into())
            .bool("fatal", fatal);
    })
}

/// An `Error` to throw for bad input.
fn invalid(message: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&format!("invalid argument: {message}")).into()
}

/// Milliseconds from JavaScript (a number) as an optional duration: 0 means off; negative or not finite is
/// an error.
fn millis(name: &str, ms: f64) -> Result<Option<Duration>, JsValue> {
    if !ms.is_finite() || ms < 0.0 {
        return Err(invalid(format!(
            "{name} must be a number of milliseconds >= 0"
        )));
    }
    Ok((ms >= 1.0).then(|| Duration::from_millis(ms as u64)))
}

// ----- timezones from the browser -----

#[wasm_bindgen]
extern "C" {
    /// `Intl.DateTimeFormat`, bound with a constructor that reports a `RangeError` (unknown zone) as `Err`.
    #[wasm_bindgen(js_namespace = Intl, js_name = DateTimeFormat)]
    #[derive(Clone)]
    type ZoneFormat;

    #[wasm_bindgen(constructor, js_namespace = Intl, js_class = "DateTimeFormat", catch)]
    fn new(locales: &str, options: &JsValue) -> Result<ZoneFormat, JsValue>;

    #[wasm_bindgen(method, js_name = formatToParts)]
    fn format_to_parts(this: &ZoneFormat, date: &js_sys::Date) -> js_sys::Array;
}

thread_local! {
    /// One formatter per zone: making one costs far more than using it.
    static FORMATS: RefCell<HashMap<String, ZoneFormat>> = RefCell::new(HashMap::new());
}

/// A formatter that writes an instant's local date and time in `zone`, or why not.
fn zone_format(zone: &str) -> Result<ZoneFormat, JsValue> {
    if let Some(format) = FORMATS.with(|f| f.borrow().get(zone).cloned()) {
        return Ok(format);
    }
    let options = js_sys::Object::new();
    for (key, value) in [
        ("timeZone", zone),
        ("hourCycle", "h23"),
        ("year", "numeric"),
        ("month", "numeric"),
        ("day", "numeric"),
        ("hour", "numeric"),
        ("minute", "numeric"),
        ("second", "numeric"),
    ] {
        js_sys::Reflect::set(&options, &key.into(), &value.into())?;
    }
    let format = ZoneFormat::new("en-US", &options)?;
    FORMATS.with(|f| f.borrow_mut().insert(zone.to_owned(), format.clone()));
    Ok(format)
}

/// `zone`'s UTC offset in seconds at `unix_seconds`, from the browser's own timezone database.
fn intl_offset(zone: &str, unix_seconds: i64) -> Option<i32> {
    let format = zone_format(zone).ok()?;
    let date = js_sys::Date::new(&JsValue::from_f64(unix_seconds as f64 * 1000.0));
    let mut fields = [0i64; 6];
    for part in format.format_to_parts(&date).iter() {
        let kind = js_sys::Reflect::get(&part, &"type".into())
            .ok()?
            .as_string()?;
        let slot = match kind.as_str() {
            "year" => 0,
            "month" => 1,
            "day" => 2,
            "hour" => 3,
            "minute" => 4,
            "second" => 5,
            _ => continue,
        };
        let value = js_sys::Reflect::get(&part, &"value".into())
            .ok()?
            .as_string()?;
        fields[slot] = value.parse().ok()?;
    }
    let [year, month, day, hour, minute, second] = fields;
    let local = core::chrono::NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    )?
    .and_hms_opt(
        u32::try_from(hour).ok()?,
        u32::try_from(minute).ok()?,
        u32::try_from(second).ok()?,
    )?;
    let utc = core::chrono::DateTime::from_timestamp(unix_seconds, 0)?.naive_utc();
    i32::try_from((local - utc).num_seconds()).ok()
}

/// A DND timezone answered by the browser's `Intl` (every IANA zone it knows, with no database in the module).
fn intl_zone(name: &str) -> Result<core::Zone, JsValue> {
    let name = name.trim().to_owned();
    if name.is_empty() || zone_format(&name).is_err() {
        return Err(invalid(core::ScheduleError::UnknownTimezone(name)));
    }
    let zone = name.clone();
    Ok(core::Zone::host(name, move |secs| intl_offset(&zone, secs)))
}

fn schedule(s: Schedule) -> Result<core::DndSchedule, JsValue> {
    let windows = s
        .windows
        .iter()
        .map(|w| core::DndWindow::parse(&w.days, &w.start, &w.end))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let schedule = core::DndSchedule::in_zone(intl_zone(&s.timezone)?, windows).map_err(invalid)?;
    match s.message {
        Some(m) => schedule.with_message(m).map_err(invalid),
        None => Ok(schedule),
    }
}

// ----- the driver -----

/// The page's monotonic clock, in milliseconds.
fn now() -> Instant {
    let ms = web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now());
    Instant::from_millis(ms.max(0.0) as u64)
}

/// The wall clock, Unix milliseconds.
fn unix_ms() -> u64 {
    js_sys::Date::now().max(0.0) as u64
}

/// The open (or opening) WebSocket and the closures it calls.
struct Socket {
    ws: web_sys::WebSocket,
    _on_open: Closure<dyn FnMut()>,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
    _on_close: Closure<dyn FnMut(web_sys::CloseEvent)>,
    _on_error: Closure<dyn FnMut()>,
}

impl Socket {
    fn shut(&self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close_with_code(1000);
    }
}

#[derive(Default)]
struct Listeners {
    next_id: u32,
    presence: Vec<(u32, js_sys::Function)>,
    own_status: Vec<(u32, js_sys::Function)>,
    state: Vec<(u32, js_sys::Function)>,
    error: Vec<(u32, js_sys::Function)>,
    idle_warning: Vec<(u32, js_sys::Function)>,
}

type Waiter = (js_sys::Function, js_sys::Function);

/// A listener on the page (window or document) kept for the client's life: target, event type, closure.
type PageListener = (
    web_sys::EventTarget,
    &'static str,
    Closure<dyn FnMut(web_sys::Event)>,
);

struct Driver {
    core: core::Client,
    url: String,
    /// The HTTP binding's URLs beside `url`.
    http_urls: core::protocol::HttpBindingUrls,
    socket: Option<Socket>,
    /// The open (or opening) connection of the HTTP binding.
    http: Option<HttpConnection>,
    /// Counts sockets, so that events of an old one are ignored.
    generation: u64,
    timer: Option<gloo_timers::callback::Timeout>,
    timer_at: Option<Instant>,
    get_token: Option<js_sys::Function>,
    listeners: Listeners,
    connect_waiters: Vec<Waiter>,
    close_waiters: Vec<js_sys::Function>,
    queries: HashMap<core::QueryId, Waiter>,
    page_listeners: Vec<PageListener>,
}

/// What to tell JavaScript after the core moved, collected while the driver is borrowed and delivered after.
enum Call {
    Listeners(Vec<js_sys::Function>, JsValue),
    Resolve(js_sys::Function, JsValue),
}

type Shared = Rc<RefCell<Driver>>;

/// Runs the core's outputs: frames out, transport commands, events, and the next timer; then tells JavaScript.
fn pump(shared: &Shared) {
    let calls = {
        let Ok(mut d) = shared.try_borrow_mut() else {
            return;
        };
        let t = now();
        d.core.handle_wall_clock(t, unix_ms());
        let mut calls = Vec::new();
        loop {
            let mut progressed = false;
            while let Some(frame) = d.core.poll_transmit() {
                progressed = true;
                if d.http.is_some() {
                    http_send(shared, &mut d, frame);
                    continue;
                }
                let sent = d.socket.as_ref().map(|s| s.ws.send_with_str(&frame));
                if !matches!(sent, Some(Ok(()))) {
                    d.core
                        .handle_transport_closed("the WebSocket refused a frame", now());
                }
            }
            while let Some(command) = d.core.poll_transport() {
                progressed = true;
                match command {
                    TransportCommand::Open { transport } => open(shared, &mut d, transport),
                    TransportCommand::Close => {
                        if let Some(socket) = d.socket.take() {
                            socket.shut();
                        }
                        if let Some(http) = d.http.take() {
                            http.shut();
                        }
                    }
                }
            }
            while let Some(event) = d.core.poll_event() {
                progressed = true;
                collect(&mut d, event, &mut calls);
            }
            if !progressed {
                break;
            }
        }
        arm_timer(shared, &mut d);
        calls
    };
    for call in calls {
        match call {
            Call::Listeners(functions, value) => {
                for f in functions {
                    // A listener that throws must not stop the others, nor the client.
                    let _ = f.call1(&JsValue::NULL, &value);
                }
            }
            Call::Resolve(f, value) => {
                let _ = f.call1(&JsValue::NULL, &value);
            }
        }
    }
}

fn functions(list: &[(u32, js_sys::Function)]) -> Vec<js_sys::Function> {
    list.iter().map(|(_, f)| f.clone()).collect()
}

fn collect(d: &mut Driver, event: core::Event, calls: &mut Vec<Call>) {
    match event {
        core::Event::StateChanged { current, .. } => {
            match &current {
                core::ConnectionState::Connected { .. } => {
                    for (resolve, _) in d.connect_waiters.drain(..) {
                        calls.push(Call::Resolve(resolve, JsValue::UNDEFINED));
                    }
                }
                core::ConnectionState::Failed { code, message } => {
                    let error = error_value(code.as_str(), message.clone(), true);
                    for (_, reject) in d.connect_waiters.drain(..) {
                        calls.push(Call::Resolve(reject, error.clone()));
                    }
                }
                // With the automatic policy a failure counts once the HTTP binding was tried too.
                core::ConnectionState::Reconnecting { reason, .. }
                    if d.core.config().transport != core::TransportPolicy::Auto
                        || d.core.transport() == core::Transport::Sse =>
                {
                    let error = error_value(
                        "unreachable",
                        format!("could not connect: {reason} (retrying in the background)"),
                        false,
                    );
                    for (_, reject) in d.connect_waiters.drain(..) {
                        calls.push(Call::Resolve(reject, error.clone()));
                    }
                }
                core::ConnectionState::Closed => {
                    let error = error_value("closed", "the client was closed", false);
                    for (_, reject) in d.connect_waiters.drain(..) {
                        calls.push(Call::Resolve(reject, error.clone()));
                    }
                    for resolve in d.close_waiters.drain(..) {
                        calls.push(Call::Resolve(resolve, JsValue::UNDEFINED));
                    }
                }
                _ => {}
            }
            calls.push(Call::Listeners(
                functions(&d.listeners.state),
                state(&current),
            ));
        }
        core::Event::PresenceChanged { current, .. } => calls.push(Call::Listeners(
            functions(&d.listeners.presence),
            presence(&current),
        )),
        core::Event::OwnStatusChanged { effective, reason } => calls.push(Call::Listeners(
            functions(&d.listeners.own_status),
            own_status(&effective, reason),
        )),
        core::Event::IdleWarning { away_at } => calls.push(Call::Listeners(
            functions(&d.listeners.idle_warning),
            JsValue::from_f64(away_at.as_millis().saturating_sub(now().as_millis()) as f64),
        )),
        core::Event::ServerError {
            code,
            message,
            fatal,
        } => calls.push(Call::Listeners(
            functions(&d.listeners.error),
            error_value(code.as_str(), message, fatal),
        )),
        core::Event::QueryCompleted { query_id, result } => {
            if let Some((resolve, reject)) = d.queries.remove(&query_id) {
                match result {
                    Ok(records) => {
                        calls.push(Call::Resolve(resolve, presence_list(&records)));
                    }
                    Err(e) => calls.push(Call::Resolve(
                        reject,
                        error_value("query_failed", e.to_string(), false),
                    )),
                }
            }
        }
        _ => {}
    }
}

/// Opens a connection for the core on `transport` (after asking `getToken`, if given).
fn open(shared: &Shared, d: &mut Driver, transport: core::Transport) {
    if let Some(socket) = d.socket.take() {
        socket.shut();
    }
    if let Some(http) = d.http.take() {
        http.shut();
    }
    d.generation += 1;
    let generation = d.generation;
    let connect = move |shared: &Shared, d: &mut Driver| match transport {
        core::Transport::WebSocket => connect_socket(shared, d, generation),
        core::Transport::Sse => start_http(d),
    };
    match d.get_token.clone() {
        None => connect(shared, d),
        Some(get_token) => {
            let shared = shared.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let token = fetch_token(&get_token).await;
                let Ok(mut d) = shared.try_borrow_mut() else {
                    return;
                };
                if d.generation != generation {
                    return;
                }
                match token {
                    Ok(token) => {
                        d.core.set_token(token);
                        connect(&shared, &mut d);
                    }
                    Err(why) => d.core.handle_transport_closed(&why, now()),
                }
                drop(d);
                pump(&shared);
            });
        }
    }
}

async fn fetch_token(get_token: &js_sys::Function) -> Result<String, String> {
    let value = get_token
        .call0(&JsValue::NULL)
        .map_err(|e| format!("getToken threw: {e:?}"))?;
    let value = if value.has_type::<js_sys::Promise>() {
        wasm_bindgen_futures::JsFuture::from(js_sys::Promise::unchecked_from_js(value))
            .await
            .map_err(|e: JsValue| format!("getToken rejected: {e:?}"))?
    } else {
        value
    };
    value
        .as_string()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "getToken gave no token".to_owned())
}

fn connect_socket(shared: &Shared, d: &mut Driver, generation: u64) {
    let ws = match web_sys::WebSocket::new(&d.url) {
        Ok(ws) => ws,
        Err(e) => {
            d.core
                .handle_transport_closed(&format!("cannot open the WebSocket: {e:?}"), now());
            return;
        }
    };
    let live = {
        let shared = Rc::downgrade(shared);
        move || {
            shared.upgrade().filter(|s| {
                s.try_borrow()
                    .map(|d| d.generation == generation)
                    .unwrap_or(false)
            })
        }
    };
    let on_open = {
        let live = live.clone();
        Closure::<dyn FnMut()>::new(move || {
            if let Some(shared) = live() {
                shared.borrow_mut().core.handle_transport_open(now());
                pump(&shared);
            }
        })
    };
    let on_message = {
        let live = live.clone();
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
            if let Some(shared) = live() {
                match event.data().as_string() {
                    Some(text) => shared.borrow_mut().core.handle_frame(&text, now()),
                    None => shared.borrow_mut().core.handle_inbound_activity(now()),
                }
                pump(&shared);
            }
        })
    };
    let on_close = {
        let live = live.clone();
        Closure::<dyn FnMut(web_sys::CloseEvent)>::new(move |event: web_sys::CloseEvent| {
            if let Some(shared) = live() {
                let reason = format!(
                    "the WebSocket closed (code {}{}{})",
                    event.code(),
                    if event.reason().is_empty() { "" } else { ": " },
                    event.reason()
                );
                {
                    let mut d = shared.borrow_mut();
                    d.socket = None;
                    d.core.handle_transport_closed(&reason, now());
                }
                pump(&shared);
            }
        })
    };
    // An error is always followed by a close event, which carries the details.
    let on_error = Closure::<dyn FnMut()>::new(|| {});
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    d.socket = Some(Socket {
        ws,
        _on_open: on_open,
        _on_message: on_message,
        _on_close: on_close,
        _on_error: on_error,
    });
}

// ----- the HTTP binding (protocol section 11): fetch up, an event stream down -----

#[wasm_bindgen]
extern "C" {
    /// The global `fetch` (windows and workers alike).
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with_init(input: &str, init: &web_sys::RequestInit) -> js_sys::Promise;
}

/// The header naming a connection of the HTTP binding.
const CONNECTION_HEADER: &str = "Presently-Connection";

/// A connection of the HTTP binding: the opening request carries the `hello` and its body is the event stream;
/// every later frame is its own request, one at a time so that they keep their order.
struct HttpConnection {
    /// Where frames after the `hello` go.
    send_url: String,
    /// Aborts the event stream.
    abort: Option<web_sys::AbortController>,
    /// The opening request went out (it took the first frame, the `hello`).
    opened: bool,
    /// The connection's id, once the stream's answer arrived.
    id: Option<String>,
    /// Frames waiting for their request, in order.
    queue: std::collections::VecDeque<String>,
    /// A request with a frame is under way.
    sending: bool,
}

impl HttpConnection {
    /// Sends what is queued (a `bye`), one request after the other, and drops the event stream. With a message
    /// still on its way the stream is left for the server to end (it does after `bye`; dropped first, it would
    /// end the connection before the `bye` arrives), and dropped after at most two seconds.
    fn shut(self) {
        let HttpConnection {
            send_url,
            abort,
            id,
            queue,
            sending,
            ..
        } = self;
        let Some(abort) = abort else {
            return;
        };
        if !sending && queue.is_empty() {
            abort.abort();
            return;
        }
        gloo_timers::callback::Timeout::new(2_000, move || abort.abort()).forget();
        if let Some(id) = id {
            wasm_bindgen_futures::spawn_local(async move {
                for frame in queue {
                    let init = post(&frame, &[(CONNECTION_HEADER, &id)], None);
                    let _ = wasm_bindgen_futures::JsFuture::from(fetch_with_init(&send_url, &init))
                        .await;
                }
            });
        }
    }
}

/// A `POST` with a JSON body, these extra headers, and an abort signal if given.
fn post(
    body: &str,
    extra_headers: &[(&str, &str)],
    signal: Option<&web_sys::AbortSignal>,
) -> web_sys::RequestInit {
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(body));
    if let Ok(headers) = web_sys::Headers::new() {
        let _ = headers.set("Content-Type", "application/json");
        for (name, value) in extra_headers {
            let _ = headers.set(name, value);
        }
        init.set_headers(&headers);
    }
    if let Some(signal) = signal {
        init.set_signal(Some(signal));
    }
    init
}

/// Starts a connection of the HTTP binding: nothing to open before the `hello`, so the transport is ready now.
fn start_http(d: &mut Driver) {
    d.http = Some(HttpConnection {
        send_url: d.http_urls.send.clone(),
        abort: web_sys::AbortController::new().ok(),
        opened: false,
        id: None,
        queue: std::collections::VecDeque::new(),
        sending: false,
    });
    d.core.handle_transport_open(now());
}

/// A frame for the HTTP binding: the first opens the stream, the others queue for their request.
fn http_send(shared: &Shared, d: &mut Driver, frame: String) {
    let generation = d.generation;
    let last_event_id = d.core.resume_version();
    let open_url = d.http_urls.open.clone();
    let Some(http) = d.http.as_mut() else {
        return;
    };
    if http.opened {
        http.queue.push_back(frame);
        send_next(shared, d);
        return;
    }
    http.opened = true;
    let last_event_id = last_event_id.map(|id| id.to_string());
    let mut headers = vec![("Accept", "text/event-stream")];
    if let Some(id) = &last_event_id {
        headers.push(("Last-Event-ID", id));
    }
    let init = post(
        &frame,
        &headers,
        http.abort.as_ref().map(|a| a.signal()).as_ref(),
    );
    let shared = shared.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let outcome = read_stream(&shared, generation, &open_url, &init).await;
        let Ok(mut d) = shared.try_borrow_mut() else {
            return;
        };
        if d.generation != generation {
            return;
        }
        d.http = None;
        d.core.handle_transport_closed(&outcome, now());
        drop(d);
        pump(&shared);
    });
}

/// Runs the opening request and reads its event stream into the core until it ends; returns why it ended.
async fn read_stream(
    shared: &Shared,
    generation: u64,
    url: &str,
    init: &web_sys::RequestInit,
) -> String {
    let response = match wasm_bindgen_futures::JsFuture::from(fetch_with_init(url, init)).await {
        Ok(response) => response.unchecked_into::<web_sys::Response>(),
        Err(e) => return format!("cannot reach the server over HTTP: {}", describe(&e)),
    };
    let is_stream = response
        .headers()
        .get("Content-Type")
        .ok()
        .flatten()
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if response.status() != 200 || !is_stream {
        return format!(
            "the server answered HTTP {} instead of an event stream",
            response.status()
        );
    }
    let Some(id) = response.headers().get(CONNECTION_HEADER).ok().flatten() else {
        return format!("the event stream came without a readable {CONNECTION_HEADER} header");
    };
    let Some(body) = response.body() else {
        return "the event stream has no body".into();
    };
    {
        let Ok(mut d) = shared.try_borrow_mut() else {
            return "the client is busy".into();
        };
        if d.generation != generation {
            return "replaced".into();
        }
        if let Some(http) = d.http.as_mut() {
            http.id = Some(id);
        }
        send_next(shared, &mut d);
    }
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    loop {
        let chunk = match wasm_bindgen_futures::JsFuture::from(reader.read()).await {
            Ok(chunk) => chunk,
            Err(e) => return format!("the event stream failed: {}", describe(&e)),
        };
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .map(|v| v.is_truthy())
            .unwrap_or(true);
        if done {
            return "the server ended the event stream".into();
        }
        let Ok(value) = js_sys::Reflect::get(&chunk, &"value".into()) else {
            continue;
        };
        let bytes = js_sys::Uint8Array::new(&value).to_vec();
        {
            let Ok(mut d) = shared.try_borrow_mut() else {
                continue;
            };
            if d.generation != generation {
                return "replaced".into();
            }
            if d.http.is_none() {
                return "closed".into();
            }
            d.core.handle_stream_bytes(&bytes, now());
        }
        pump(shared);
    }
}

/// Sends the next queued frame of the HTTP binding if none is under way and the connection id is known.
fn send_next(shared: &Shared, d: &mut Driver) {
    let generation = d.generation;
    let url = d.http_urls.send.clone();
    let Some(http) = d.http.as_mut() else {
        return;
    };
    if http.sending {
        return;
    }
    let Some(id) = http.id.clone() else {
        return;
    };
    let Some(frame) = http.queue.pop_front() else {
        return;
    };
    http.sending = true;
    let shared = shared.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let init = post(&frame, &[(CONNECTION_HEADER, &id)], None);
        let outcome = match wasm_bindgen_futures::JsFuture::from(fetch_with_init(&url, &init)).await
        {
            Ok(response) => {
                let response: web_sys::Response = response.unchecked_into();
                match response.status() {
                    200..=299 => Ok(()),
                    404 => Err("the server no longer knows this connection".to_owned()),
                    status => Err(format!("the server answered HTTP {status} to a message")),
                }
            }
            Err(e) => Err(format!("sending over HTTP failed: {}", describe(&e))),
        };
        let Ok(mut d) = shared.try_borrow_mut() else {
            return;
        };
        if d.generation != generation {
            return;
        }
        match outcome {
            Ok(()) => {
                if let Some(http) = d.http.as_mut() {
                    http.sending = false;
                }
                send_next(&shared, &mut d);
            }
            Err(why) => {
                if let Some(http) = d.http.take() {
                    http.shut();
                }
                d.core.handle_transport_closed(&why, now());
            }
        }
        drop(d);
        pump(&shared);
    });
}

/// A JavaScript error for people.
fn describe(error: &JsValue) -> String {
    error
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| error.as_string())
        .unwrap_or_else(|| "unknown error".into())
}

/// Arms one timer for the core's next deadline (none if it has none).
fn arm_timer(shared: &Shared, d: &mut Driver) {
    let next = d.core.poll_timeout();
    if next == d.timer_at && d.timer.is_some() {
        return;
    }
    d.timer = None;
    d.timer_at = next;
    if let Some(at) = next {
        let delay = at.as_millis().saturating_sub(now().as_millis());
        let weak = Rc::downgrade(shared);
        d.timer = Some(gloo_timers::callback::Timeout::new(
            // Browsers fire longer delays at once; a spurious timeout is a no-op for the core.
            u32::try_from(delay)
                .unwrap_or(u32::MAX)
                .min(i32::MAX as u32),
            move || {
                if let Some(shared) = weak.upgrade() {
                    {
                        let mut d = shared.borrow_mut();
                        d.timer = None;
                        d.timer_at = None;
                        d.core.handle_timeout(now());
                    }
                    pump(&shared);
                }
            },
        ));
    }
}

// ----- the JavaScript API -----

/// A presence client for the browser: connects, keeps your status right and watches others.
#[wasm_bindgen]
pub struct PresenceClient {
    shared: Shared,
}

impl PresenceClient {
    /// Runs `f` on the core at the current time, then acts on its outputs. The core first gets the wall clock
    /// as it is now (a tab may have been frozen for hours), so that `f` never judges a DND window on a stale one.
    fn with_core<R>(&self, f: impl FnOnce(&mut core::Client, Instant) -> R) -> R {
        let result = {
            let mut d = self.shared.borrow_mut();
            let t = now();
            d.core.handle_wall_clock(t, unix_ms());
            f(&mut d.core, t)
        };
        pump(&self.shared);
        result
    }

    fn listen(
        &self,
        pick: fn(&mut Listeners) -> &mut Vec<(u32, js_sys::Function)>,
        f: js_sys::Function,
    ) -> JsValue {
        let id = {
            let mut d = self.shared.borrow_mut();
            d.listeners.next_id += 1;
            let id = d.listeners.next_id;
            pick(&mut d.listeners).push((id, f));
            id
        };
        let weak = Rc::downgrade(&self.shared);
        Closure::once_into_js(move || {
            if let Some(shared) = weak.upgrade() {
                pick(&mut shared.borrow_mut().listeners).retain(|(i, _)| *i != id);
            }
        })
    }

    /// Adds a page listener kept for the client's life.
    fn on_page(
        &self,
        target: web_sys::EventTarget,
        kind: &'static str,
        f: impl FnMut(&Shared, web_sys::Event) + 'static,
    ) {
        let weak = Rc::downgrade(&self.shared);
        let mut f = f;
        let closure = Closure::<dyn FnMut(web_sys::Event)>::new(move |event: web_sys::Event| {
            if let Some(shared) = weak.upgrade() {
                f(&shared, event);
            }
        });
        let _ = target.add_event_listener_with_callback(kind, closure.as_ref().unchecked_ref());
        self.shared
            .borrow_mut()
            .page_listeners
            .push((target, kind, closure));
    }

    fn install_page_listeners(&self) {
        if !self.shared.borrow().page_listeners.is_empty() {
            return;
        }
        let Some(window) = web_sys::window() else {
            return;
        };
        let core_call = |f: fn(&mut core::Client, Instant)| {
            move |shared: &Shared, _event: web_sys::Event| {
                if let Ok(mut d) = shared.try_borrow_mut() {
                    f(&mut d.core, now());
                }
                pump(shared);
            }
        };
        // Back online: try at once instead of waiting out the backoff.
        self.on_page(
            window.clone().into(),
            "online",
            core_call(|c, t| c.reconnect_now(t)),
        );
        self.on_page(
            window.clone().into(),
            "offline",
            core_call(|c, t| c.reconnect_now(t)),
        );
        // Back-forward cache: a page put away loses its socket; a page brought back reconnects at once (the
        // session resumes if the server still holds it).
        self.on_page(window.clone().into(), "pagehide", |shared, event| {
            let persisted = event
                .dyn_ref::<web_sys::PageTransitionEvent>()
                .is_some_and(|e| e.persisted());
            if persisted {
                if let Ok(mut d) = shared.try_borrow_mut() {
                    if let Some(socket) = d.socket.take() {
                        socket.shut();
                    }
                    d.core.handle_transport_closed(
                        "the page went into the back-forward cache",
                        now(),
                    );
                }
                pump(shared);
            }
        });
        self.on_page(window.clone().into(), "pageshow", |shared, event| {
            let persisted = event
                .dyn_ref::<web_sys::PageTransitionEvent>()
                .is_some_and(|e| e.persisted());
            if persisted {
                if let Ok(mut d) = shared.try_borrow_mut() {
                    d.core.reconnect_now(now());
                }
                pump(shared);
            }
        });
        // A hidden tab is the app in the background (away after `backgroundAwayMs`).
        if let Some(document) = window.document() {
            let doc = document.clone();
            self.on_page(document.into(), "visibilitychange", move |shared, _| {
                let hidden = doc.visibility_state() == web_sys::VisibilityState::Hidden;
                if let Ok(mut d) = shared.try_borrow_mut() {
                    if hidden {
                        d.core.app_backgrounded(now());
                    } else {
                        d.core.app_foregrounded(now());
                    }
                }
                pump(shared);
            });
        }
    }
}

#[wasm_bindgen]
impl PresenceClient {
    /// A client with `options`; it does not connect until `connect()`. Throws on invalid options.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "PresenceClientOptions")] options: JsValue,
    ) -> Result<PresenceClient, JsValue> {
        let get_token = js_sys::Reflect::get(&options, &JsValue::from_str("getToken"))
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        let parsed = Options::read(&options)?;
        if !(parsed.url.starts_with("ws://") || parsed.url.starts_with("wss://")) {
            return Err(invalid(format!(
                "url must start with ws:// or wss://, not {}",
                Quoted(&parsed.url)
            )));
        }
        let http_urls = core::protocol::http_binding_urls(&parsed.url)
            .ok_or_else(|| invalid("no HTTP binding URL can be derived from url"))?;
        if parsed.token.is_none() && get_token.is_none() {
            return Err(invalid("give a token or getToken"));
        }
        let mut config = core::ClientConfig::new(parsed.token.clone().unwrap_or_default());
        config.refreshable_token = get_token.is_some();
        config.client_info = core::ClientInfo::new(
            parsed.app_name.unwrap_or_else(|| "presently-web".into()),
            parsed
                .app_version
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
            parsed.platform.unwrap_or_else(|| "browser".into()),
        );
        core::protocol::validate_client_info(&config.client_info).map_err(invalid)?;
        if let Some(ms) = parsed.idle_timeout_ms {
            config.automation.idle_timeout = millis("idleTimeoutMs", ms)?;
        }
        if let Some(ms) = parsed.idle_warning_ms {
            config.automation.idle_warning = millis("idleWarningMs", ms)?;
        }
        if let Some(ms) = parsed.background_away_ms {
            config.automation.background_away_after = millis("backgroundAwayMs", ms)?;
        }
        if parsed.reconnect_base_delay_ms.is_some() || parsed.reconnect_max_delay_ms.is_some() {
            let base = match parsed.reconnect_base_delay_ms {
                Some(ms) => millis("reconnectBaseDelayMs", ms)?.unwrap_or(Duration::from_millis(1)),
                None => config.reconnect.base_delay,
            };
            let max = match parsed.reconnect_max_delay_ms {
                Some(ms) => millis("reconnectMaxDelayMs", ms)?.unwrap_or(Duration::from_millis(1)),
                None => config.reconnect.max_delay,
            };
            if base > max {
                return Err(invalid(
                    "reconnectBaseDelayMs must not exceed reconnectMaxDelayMs",
                ));
            }
            config.reconnect.base_delay = base;
            config.reconnect.max_delay = max;
        }
        config.transport = match parsed.transport.as_deref() {
            None | Some("auto") => core::TransportPolicy::Auto,
            Some("websocket") => core::TransportPolicy::WebSocketOnly,
            Some("sse") => core::TransportPolicy::SseOnly,
            Some(other) => {
                return Err(invalid(format!(
                    "transport must be \"auto\", \"websocket\" or \"sse\", not {}",
                    Quoted(other)
                )));
            }
        };
        if let Some(attempts) = parsed.fallback_after {
            if !(1.0..=100.0).contains(&attempts) || attempts.fract() != 0.0 {
                return Err(invalid(
                    "fallbackAfter must be a whole number from 1 to 100",
                ));
            }
            config.fallback_after = attempts as u32;
        }
        if let Some(ms) = parsed.liveness_grace_ms {
            config.liveness_grace = millis("livenessGraceMs", ms)?.unwrap_or(Duration::ZERO);
        }
        let dnd = parsed.dnd.map(schedule).transpose()?;
        let mut seed = [0u8; 8];
        for byte in &mut seed {
            *byte = (js_sys::Math::random() * 256.0) as u8;
        }
        let mut core = core::Client::new(config, u64::from_le_bytes(seed));
        let t = now();
        core.handle_wall_clock(t, unix_ms());
        // Creating the client is the app starting: idle time counts from here.
        core.handle_activity(t, t);
        if dnd.is_some() {
            core.set_dnd_schedule(dnd, t);
        }
        let client = PresenceClient {
            shared: Rc::new(RefCell::new(Driver {
                core,
                http_urls,
                url: parsed.url,
                socket: None,
                http: None,
                generation: 0,
                timer: None,
                timer_at: None,
                get_token,
                listeners: Listeners::default(),
                connect_waiters: Vec::new(),
                close_waiters: Vec::new(),
                queries: HashMap::new(),
                page_listeners: Vec::new(),
            })),
        };
        pump(&client.shared);
        Ok(client)
    }

    /// Connects; resolves once connected (from then on the client reconnects by itself). Rejects with a
    /// `PresenceError`: `unreachable` if the first attempt failed (retrying goes on), the server's code if it
    /// refused the client (e.g. `invalid_token`), `closed` if `close()` came first.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn connect(&self) -> js_sys::Promise {
        self.install_page_listeners();
        let connected = matches!(
            self.shared.borrow().core.state(),
            core::ConnectionState::Connected { .. }
        );
        if connected {
            return js_sys::Promise::resolve(&JsValue::UNDEFINED);
        }
        let shared = self.shared.clone();
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            shared.borrow_mut().connect_waiters.push((resolve, reject));
        });
        self.with_core(|c, t| c.connect(t));
        promise
    }

    /// Says goodbye to the server (watchers see you offline at once) and stops; resolves when closed.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn close(&self) -> js_sys::Promise {
        let idle = matches!(
            self.shared.borrow().core.state(),
            core::ConnectionState::Idle
                | core::ConnectionState::Closed
                | core::ConnectionState::Failed { .. }
        );
        let shared = self.shared.clone();
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            if idle {
                let _ = resolve.call0(&JsValue::NULL);
            } else {
                shared.borrow_mut().close_waiters.push(resolve);
            }
        });
        self.with_core(|c, t| c.close(t));
        let listeners = std::mem::take(&mut self.shared.borrow_mut().page_listeners);
        for (target, kind, closure) in listeners {
            let _ =
                target.remove_event_listener_with_callback(kind, closure.as_ref().unchecked_ref());
        }
        promise
    }

    /// Sets your status (`invisible` appears offline to others). Kept across reconnects; idle, hidden-tab and DND
    /// rules may override it for a while. Throws on invalid input (e.g. a message over 200 characters).
    #[wasm_bindgen(js_name = setStatus)]
    pub fn set_status(
        &self,
        #[wasm_bindgen(unchecked_param_type = "StatusUpdate")] update: JsValue,
    ) -> Result<(), JsValue> {
        let update = Update::read(&update)?;
        let availability = match update.availability.as_str() {
            "online" => core::Availability::Online,
            "away" => core::Availability::Away,
            "busy" => core::Availability::Busy,
            "invisible" => core::Availability::Invisible,
            other => {
                return Err(invalid(format!(
                    "availability must be online, away, busy or invisible, not {}",
                    Quoted(other)
                )));
            }
        };
        let mut status = core::Status::new(availability);
        status.message = update.message;
        status.activity = update.activity.map(|a| core::Activity {
            kind: a.kind,
            detail: a.detail,
        });
        self.with_core(|c, t| c.set_status(status, t))
            .map_err(invalid)
    }

    /// Watches users; kept across reconnects. Their presence arrives through `onPresence`.
    pub fn subscribe(&self, users: Vec<String>) -> Result<(), JsValue> {
        self.with_core(|c, t| c.subscribe(users, t))
            .map_err(invalid)
    }

    /// Stops watching users.
    pub fn unsubscribe(&self, users: Vec<String>) {
        self.with_core(|c, t| c.unsubscribe(&users, t));
    }

    /// Asks the server once for users' presence without watching them. Rejects with a `PresenceError` when not
    /// connected or when the connection drops first.
    #[wasm_bindgen(unchecked_return_type = "Promise<Presence[]>")]
    pub fn query(&self, users: Vec<String>) -> js_sys::Promise {
        let started = self.with_core(|c, t| c.query(&users, t));
        match started {
            Err(core::QueryError::NotConnected) => {
                js_sys::Promise::reject(&error_value("not_connected", "not connected", false))
            }
            Err(e) => {
                js_sys::Promise::reject(&error_value("invalid_argument", e.to_string(), false))
            }
            Ok(id) => {
                let shared = self.shared.clone();
                js_sys::Promise::new(&mut |resolve, reject| {
                    shared.borrow_mut().queries.insert(id, (resolve, reject));
                })
            }
        }
    }

    /// The user did something. Cheap; `attachActivityListeners` calls it for you.
    #[wasm_bindgen(js_name = recordActivity)]
    pub fn record_activity(&self) {
        self.with_core(|c, t| c.handle_activity(t, t));
    }

    /// Records activity from mouse, keyboard, scroll, touch and focus events on `target` (default: the
    /// window), at most once a second, and from the page becoming visible. Returns a function that detaches
    /// the listeners.
    #[wasm_bindgen(js_name = attachActivityListeners, unchecked_return_type = "() => void")]
    pub fn attach_activity_listeners(&self, target: Option<web_sys::EventTarget>) -> JsValue {
        let target: web_sys::EventTarget =
            match target.or_else(|| web_sys::window().map(Into::into)) {
                Some(target) => target,
                None => return Closure::once_into_js(|| {}),
            };
        let weak = Rc::downgrade(&self.shared);
        let last = Rc::new(RefCell::new(f64::NEG_INFINITY));
        let handler = Closure::<dyn FnMut(web_sys::Event)>::new(move |_event: web_sys::Event| {
            let t = now().as_millis() as f64;
            if t - *last.borrow() < 1_000.0 {
                return;
            }
            *last.borrow_mut() = t;
            if let Some(shared) = weak.upgrade() {
                if let Ok(mut d) = shared.try_borrow_mut() {
                    d.core.handle_activity(now(), now());
                }
                pump(&shared);
            }
        });
        const KINDS: [&str; 8] = [
            "mousemove",
            "mousedown",
            "keydown",
            "wheel",
            "scroll",
            "touchstart",
            "focus",
            "pointerdown",
        ];
        let options = web_sys::AddEventListenerOptions::new();
        options.set_passive(true);
        for kind in KINDS {
            let _ = target.add_event_listener_with_callback_and_add_event_listener_options(
                kind,
                handler.as_ref().unchecked_ref(),
                &options,
            );
        }
        let document = web_sys::window().and_then(|w| w.document());
        if let Some(document) = &document {
            let _ = document.add_event_listener_with_callback(
                "visibilitychange",
                handler.as_ref().unchecked_ref(),
            );
        }
        Closure::once_into_js(move || {
            for kind in KINDS {
                let _ = target
                    .remove_event_listener_with_callback(kind, handler.as_ref().unchecked_ref());
            }
            if let Some(document) = &document {
                let _ = document.remove_event_listener_with_callback(
                    "visibilitychange",
                    handler.as_ref().unchecked_ref(),
                );
            }
            drop(handler);
        })
    }

    /// Replaces the weekly do-not-disturb schedule (`undefined` removes it). Throws on an unknown timezone or
    /// an invalid day or time.
    #[wasm_bindgen(js_name = setDndSchedule)]
    pub fn set_dnd_schedule(
        &self,
        #[wasm_bindgen(unchecked_param_type = "DndSchedule | undefined")] value: JsValue,
    ) -> Result<(), JsValue> {
        let schedule = if value.is_undefined() || value.is_null() {
            None
        } else {
            let parsed = Schedule::read(&value)?;
            Some(schedule(parsed)?)
        };
        self.with_core(|c, t| c.set_dnd_schedule(schedule, t));
        Ok(())
    }

    /// Do not disturb now, for `durationMs` milliseconds, with an optional message.
    #[wasm_bindgen(js_name = snoozeDnd)]
    pub fn snooze_dnd(
        &self,
        #[wasm_bindgen(js_name = durationMs)] duration_ms: f64,
        message: Option<String>,
    ) -> Result<(), JsValue> {
        let duration = millis("durationMs", duration_ms)?
            .ok_or_else(|| invalid("durationMs must be at least 1"))?;
        self.with_core(|c, t| {
            c.snooze_dnd(
                Instant::from_millis(t.as_millis() + duration.as_millis() as u64),
                message,
                t,
            )
        })
        .map_err(invalid)
    }

    /// Ends a snooze early.
    #[wasm_bindgen(js_name = endSnooze)]
    pub fn end_snooze(&self) {
        self.with_core(|c, t| c.end_snooze(t));
    }

    /// Whether do-not-disturb is on now, until when, and when the schedule next turns it on.
    #[wasm_bindgen(js_name = dndState, unchecked_return_type = "DndState")]
    pub fn dnd_state(&self) -> JsValue {
        let state = self.with_core(|core, t| core.dnd_state(t));
        js_object(|object| {
            object
                .bool("active", state.active)
                .opt_str(
                    "source",
                    state.source.map(|s| match s {
                        core::DndSource::Schedule => "schedule",
                        core::DndSource::Snooze => "snooze",
                    }),
                )
                .opt_u64("until", state.until)
                .opt_u64("nextStart", state.next_start)
                .opt_u64("snoozedUntil", state.snoozed_until)
                .opt_str("message", state.message.as_deref());
        })
    }

    /// The connection's state now.
    #[wasm_bindgen(unchecked_return_type = "ConnectionState")]
    pub fn state(&self) -> JsValue {
        state(self.shared.borrow().core.state())
    }

    /// Your own effective status now.
    #[wasm_bindgen(js_name = ownStatus, unchecked_return_type = "OwnStatus")]
    pub fn own_status(&self) -> JsValue {
        let d = self.shared.borrow();
        own_status(d.core.effective_status(), d.core.status_reason())
    }

    /// Every watched user whose presence is known.
    #[wasm_bindgen(unchecked_return_type = "Presence[]")]
    pub fn roster(&self) -> JsValue {
        presence_list(self.shared.borrow().core.roster())
    }

    /// Calls `listener` when a watched user's presence changes or becomes known. Returns a function that removes
    /// it.
    #[wasm_bindgen(js_name = onPresence, unchecked_return_type = "() => void")]
    pub fn on_presence(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(presence: Presence) => void")]
        listener: js_sys::Function,
    ) -> JsValue {
        self.listen(|l| &mut l.presence, listener)
    }

    /// Calls `listener` when your own effective status changes. Returns a function that removes it.
    #[wasm_bindgen(js_name = onOwnStatus, unchecked_return_type = "() => void")]
    pub fn on_own_status(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(status: OwnStatus) => void")]
        listener: js_sys::Function,
    ) -> JsValue {
        self.listen(|l| &mut l.own_status, listener)
    }

    /// Calls `listener` when the connection state changes. Returns a function that removes it.
    #[wasm_bindgen(js_name = onStateChange, unchecked_return_type = "() => void")]
    pub fn on_state_change(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(state: ConnectionState) => void")]
        listener: js_sys::Function,
    ) -> JsValue {
        self.listen(|l| &mut l.state, listener)
    }

    /// Calls `listener` when the server reports an error. Returns a function that removes it.
    #[wasm_bindgen(js_name = onError, unchecked_return_type = "() => void")]
    pub fn on_error(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(error: PresenceError) => void")]
        listener: js_sys::Function,
    ) -> JsValue {
        self.listen(|l| &mut l.error, listener)
    }

    /// Calls `listener` with how many milliseconds remain before going away for idleness ("still there?").
    /// Returns a function that removes it.
    #[wasm_bindgen(js_name = onIdleWarning, unchecked_return_type = "() => void")]
    pub fn on_idle_warning(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(awayInMs: number) => void")]
        listener: js_sys::Function,
    ) -> JsValue {
        self.listen(|l| &mut l.idle_warning, listener)
    }
}

/// The exact shape of every record handed to JavaScript (what `index.d.ts` declares), in headless Chromium.
#[cfg(all(test, target_arch = "wasm32"))]
mod record_shapes {
    use super::*;
    use wasm_bindgen_test::*;

    wasm_bindgen_test_configure!(run_in_browser);

    fn json(value: &JsValue) -> String {
        js_sys::JSON::stringify(value)
            .map(String::from)
            .unwrap_or_default()
    }

    #[wasm_bindgen_test]
    fn presence_records_have_camel_case_fields_and_leave_out_absent_ones() {
        let full = core::Presence {
            message: Some("in a \"session\"\n".to_owned()),
            activity: Some(core::Activity {
                kind: "in_studio".to_owned(),
                detail: Some("Live 12 🎛️".to_owned()),
            }),
            last_active_at: Some(1_700_000_000_000),
            since: Some(5),
            availability: core::Availability::Busy,
            ..core::Presence::unknown("ana")
        };
        assert_eq!(
            json(&presence(&full)),
            r#"{"userId":"ana","availability":"busy","message":"in a \"session\"\n","activity":{"kind":"in_studio","detail":"Live 12 🎛️"},"lastActiveAt":1700000000000,"since":5}"#
        );
        let bare = core::Presence {
            activity: Some(core::Activity {
                kind: "k".to_owned(),
                detail: None,
            }),
            ..core::Presence::unknown("bo")
        };
        let bare_json = json(&presence(&bare));
        assert!(
            bare_json.starts_with(r#"{"userId":"bo","availability":""#)
                && bare_json.ends_with(r#","activity":{"kind":"k"}}"#),
            "{bare_json}"
        );
        assert_eq!(
            json(&presence_list([&full, &bare])),
            format!("[{},{}]", json(&presence(&full)), bare_json)
        );
        assert_eq!(json(&presence_list([])), "[]");
    }

    #[wasm_bindgen_test]
    fn connection_states_are_tagged_by_state() {
        let cases = [
            (core::ConnectionState::Idle, r#"{"state":"idle"}"#),
            (
                core::ConnectionState::Connecting {
                    attempt: 2,
                    transport: core::Transport::WebSocket,
                },
                r#"{"state":"connecting","attempt":2,"transport":"websocket"}"#,
            ),
            (
                core::ConnectionState::Connected {
                    session_id: "s1".to_owned(),
                    transport: core::Transport::Sse,
                },
                r#"{"state":"connected","sessionId":"s1","transport":"sse"}"#,
            ),
            (
                core::ConnectionState::Reconnecting {
                    attempt: 3,
                    retry_at: core::Instant::from_millis(9_000),
                    delay: std::time::Duration::from_millis(1_500),
                    reason: "reset".to_owned(),
                },
                r#"{"state":"reconnecting","attempt":3,"retryInMs":1500,"reason":"reset"}"#,
            ),
            (core::ConnectionState::Closed, r#"{"state":"closed"}"#),
            (
                core::ConnectionState::Failed {
                    code: core::ErrorCode::InvalidToken,
                    message: "bad token".to_owned(),
                },
                r#"{"state":"failed","code":"invalid_token","message":"bad token"}"#,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(json(&state(&value)), expected);
        }
    }

    #[wasm_bindgen_test]
    fn own_status_and_errors_have_their_declared_fields() {
        let status = core::Status::new(core::Availability::Away).with_message("brb");
        assert_eq!(
            json(&own_status(&status, core::StatusReason::Manual)),
            r#"{"availability":"away","message":"brb","reason":"manual"}"#
        );
        assert_eq!(
            json(&error_value("rate_limited", "slow down", false)),
            r#"{"code":"rate_limited","message":"slow down","fatal":false}"#
        );
    }
}
