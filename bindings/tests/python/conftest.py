"""Fixtures for the Python suite: a reference server in a subprocess (restartable on the same port), tokens, and a
listener that records what it is told.

Run by `cargo test -p presently-bindings --test python`, which builds the library, generates the bindings and
sets PYTHONPATH and PRESENTLY_SERVER_BIN.
"""

import os
import socket
import subprocess
import threading
import time

import pytest

import presently

SECRET = "python suite secret, at least 16 bytes"
WAIT_S = 20.0  # generous: waits end as soon as what they wait for happens


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A presently-server process on a fixed port, which a test can stop and start again."""

    def __init__(self, binary):
        self.binary = binary
        self.port = free_port()
        self.process = None
        self.url = f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self):
        env = dict(os.environ, PRESENTLY_SECRET=SECRET)
        self.process = subprocess.Popen(
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("presently-server exited at start")
                time.sleep(0.02)
        raise RuntimeError("presently-server did not listen in time")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def token(self, user):
        return subprocess.run(
            [self.binary, "token", "--user", user, "--secret", SECRET],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def config(self, user, **settings):
        settings.setdefault("reconnect_base_delay_ms", 100)
        settings.setdefault("reconnect_max_delay_ms", 1000)
        return presently.PresenceConfig(url=self.url, token=self.token(user), **settings)


@pytest.fixture
def server():
    binary = os.environ.get("PRESENTLY_SERVER_BIN")
    if not binary:
        pytest.fail("PRESENTLY_SERVER_BIN is not set: run through cargo test -p presently-bindings --test python")
    s = Server(binary)
    s.start()
    yield s
    s.stop()


class Recorder(presently.PresenceListener):
    """Records every call, in order, and lets a test wait for one."""

    def __init__(self):
        self.calls = []
        self.changed = threading.Condition()

    def _record(self, *call):
        with self.changed:
            self.calls.append(call)
            self.changed.notify_all()

    def on_state_changed(self, state):
        self._record("state", state)

    def on_presence_changed(self, presence):
        self._record("presence", presence)

    def on_own_status_changed(self, status):
        self._record("own", status)

    def on_idle_warning(self, away_in_ms):
        self._record("idle_warning", away_in_ms)

    def on_idle_warning_cancelled(self):
        self._record("idle_warning_cancelled")

    def on_error(self, code, message, fatal):
        self._record("error", code, message, fatal)

    def wait_for(self, predicate, what, timeout=WAIT_S):
        """Waits until a recorded call satisfies `predicate`; returns it. Calls seen are consumed."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                while self.calls:
                    call = self.calls.pop(0)
                    if predicate(call):
                        return call
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.changed.wait(left)


def presence_of(user, availability):
    return lambda c: c[0] == "presence" and c[1].user_id == user and c[1].availability == availability


def own(availability, reason=None):
    return lambda c: c[0] == "own" and c[1].availability == availability and (reason is None or c[1].reason == reason)


def connected(c):
    return c[0] == "state" and isinstance(c[1], presently.ConnectionState.CONNECTED)
