//! Result codes, the per-thread detail of the latest failure, the panic boundary and argument checks.

use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

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
    /// An argument breaks the protocol's rules (too long a message, an empty user id, an unknown timezone, ...).
    InvalidArgument = 3,
    /// The URL is not a ws:// or wss:// URL.
    InvalidUrl = 4,
    /// `presently_client_next_event`: no event is waiting.
    NoEvent = 5,
    /// The library's thread could not be started.
    RuntimeUnavailable = 6,
    /// A bug in the library was caught at the boundary; the call did nothing.
    Panic = 7,
    /// The call needs a connection and there is none yet (e.g. `presently_client_query` before connecting).
    NotConnected = 8,
}

impl PresentlyResult {
    fn description(self) -> &'static str {
        match self {
            PresentlyResult::Ok => "ok",
            PresentlyResult::NullArgument => "a required pointer argument was NULL",
            PresentlyResult::InvalidUtf8 => "a string argument was not valid UTF-8",
            PresentlyResult::InvalidArgument => "an argument breaks the protocol's rules",
            PresentlyResult::InvalidUrl => "the URL is not a ws:// or wss:// URL",
            PresentlyResult::NoEvent => "no event is waiting",
            PresentlyResult::RuntimeUnavailable => "the library's thread could not be started",
            PresentlyResult::Panic => "internal error caught at the library boundary",
            PresentlyResult::NotConnected => "not connected",
        }
    }
}

thread_local! {
    /// The detail of the latest failed call on this thread.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `detail` as this thread's latest failure and returns `code`.
pub(crate) fn fail(code: PresentlyResult, detail: impl Display) -> PresentlyResult {
    let text = format!("{}: {detail}", code.description());
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
    code
}

/// Copies `text` into the caller's buffer as a C string (truncated to `len - 1` bytes, always NUL-terminated when
/// `len > 0`) and returns the full length of `text`.
pub(crate) unsafe fn write_text(text: &str, buf: *mut c_char, len: usize) -> usize {
    if !buf.is_null() && len > 0 {
        let mut n = text.len().min(len - 1);
        // Never cut a UTF-8 sequence in half.
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        // SAFETY: the caller gives `len` writable bytes at `buf`; we write at most `len - 1` plus a NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    text.len()
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
    // SAFETY: as documented, `buf` holds `len` writable bytes.
    unsafe { write_text(result.description(), buf, len) }
}

/// Writes the detail of the latest call on the calling thread that failed (which argument, which rule, e.g.
/// "an argument breaks the protocol's rules: unknown timezone \"Europe/Berln\"") into `buf`, like
/// `presently_result_message`, and returns its full length (0 if no call on this thread has failed). Calls that
/// succeed leave it unchanged. Any thread; never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn presently_last_error_message(buf: *mut c_char, len: usize) -> usize {
    catch_unwind(|| {
        LAST_ERROR.with(|last| {
            let last = last.borrow();
            // SAFETY: as documented, `buf` holds `len` writable bytes.
            unsafe { write_text(&last, buf, len) }
        })
    })
    .unwrap_or(0)
}

/// Runs `f` inside a panic boundary: a panic becomes `PresentlyResult::Panic`, never unwinding into C.
pub(crate) fn boundary(f: impl FnOnce() -> PresentlyResult) -> PresentlyResult {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        fail(PresentlyResult::Panic, why)
    })
}

/// A borrowed, NUL-terminated UTF-8 argument called `name`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, PresentlyResult> {
    if p.is_null() {
        return Err(fail(
            PresentlyResult::NullArgument,
            format!("`{name}` is NULL"),
        ));
    }
    // SAFETY: the caller passes a NUL-terminated string valid for the call.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|e| {
        fail(
            PresentlyResult::InvalidUtf8,
            format!("`{name}` is not UTF-8 ({e})"),
        )
    })
}

/// Like [`str_arg`], but NULL means `None`.
pub(crate) unsafe fn opt_str_arg<'a>(
    p: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, PresentlyResult> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: as for `str_arg`.
        unsafe { str_arg(p, name) }.map(Some)
    }
}

/// A required pointer argument called `name`.
pub(crate) fn non_null<T>(p: *mut T, name: &str) -> Result<*mut T, PresentlyResult> {
    if p.is_null() {
        Err(fail(
            PresentlyResult::NullArgument,
            format!("`{name}` is NULL"),
        ))
    } else {
        Ok(p)
    }
}

/// Turns an error of the Rust client into a result code, keeping its text as the detail.
pub(crate) fn from_sdk(result: Result<(), presently_sdk::Error>) -> PresentlyResult {
    match result {
        Ok(()) => PresentlyResult::Ok,
        Err(e) => {
            let code = match &e {
                presently_sdk::Error::InvalidUrl { .. } => PresentlyResult::InvalidUrl,
                presently_sdk::Error::NotConnected => PresentlyResult::NotConnected,
                _ => PresentlyResult::InvalidArgument,
            };
            fail(code, e)
        }
    }
}

/// Runs `f`, which reports failures as `Err(code)`, inside a panic boundary.
pub(crate) fn guarded(f: impl FnOnce() -> Result<(), PresentlyResult>) -> PresentlyResult {
    boundary(|| match f() {
        Ok(()) => PresentlyResult::Ok,
        Err(code) => code,
    })
}
