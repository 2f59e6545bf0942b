//! libpresently: the C ABI of Presently.
//!
//! Conventions (also in the generated header):
//! - Handles are opaque pointers created by `presently_*_new` (or returned by `presently_client_next_event`) and
//!   freed by the matching `presently_*_free`. Strings passed in are borrowed for the duration of the call and
//!   must be UTF-8 and NUL-terminated. Strings returned by event accessors belong to the event and stay valid
//!   until `presently_event_free` (or, in an event callback, until the callback returns).
//! - Every function returns a `PresentlyResult` (or a value with a documented "nothing" case), never unwinds into
//!   C (each entry point runs inside a panic boundary), and answers NULL or non-UTF-8 arguments with a result
//!   code; `presently_last_error_message` then says which argument and which rule.
//! - Nothing blocks on the network: connecting, sending and reconnecting happen on the library's own thread, which
//!   starts with the first client and stops when the last client is freed.
#![allow(clippy::missing_safety_doc)] // The safety contract is the header's documentation of each function.

mod client;
mod config;
mod error;
mod event;

use std::ffi::{CStr, c_char};

const VERSION: &CStr = c"0.1.0";

/// The library's version, e.g. "0.1.0" (the same as `PRESENTLY_VERSION_*`). Any thread; never blocks. The string
/// is static: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn presently_version() -> *const c_char {
    VERSION.as_ptr()
}
