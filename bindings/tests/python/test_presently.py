"""The Python bindings as an app uses them, against a real reference server."""

import asyncio
import threading

import pytest

import presently
from conftest import Recorder, connected, own, presence_of

A = presently.Availability
R = presently.StatusReason


def test_connect_watch_status_changes_and_query(server):
    async def scenario():
        alice = presently.PresenceClient(server.config("alice", app_name="py-test", platform="python"))
        # Bob uses HTTP + Server-Sent Events (as behind a proxy that blocks WebSockets): same truth for both.
        bob = presently.PresenceClient(server.config("bob", transport=presently.TransportPolicy.SSE_ONLY))
        seen = Recorder()
        handle = alice.observe(seen)
        # The current state comes first.
        assert seen.wait_for(lambda c: c[0] == "state", "the current state")[1] == presently.ConnectionState.IDLE()
        alice.subscribe(["bob", "carol"])
        await alice.connect()
        await bob.connect()
        seen.wait_for(connected, "connected")
        assert isinstance(alice.state(), presently.ConnectionState.CONNECTED)
        assert alice.state().transport == presently.Transport.WEB_SOCKET
        assert bob.state().transport == presently.Transport.SSE
        seen.wait_for(presence_of("carol", A.OFFLINE), "carol offline")

        bob.set_status(A.BUSY, "Mixing", presently.Activity(kind="in_studio", detail="Logic Pro"))
        call = seen.wait_for(presence_of("bob", A.BUSY), "bob busy")
        assert call[1].message == "Mixing"
        assert call[1].activity == presently.Activity(kind="in_studio", detail="Logic Pro")
        assert call[1].last_active_at_ms > 1_600_000_000_000

        bob.set_status(A.INVISIBLE, None, None)
        seen.wait_for(presence_of("bob", A.OFFLINE), "invisible bob looks offline")
        bob.set_status(A.ONLINE, None, None)
        seen.wait_for(presence_of("bob", A.ONLINE), "bob online")
        assert {p.user_id for p in alice.roster()} == {"bob", "carol"}

        records = await alice.query(["bob", "dave", "bob"])
        assert sorted((p.user_id, p.availability) for p in records) == [("bob", A.ONLINE), ("dave", A.OFFLINE)]

        alice.unsubscribe(["carol"])
        handle.cancel()
        assert handle.is_cancelled()
        await bob.close()
        await alice.close()
        assert alice.state() == presently.ConnectionState.CLOSED()

    asyncio.run(scenario())


def test_idle_goes_away_with_a_warning_and_activity_brings_it_back(server):
    async def scenario():
        client = presently.PresenceClient(server.config("erin", idle_timeout_ms=400, idle_warning_ms=200))
        watcher = presently.PresenceClient(server.config("frank"))
        mine, theirs = Recorder(), Recorder()
        keep = [client.observe(mine), watcher.observe(theirs)]
        watcher.subscribe(["erin"])
        await watcher.connect()
        await client.connect()
        assert mine.wait_for(lambda c: c[0] == "idle_warning", "still there?")[1] == 200
        mine.wait_for(own(A.AWAY, R.IDLE), "away for idleness")
        theirs.wait_for(presence_of("erin", A.AWAY), "the watcher sees away")
        client.record_activity()
        mine.wait_for(own(A.ONLINE, R.MANUAL), "back online on activity")
        theirs.wait_for(presence_of("erin", A.ONLINE), "the watcher sees online")
        await client.close()
        await watcher.close()
        del keep

    asyncio.run(scenario())


def test_background_away_and_foreground_back(server):
    async def scenario():
        client = presently.PresenceClient(server.config("gina", background_away_ms=100))
        mine = Recorder()
        handle = client.observe(mine)
        await client.connect()
        client.app_backgrounded()
        mine.wait_for(own(A.AWAY, R.LIFECYCLE), "away in the background")
        client.app_foregrounded()
        mine.wait_for(own(A.ONLINE, R.MANUAL), "back in the foreground")
        client.network_changed()
        await client.close()
        handle.cancel()

    asyncio.run(scenario())


