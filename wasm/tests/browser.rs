//! The browser driver in headless Chromium (wasm-bindgen-test): options, errors, listeners, activity
//! listeners and a real WebSocket attempt. Run by `cargo test -p presently-wasm --target wasm32-unknown-unknown`
//! (scripts/test installs the runner and Chromium).
#![cfg(target_arch = "wasm32")]

use presently_wasm::PresenceClient;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn options(json: &str) -> JsValue {
    js_sys::JSON::parse(json).expect("test JSON")
}

fn get(value: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(value, &JsValue::from_str(key)).expect("a property")
}

fn message_of(error: JsValue) -> String {
    error
        .dyn_into::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_default()
}

#[wasm_bindgen_test]
fn a_new_client_is_idle_and_online_by_choice() {
    let client = PresenceClient::new(options(r#"{"url":"ws://127.0.0.1:9/v1/ws","token":"t"}"#))
        .expect("valid options");
    assert_eq!(get(&client.state(), "state"), "idle");
    let own = client.own_status();
    assert_eq!(get(&own, "availability"), "online");
    assert_eq!(get(&own, "reason"), "manual");
    assert_eq!(js_sys::Array::from(&client.roster()).length(), 0);
}

#[wasm_bindgen_test]
fn bad_options_and_input_throw_clear_errors() {
    for (json, expected) in [
        (r#"{"url":"http://x/v1/ws","token":"t"}"#, "ws:// or wss://"),
        (r#"{"url":"ws://x/v1/ws"}"#, "token"),
        (
            r#"{"url":"ws://x/v1/ws","token":"t","idleTimeoutMs":-5}"#,
            "idleTimeoutMs",
        ),
        (
            r#"{"url":"ws://x/v1/ws","token":"t","dnd":{"timezone":"Europe/Berln","windows":[{"days":"daily","start":"22:00","end":"07:00"}]}}"#,
            "Europe/Berln",
        ),
        (
            r#"{"url":"ws://x/v1/ws","token":"t","dnd":{"timezone":"UTC","windows":[{"days":"daily","start":"25:00","end":"07:00"}]}}"#,
            "25:00",
        ),
        (
            r#"{"url":"ws://x/v1/ws","token":"t","transport":"carrier-pigeon"}"#,
            "carrier-pigeon",
        ),
        // Fields of the wrong type, or missing, are named.
        (r#"{"token":"t"}"#, "options.url is required"),
        (r#"{"url":5,"token":"t"}"#, "options.url must be a string"),
        (
            r#"{"url":"ws://x/v1/ws","token":"t","idleTimeoutMs":"5"}"#,
            "options.idleTimeoutMs must be a number",
        ),
        (
            r#"{"url":"ws://x/v1/ws","token":"t","dnd":{"timezone":"UTC","windows":{}}}"#,
            "dnd.windows must be an array",
        ),
        (
            r#"{"url":"ws://x/v1/ws","token":"t","dnd":{"timezone":"UTC","windows":[{"days":"daily","start":"22:00"}]}}"#,
            "window.end is required",
        ),
        ("7", "options must be an object"),
    ] {
        let error = PresenceClient::new(options(json)).err().expect(json);
        let message = message_of(error);
        assert!(message.contains(expected), "{json}: {message}");
    }
    let client =
        PresenceClient::new(options(r#"{"url":"ws://127.0.0.1:9/v1/ws","token":"t"}"#)).unwrap();
    let long = "x".repeat(201);
    let error = client
        .set_status(options(&format!(
            r#"{{"availability":"busy","message":"{long}"}}"#
        )))
        .unwrap_err();
    assert!(message_of(error).contains("200"));
    assert!(
        client
            .set_status(options(r#"{"availability":"offline"}"#))
            .is_err()
    );
    for (json, expected) in [
        ("\"busy\"", "status must be an object"),
        (r#"{"message":"m"}"#, "status.availability is required"),
        (
            r#"{"availability":"busy","activity":{"detail":"Live"}}"#,
            "activity.kind is required",
        ),
    ] {
        let message = message_of(client.set_status(options(json)).unwrap_err());
        assert!(message.contains(expected), "{json}: {message}");
    }
    // `null` and absent optional fields are the same.
    client
        .set_status(options(
            r#"{"availability":"busy","message":null,"activity":null}"#,
        ))
        .unwrap();
    assert!(client.subscribe(vec![String::new()]).is_err());
    assert!(client.snooze_dnd(0.0, None).is_err());
}

#[wasm_bindgen_test]
fn own_status_listeners_hear_changes_and_can_be_removed() {
    let client =
        PresenceClient::new(options(r#"{"url":"ws://127.0.0.1:9/v1/ws","token":"t"}"#)).unwrap();
    let seen = js_sys::Array::new();
    let record = {
        let seen = seen.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |status: JsValue| {
            seen.push(&get(&status, "availability"));
        })
    };
    let remove = client.on_own_status(record.as_ref().clone().unchecked_into());
    client
        .set_status(options(r#"{"availability":"busy","message":"Mixing"}"#))
        .unwrap();
    client
        .snooze_dnd(60_000.0, Some("Recording".into()))
        .unwrap();
    client.end_snooze();
    remove
        .unchecked_ref::<js_sys::Function>()
        .call0(&JsValue::NULL)
        .unwrap();
    client
        .set_status(options(r#"{"availability":"away"}"#))
        .unwrap();
    let seen: Vec<String> = seen.iter().filter_map(|v| v.as_string()).collect();
    // Busy by choice; the snooze keeps it busy (with its message), ending it changes nothing visible; the
    // listener was removed before "away".
    assert_eq!(seen.first().map(String::as_str), Some("busy"), "{seen:?}");
    assert!(!seen.iter().any(|s| s == "away"), "{seen:?}");
    drop(record);
}

#[wasm_bindgen_test]
fn dnd_schedules_in_any_timezone_are_accepted() {
    let client =
        PresenceClient::new(options(r#"{"url":"ws://127.0.0.1:9/v1/ws","token":"t"}"#)).unwrap();
    for zone in [
        "America/St_Johns",
        "Asia/Kathmandu",
        "Pacific/Chatham",
        "Australia/Lord_Howe",
        "UTC",
    ] {
        let schedule = format!(
            r#"{{"timezone":"{zone}","windows":[{{"days":"weekdays","start":"22:00","end":"07:00"}}],"message":"Quiet"}}"#
        );
        client.set_dnd_schedule(options(&schedule)).expect(zone);
    }
    client.set_dnd_schedule(JsValue::UNDEFINED).unwrap();
}

/// The local "HH:MM" of `unix_ms` in `zone`, by the browser's Intl (independently of the client).
fn local_time(zone: &str, unix_ms: f64) -> String {
    let options = options(&format!(
        r#"{{"timeZone":"{zone}","hourCycle":"h23","hour":"2-digit","minute":"2-digit"}}"#
    ));
    let format = js_sys::Intl::DateTimeFormat::new(
        &js_sys::Array::of1(&"en-GB".into()),
        &options.unchecked_into(),
    );
    let date = js_sys::Date::new(&JsValue::from_f64(unix_ms));
    format
        .format()
        .call1(&format, &date)
        .unwrap()
        .as_string()
        .unwrap()
}

#[wasm_bindgen_test]
fn quiet_hours_follow_each_zone_by_the_browsers_timezone_database() {
    let client =
        PresenceClient::new(options(r#"{"url":"ws://127.0.0.1:9/v1/ws","token":"t"}"#)).unwrap();
    // Zones with odd offsets, DST in either hemisphere and half-hour DST.
    for zone in [
        "Europe/Berlin",
        "America/St_Johns",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
    ] {
        let schedule = format!(
            r#"{{"timezone":"{zone}","windows":[{{"days":"daily","start":"22:15","end":"06:45"}}]}}"#
        );
        client.set_dnd_schedule(options(&schedule)).expect(zone);
        let state = client.dnd_state();
        let edge = if get(&state, "active").as_bool().unwrap() {
            (get(&state, "until"), "06:45")
        } else {
            (get(&state, "nextStart"), "22:15")
        };
        let at = edge.0.as_f64().expect("a transition instant");
        assert_eq!(local_time(zone, at), edge.1, "{zone}: {state:?}");
        let now = js_sys::Date::now();
        assert!(
            at > now && at <= now + 25.0 * 3_600_000.0,
            "{zone}: within a day"
        );
    }
}

#[wasm_bindgen_test]
async fn idle_goes_away_and_activity_listeners_bring_it_back_until_detached() {
    let client = PresenceClient::new(options(
        r#"{"url":"ws://127.0.0.1:9/v1/ws","token":"t","idleTimeoutMs":100}"#,
    ))
    .unwrap();
    let availability = |client: &PresenceClient| get(&client.own_status(), "availability");
    let target: web_sys::EventTarget = web_sys::window().unwrap().document().unwrap().into();
    let detach = client.attach_activity_listeners(Some(target.clone()));
    gloo_timers::future::TimeoutFuture::new(250).await;
    assert_eq!(availability(&client), "away", "idle after 100 ms");
    assert_eq!(get(&client.own_status(), "reason"), "idle");
    target
        .dispatch_event(&web_sys::Event::new("keydown").unwrap())
        .unwrap();
    assert_eq!(availability(&client), "online", "a key brings it back");
    detach
        .unchecked_ref::<js_sys::Function>()
        .call0(&JsValue::NULL)
        .unwrap();
    gloo_timers::future::TimeoutFuture::new(1_250).await;
    assert_eq!(availability(&client), "away");
    target
        .dispatch_event(&web_sys::Event::new("keydown").unwrap())
        .unwrap();
    assert_eq!(
        availability(&client),
        "away",
        "detached: keys no longer count"
    );
}

#[wasm_bindgen_test]
async fn an_unreachable_server_rejects_connect_and_the_client_keeps_retrying() {
    // Port 9 (discard) refuses connections on loopback: a real WebSocket attempt that fails.
    let client = PresenceClient::new(options(
        r#"{"url":"ws://127.0.0.1:9/v1/ws","token":"t","reconnectBaseDelayMs":50,"reconnectMaxDelayMs":100}"#,
    ))
    .unwrap();
    let states = js_sys::Array::new();
    let record = {
        let states = states.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |state: JsValue| {
            states.push(&get(&state, "state"));
        })
    };
    let _remove = client.on_state_change(record.as_ref().clone().unchecked_into());
    let error = JsFuture::from(client.connect()).await.unwrap_err();
    assert_eq!(get(&error, "code"), "unreachable");
    assert_eq!(get(&client.state(), "state"), "reconnecting");
    let query = JsFuture::from(client.query(vec!["bob".into()]))
        .await
        .unwrap_err();
    assert_eq!(get(&query, "code"), "not_connected");
    JsFuture::from(client.close()).await.unwrap();
    assert_eq!(get(&client.state(), "state"), "closed");
    let states: Vec<String> = states.iter().filter_map(|v| v.as_string()).collect();
    assert!(
        states.starts_with(&["connecting".into(), "reconnecting".into()]),
        "{states:?}"
    );
    drop(record);
}
