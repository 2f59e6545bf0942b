// The Kotlin bindings on the JVM against a reference server: connect, watch, status changes, a query, idle
// away and back, a DND snooze, errors, and a listener that throws.
//   java ... MainKt URL TOKEN_ALICE TOKEN_BOB
// Prints what it sees and exits 0 when every step happened.
import dev.presently.*
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.runBlocking

/** Collects what a listener is told, so that the program can wait for it. */
class Recorder : PresenceListener {
    val calls = LinkedBlockingQueue<Any>()
    override fun onStateChanged(state: ConnectionState) { calls.put(state) }
    override fun onPresenceChanged(presence: UserPresence) { calls.put(presence) }
    override fun onOwnStatusChanged(status: OwnStatus) { calls.put(status) }
    override fun onIdleWarning(awayInMs: ULong) { calls.put("idle warning $awayInMs") }
    override fun onIdleWarningCancelled() { calls.put("idle warning cancelled") }
    override fun onError(code: String, message: String, fatal: Boolean) { calls.put("error $code") }

    fun <T> waitFor(what: String, predicate: (Any) -> T?): T {
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20)
        while (true) {
            val left = deadline - System.nanoTime()
            val call = calls.poll(maxOf(left, 0), TimeUnit.NANOSECONDS) ?: error("timed out waiting for $what")
            predicate(call)?.let { println("saw $what"); return it }
        }
    }
}

/** A listener with bugs: every method throws. */
class Throwing : PresenceListener {
    var calls = 0
    private fun boom(): Nothing { calls++; throw IllegalStateException("listener bug") }
    override fun onStateChanged(state: ConnectionState) = boom()
    override fun onPresenceChanged(presence: UserPresence) = boom()
    override fun onOwnStatusChanged(status: OwnStatus) = boom()
    override fun onIdleWarning(awayInMs: ULong) = boom()
    override fun onIdleWarningCancelled() = boom()
    override fun onError(code: String, message: String, fatal: Boolean) = boom()
}

fun presenceOf(user: String, availability: Availability) = { call: Any ->
    (call as? UserPresence)?.takeIf { it.userId == user && it.availability == availability }
}

fun own(availability: Availability, reason: StatusReason) = { call: Any ->
    (call as? OwnStatus)?.takeIf { it.availability == availability && it.reason == reason }
}

fun main(args: Array<String>) = runBlocking {
    val (url, aliceToken, bobToken) = args
    val alice = PresenceClient(PresenceConfig(url = url, token = aliceToken, appName = "kotlin-test",
        platform = "jvm", idleTimeoutMs = 600uL, idleWarningMs = 300uL))
    val bob = PresenceClient(PresenceConfig(url = url, token = bobToken))
    val seen = Recorder()
    val bad = Throwing()
    val handles = listOf(alice.observe(bad), alice.observe(seen))
    seen.waitFor("the current state first") { it as? ConnectionState.Idle }

    alice.subscribe(listOf("bob"))
    alice.connect()
    bob.connect()
    seen.waitFor("connected") { it as? ConnectionState.Connected }
    bob.setStatus(Availability.BUSY, "Mixing", Activity(kind = "in_studio", detail = "Bitwig"))
    val busy = seen.waitFor("bob busy", presenceOf("bob", Availability.BUSY))
    check(busy.message == "Mixing" && busy.activity?.detail == "Bitwig") { "bob's record: $busy" }

    val records = alice.query(listOf("bob", "nobody"))
    check(records.map { it.userId to it.availability }.toSet() ==
        setOf("bob" to Availability.BUSY, "nobody" to Availability.OFFLINE)) { "query: $records" }
    println("query answered: ${records.size} records")

    seen.waitFor("still there?") { (it as? String)?.takeIf { s -> s == "idle warning 300" } }
    seen.waitFor("away for idleness", own(Availability.AWAY, StatusReason.IDLE))
    alice.recordActivity()
    seen.waitFor("back on activity", own(Availability.ONLINE, StatusReason.MANUAL))

    alice.snoozeDnd(60_000uL, "Recording")
    seen.waitFor("busy while snoozed", own(Availability.BUSY, StatusReason.DND))
    alice.endSnooze()
    seen.waitFor("online after the snooze", own(Availability.ONLINE, StatusReason.MANUAL))

    try {
        alice.setStatus(Availability.OFFLINE, null, null)
        error("offline must be refused")
    } catch (e: PresenceException.InvalidArgument) {
        println("refused: ${e.message}")
    }
    try {
        PresenceClient(PresenceConfig(url = url)).query(listOf("bob"))
        error("a query without a connection must fail")
    } catch (e: PresenceException) {
        println("no token: ${e::class.simpleName}")
    }
    check(bad.calls >= 4) { "the throwing listener was called ${bad.calls} times" }
    println("a throwing listener was called ${bad.calls} times and delivery went on")

    handles.forEach { it.cancel() }
    bob.disconnect()
    alice.disconnect()
    check(alice.state() is ConnectionState.Closed)
    println("kotlin ok")
}