def test_dnd_snooze_and_schedule(server):
    async def scenario():
        client = presently.PresenceClient(server.config("hana"))
        watcher = presently.PresenceClient(server.config("ivan"))
        mine, theirs = Recorder(), Recorder()
        keep = [client.observe(mine), watcher.observe(theirs)]
        watcher.subscribe(["hana"])
        await client.connect()
        await watcher.connect()
        client.snooze_dnd(60_000, "Recording")
        status = mine.wait_for(own(A.BUSY, R.DND), "busy while snoozed")[1]
        assert status.message == "Recording"
        call = theirs.wait_for(presence_of("hana", A.BUSY), "the watcher sees busy")
        assert call[1].message == "Recording"
        client.end_snooze()
        mine.wait_for(own(A.ONLINE, R.MANUAL), "online after the snooze")

        # A schedule that is always on (every day, 00:00 to 23:59 and 23:59 to 00:00).
        always = presently.DndSchedule(
            timezone="Asia/Tokyo",
            windows=[
                presently.DndWindow(days="daily", start="00:00", end="23:59"),
                presently.DndWindow(days="daily", start="23:59", end="00:00"),
            ],
            message="Quiet hours",
        )
        client.set_dnd_schedule(always)
        assert mine.wait_for(own(A.BUSY, R.DND), "busy in quiet hours")[1].message == "Quiet hours"
        client.set_dnd_schedule(None)
        mine.wait_for(own(A.ONLINE, R.MANUAL), "online without a schedule")

        with pytest.raises(presently.PresenceError.InvalidArgument) as error:
            client.set_dnd_schedule(presently.DndSchedule(timezone="Europe/Berln", windows=always.windows))
        assert "Europe/Berln" in str(error.value)
        with pytest.raises(presently.PresenceError.InvalidArgument):
            client.set_dnd_schedule(
                presently.DndSchedule(timezone="UTC", windows=[presently.DndWindow(days="daily", start="25:00", end="07:00")])
            )
        with pytest.raises(presently.PresenceError.InvalidArgument):
            client.snooze_dnd(0, None)
        await client.close()
        await watcher.close()
        del keep

    asyncio.run(scenario())


def test_reconnects_after_the_server_restarts_and_restores_everything(server):
    async def scenario():
        alice = presently.PresenceClient(server.config("alice"))
        bob = presently.PresenceClient(server.config("bob"))
        seen = Recorder()
        handle = alice.observe(seen)
        alice.subscribe(["bob"])
        await alice.connect()
        await bob.connect()
        bob.set_status(A.BUSY, "Tracking", None)
        seen.wait_for(presence_of("bob", A.BUSY), "bob busy")

        server.stop()
        seen.wait_for(lambda c: c[0] == "state" and isinstance(c[1], presently.ConnectionState.RECONNECTING), "reconnecting")
        server.start()
        seen.wait_for(connected, "connected again")
        # The new server process knew nothing: Bob's client re-asserted his status, Alice's her subscription.
        call = seen.wait_for(presence_of("bob", A.BUSY), "bob busy again")
        assert call[1].message == "Tracking"
        records = await alice.query(["bob"])
        assert records[0].availability == A.BUSY
        await bob.close()
        await alice.close()
        handle.cancel()

    asyncio.run(scenario())


class Throwing(presently.PresenceListener):
    """A listener that raises from every method, counting the calls."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def _boom(self):
        with self.lock:
            self.calls += 1
        raise RuntimeError("listener bug")

    def on_state_changed(self, state):
        self._boom()

    def on_presence_changed(self, presence):
        self._boom()

    def on_own_status_changed(self, status):
        self._boom()

    def on_idle_warning(self, away_in_ms):
        self._boom()

    def on_idle_warning_cancelled(self):
        self._boom()

    def on_error(self, code, message, fatal):
        self._boom()


def test_a_listener_that_raises_does_not_break_the_client(server):
    async def scenario():
        alice = presently.PresenceClient(server.config("alice"))
        bob = presently.PresenceClient(server.config("bob"))
        bad, good = Throwing(), Recorder()
        keep = [alice.observe(bad), alice.observe(good)]
        alice.subscribe(["bob"])
        await alice.connect()
        await bob.connect()
        bob.set_status(A.BUSY, None, None)
        good.wait_for(presence_of("bob", A.BUSY), "bob busy")
        bob.set_status(A.AWAY, None, None)
        good.wait_for(presence_of("bob", A.AWAY), "bob away: delivery went on")
        # The raising listener kept being called, and the client still works.
        assert bad.calls >= 4
        alice.set_status(A.BUSY, "still fine", None)
        assert (await alice.query(["bob"]))[0].availability == A.AWAY
        await bob.close()
        await alice.close()
        del keep

    asyncio.run(scenario())


def test_a_cancelled_or_dropped_observation_stops_delivery(server):
    async def scenario():
        alice = presently.PresenceClient(server.config("alice"))
        bob = presently.PresenceClient(server.config("bob"))
        kept, cancelled, dropped = Recorder(), Recorder(), Recorder()
        keep = alice.observe(kept)
        alice.observe(cancelled).cancel()
        alice.observe(dropped)  # the handle is dropped at once
        alice.subscribe(["bob"])
        await alice.connect()
        await bob.connect()
        bob.set_status(A.BUSY, None, None)
        kept.wait_for(presence_of("bob", A.BUSY), "bob busy")
        for recorder in (cancelled, dropped):
            assert not any(c[0] == "presence" for c in recorder.calls), recorder.calls
        await bob.close()
        await alice.close()
        keep.cancel()

    asyncio.run(scenario())


class Tokens(presently.TokenProvider):
    def __init__(self, server, user):
        self.server, self.user, self.asked = server, user, 0

    def fetch_token(self):
        self.asked += 1
        return self.server.token(self.user)


def test_a_token_provider_is_asked_before_every_connection(server):
    async def scenario():
        tokens = Tokens(server, "judy")
        config = presently.PresenceConfig(url=server.url, reconnect_base_delay_ms=100, reconnect_max_delay_ms=500)
        client = presently.PresenceClient.with_token_provider(config, tokens)
        seen = Recorder()
        handle = client.observe(seen)
        await client.connect()
        assert tokens.asked == 1
        server.stop()
        server.start()
        seen.wait_for(connected, "connected")
        seen.wait_for(connected, "connected again after the restart")
        assert tokens.asked >= 2
        await client.close()
        handle.cancel()

    asyncio.run(scenario())


def test_errors_are_one_small_enum(server):
    async def scenario():
        with pytest.raises(presently.PresenceError.InvalidArgument):
            presently.PresenceClient(presently.PresenceConfig(url="http://example.com", token="t"))
        with pytest.raises(presently.PresenceError.InvalidArgument):
            presently.PresenceClient(presently.PresenceConfig(url=server.url))
        client = presently.PresenceClient(server.config("kim"))
        with pytest.raises(presently.PresenceError.NotConnected):
            await client.query(["bob"])
        with pytest.raises(presently.PresenceError.InvalidArgument):
            client.set_status(A.OFFLINE, None, None)
        with pytest.raises(presently.PresenceError.InvalidArgument):
            client.set_status(A.BUSY, "x" * 201, None)
        with pytest.raises(presently.PresenceError.InvalidArgument):
            client.subscribe([""])
        rejected = presently.PresenceClient(presently.PresenceConfig(url=server.url, token="not a token"))
        with pytest.raises(presently.PresenceError.Rejected) as error:
            await rejected.connect()
        assert error.value.code == "invalid_token"
        assert isinstance(rejected.state(), presently.ConnectionState.FAILED)

    asyncio.run(scenario())
