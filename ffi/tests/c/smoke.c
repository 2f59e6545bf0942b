/* libpresently from C: argument checks, configuration, a status change seen by other clients (polled, pushed,
 * woken), a shared connection, queries, DND and a token callback; or (--cycles) 1020 create/connect/free cycles.
 * Usage: smoke URL TOKEN_ALICE TOKEN_BOB TOKEN_FRANK | smoke --cycles URL TOKEN. Exits 0 on success; the
 * tests run it under AddressSanitizer and under valgrind. */
#define _DEFAULT_SOURCE
#include "presently.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define CHECK(cond, ...)                                             \
  do {                                                               \
    if (!(cond)) {                                                   \
      char detail_[256];                                             \
      presently_last_error_message(detail_, sizeof detail_);         \
      fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);         \
      fprintf(stderr, __VA_ARGS__);                                  \
      fprintf(stderr, " (last error: %s)\n", detail_);               \
      return 1;                                                      \
    }                                                                \
  } while (0)

#define OK(call) CHECK((call) == PRESENTLY_RESULT_OK, "%s", #call)

static void pause_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static int last_error_contains(const char *needle) {
  char detail[256];
  presently_last_error_message(detail, sizeof detail);
  return strstr(detail, needle) != NULL;
}

/* Pushed events: called on the library's thread. */
static atomic_int pushed_bob_busy;
static void on_event(void *user_data, const PresentlyEvent *event) {
  atomic_int *counter = user_data;
  if (presently_event_kind(event) == PRESENTLY_EVENT_KIND_PRESENCE_CHANGED &&
      strcmp(presently_event_user_id(event), "bob") == 0 &&
      presently_event_availability(event) == PRESENTLY_AVAILABILITY_BUSY) {
    atomic_fetch_add(counter, 1);
  }
}

/* Wake-ups for polling hosts: called on the library's thread. */
static atomic_int wakes;
static void on_wake(void *user_data) { atomic_fetch_add((atomic_int *)user_data, 1); }

/* Bob's token comes from a callback, asked before every connection attempt (on a library thread). */
static atomic_int token_asks;
static size_t bob_token(void *user_data, char *buf, size_t len) {
  const char *token = user_data;
  size_t n = strlen(token);
  atomic_fetch_add(&token_asks, 1);
  if (n <= len) memcpy(buf, token, n);
  return n;
}

/* Several host threads at once, as a plugin's audio and UI threads are. */
static void *hammer(void *client) {
  for (int i = 0; i < 10000; i++) {
    presently_client_record_activity(client);
  }
  return NULL;
}

/* Threads of this process (Linux: /proc/self/task), or -1 where that cannot be read. */
static int thread_count(void) {
  DIR *dir = opendir("/proc/self/task");
  if (!dir) return -1;
  int n = 0;
  struct dirent *entry;
  while ((entry = readdir(dir)) != NULL) n += entry->d_name[0] != '.';
  closedir(dir);
  return n;
}

/* The thread count once it reaches `expected`, or after a second. A joined thread can still be listed for a
 * moment: the kernel wakes the joiner before it removes the thread from /proc. */
static int settled_thread_count(int expected) {
  int n = thread_count();
  for (int waited = 0; n != expected && n != -1 && waited < 1000; waited += 10) {
    pause_ms(10);
    n = thread_count();
  }
  return n;
}

/* How long a test waits for an event before it fails, in milliseconds: generous, because valgrind and a busy
 * machine slow everything down; waits end as soon as the event arrives. */
#define WAIT_MS 60000

/* Drains `client` for up to `ms` until `done` says so; each event goes through `seen`. */
typedef int (*Seen)(const PresentlyEvent *event, void *state);
static int drain_until(PresentlyClient *client, Seen seen, void *state, int ms) {
  /* The last events seen, printed if the wait fails: what the client did get tells why. */
  char trail[16][96];
  int seen_count = 0;
  for (int waited = 0; waited <= ms; waited += 10) {
    PresentlyEvent *event = NULL;
    while (presently_client_next_event(client, &event) == PRESENTLY_RESULT_OK) {
      const char *user = presently_event_user_id(event);
      snprintf(trail[seen_count % 16], sizeof trail[0], "kind %d user %s state %d query %llu",
               (int)presently_event_kind(event), user ? user : "-", (int)presently_event_connection_state(event),
               (unsigned long long)presently_event_query_id(event));
      seen_count++;
      int done = seen(event, state);
      presently_event_free(event);
      if (done) return 1;
    }
    pause_ms(10);
  }
  fprintf(stderr, "waited %d ms; client state %d; %d events seen, the last ones:\n", ms,
          (int)presently_client_state(client), seen_count);
  for (int i = seen_count > 16 ? seen_count - 16 : 0; i < seen_count; i++) fprintf(stderr, "  %s\n", trail[i % 16]);
  return 0;
}

static int is_connected(const PresentlyEvent *event, void *state) {
  (void)state;
  return presently_event_kind(event) == PRESENTLY_EVENT_KIND_STATE_CHANGED &&
         presently_event_connection_state(event) == PRESENTLY_CONNECTION_STATE_CONNECTED;
}

static int bob_is_busy(const PresentlyEvent *event, void *state) {
  int *checked = state;
  if (presently_event_kind(event) != PRESENTLY_EVENT_KIND_PRESENCE_CHANGED ||
      strcmp(presently_event_user_id(event), "bob") != 0 ||
      presently_event_availability(event) != PRESENTLY_AVAILABILITY_BUSY) {
    return 0;
  }
  const char *message = presently_event_message(event);
  const char *detail = presently_event_activity_detail(event);
  *checked = message && strcmp(message, "Mixing") == 0 && detail && strcmp(detail, "Ableton Live 12") == 0 &&
             presently_event_last_active_ms(event) > 1600000000000ULL;
  printf("sees bob: busy \"%s\" (%s: %s)\n", message, presently_event_activity_kind(event), detail);
  return 1;
}

struct QueryState {
  uint64_t id;
  int bob_busy, offline_nobody, completed_ok;
};
static int query_answer(const PresentlyEvent *event, void *state) {
  struct QueryState *q = state;
  if (presently_event_query_id(event) != q->id) return 0;
  if (presently_event_kind(event) == PRESENTLY_EVENT_KIND_QUERY_RESULT) {
    const char *user = presently_event_user_id(event);
    PresentlyAvailability a = presently_event_availability(event);
    if (strcmp(user, "bob") == 0 && a == PRESENTLY_AVAILABILITY_BUSY) q->bob_busy = 1;
    if (strcmp(user, "nobody") == 0 && a == PRESENTLY_AVAILABILITY_OFFLINE) q->offline_nobody = 1;
  }
  if (presently_event_kind(event) == PRESENTLY_EVENT_KIND_QUERY_COMPLETED) {
    q->completed_ok = presently_event_error_code(event) == NULL;
    return 1;
  }
  return 0;
}

static int own_busy_dnd(const PresentlyEvent *event, void *state) {
  (void)state;
  const char *message = presently_event_message(event);
  return presently_event_kind(event) == PRESENTLY_EVENT_KIND_OWN_STATUS_CHANGED &&
         presently_event_availability(event) == PRESENTLY_AVAILABILITY_BUSY && message &&
         strcmp(message, "Tracking vocals") == 0;
}

/* Plugin load/unload with `config`: create, connect and free a client 1000 times (the connection is usually not
 * up yet when it is freed), then 20 times waiting for the connection to be up (each is one session on the
 * server). No thread may be left behind. */
static int cycles(const char *url, const char *token, PresentlyConfig *config) {
  int threads_before = thread_count();
  for (int i = 0; i < 1000; i++) {
    PresentlyClient *c = NULL;
    CHECK(presently_client_new(config, &c) == PRESENTLY_RESULT_OK, "new #%d", i);
    CHECK(presently_client_connect(c) == PRESENTLY_RESULT_OK, "connect #%d", i);
    presently_client_record_activity(c);
    presently_client_free(c);
  }
  PresentlyConfig *cycle_config = NULL;
  OK(presently_config_new(url, &cycle_config));
  OK(presently_config_set_token(cycle_config, token));
  for (int i = 0; i < 20; i++) {
    PresentlyClient *c = NULL;
    CHECK(presently_client_new(cycle_config, &c) == PRESENTLY_RESULT_OK, "new #%d", i);
    CHECK(presently_client_connect(c) == PRESENTLY_RESULT_OK, "connect #%d", i);
    CHECK(drain_until(c, is_connected, NULL, WAIT_MS), "connected #%d", i);
    presently_client_free(c);
  }
  presently_config_free(cycle_config);
  CHECK(settled_thread_count(threads_before) == threads_before, "no thread left after the cycles: %d, before %d",
        thread_count(), threads_before);
  printf("1020 create/connect/free cycles\n");
  return 0;
}

static int own_is(const PresentlyEvent *event, void *state) {
  return presently_event_kind(event) == PRESENTLY_EVENT_KIND_OWN_STATUS_CHANGED &&
         presently_event_availability(event) == *(PresentlyAvailability *)state;
}

static int idle_warned(const PresentlyEvent *event, void *state) {
  (void)state;
  return presently_event_kind(event) == PRESENTLY_EVENT_KIND_IDLE_WARNING;
}

int main(int argc, char **argv) {
  CHECK(argc == 5 || (argc == 4 && strcmp(argv[1], "--cycles") == 0),
        "usage: smoke URL TOKEN_ALICE TOKEN_BOB TOKEN_FRANK | smoke --cycles URL TOKEN");
  if (strcmp(argv[1], "--cycles") == 0) {
    PresentlyConfig *config = NULL;
    OK(presently_config_new(argv[2], &config));
    OK(presently_config_set_token(config, argv[3]));
    OK(presently_config_set_idle_timeout_ms(config, 60000));
    int failed = cycles(argv[2], argv[3], config);
    presently_config_free(config);
    if (!failed) printf("ok\n");
    return failed;
  }
  const char *url = argv[1];

  CHECK(strcmp(presently_version(), "0.1.0") == 0, "version %s", presently_version());
  char buf[64];
  size_t n = presently_result_message(PRESENTLY_RESULT_NULL_ARGUMENT, buf, sizeof buf);
  CHECK(n > 0 && strstr(buf, "NULL") != NULL, "message '%s'", buf);
  char tiny[5];
  presently_result_message(PRESENTLY_RESULT_NULL_ARGUMENT, tiny, sizeof tiny);
  CHECK(strlen(tiny) == 4, "truncated to the buffer");
  CHECK(presently_result_message(PRESENTLY_RESULT_OK, NULL, 0) == 2, "length only");

  /* Bad arguments get result codes and a detail, never a crash. */
  PresentlyConfig *config = NULL;
  PresentlyClient *client = NULL;
  const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};
  CHECK(presently_config_new(NULL, &config) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL url");
  CHECK(last_error_contains("`url` is NULL"), "detail names the argument");
  CHECK(presently_config_new(url, NULL) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL out");
  CHECK(presently_config_new(bad_utf8, &config) == PRESENTLY_RESULT_INVALID_UTF8, "bad UTF-8");
  CHECK(presently_client_new(NULL, &client) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL config");
  OK(presently_config_new("http://nope", &config));
  OK(presently_config_set_token(config, argv[2]));
  CHECK(presently_client_new(config, &client) == PRESENTLY_RESULT_INVALID_URL, "bad URL");
  presently_config_free(config);
  OK(presently_config_new(url, &config));
  CHECK(presently_client_new(config, &client) == PRESENTLY_RESULT_INVALID_ARGUMENT, "no token");
  CHECK(last_error_contains("token"), "detail says a token is missing");
  CHECK(presently_config_set_token(config, bad_utf8) == PRESENTLY_RESULT_INVALID_UTF8, "bad token");
  CHECK(presently_config_set_token_callback(config, NULL, NULL) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL callback");
  const char *long_name = "a name longer than sixty-four bytes, which the protocol does not allow";
  CHECK(presently_config_set_client_info(config, long_name, "1", "c") == PRESENTLY_RESULT_INVALID_ARGUMENT, "long");
  CHECK(presently_config_set_reconnect_delays_ms(config, 0, 10) == PRESENTLY_RESULT_INVALID_ARGUMENT, "zero base");
  CHECK(presently_config_set_reconnect_delays_ms(config, 50, 10) == PRESENTLY_RESULT_INVALID_ARGUMENT, "base > max");
  CHECK(presently_config_set_idle_timeout_ms(NULL, 1) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL config");
  presently_config_free(NULL);

  PresentlyDndSchedule *schedule = NULL;
  CHECK(presently_dnd_schedule_new("Europe/Berln", &schedule) == PRESENTLY_RESULT_INVALID_ARGUMENT, "bad zone");
  CHECK(last_error_contains("Europe/Berln"), "detail names the zone");
  OK(presently_dnd_schedule_new("Europe/Berlin", &schedule));
  CHECK(presently_dnd_schedule_add_window(schedule, "weekdays", "25:00", "07:00") ==
            PRESENTLY_RESULT_INVALID_ARGUMENT, "bad time");
  CHECK(presently_dnd_schedule_add_window(schedule, "someday", "22:00", "07:00") ==
            PRESENTLY_RESULT_INVALID_ARGUMENT, "bad day");
  CHECK(presently_dnd_schedule_add_window(schedule, "daily", "22:00", "22:00") ==
            PRESENTLY_RESULT_INVALID_ARGUMENT, "empty window");
  CHECK(presently_config_set_dnd_schedule(config, schedule) == PRESENTLY_RESULT_INVALID_ARGUMENT, "no windows");
  char long_message[300];
  memset(long_message, 'x', sizeof long_message - 1);
  long_message[sizeof long_message - 1] = 0;
  CHECK(presently_dnd_schedule_set_message(schedule, long_message) == PRESENTLY_RESULT_INVALID_ARGUMENT, "long");
  OK(presently_dnd_schedule_add_window(schedule, "mon,tue,wed,thu,fri", "22:00", "07:00"));
  OK(presently_dnd_schedule_set_message(schedule, "Quiet hours"));
  presently_dnd_schedule_free(NULL);
  presently_client_record_activity(NULL);
  presently_client_free(NULL);
  presently_event_free(NULL);
  CHECK(presently_client_connect(NULL) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL client");
  CHECK(presently_client_state(NULL) == PRESENTLY_CONNECTION_STATE_IDLE, "NULL client state");
  CHECK(presently_client_transport(NULL) == PRESENTLY_TRANSPORT_NONE, "NULL client transport");
  CHECK(presently_config_set_transport(NULL, PRESENTLY_TRANSPORT_POLICY_AUTO) == PRESENTLY_RESULT_NULL_ARGUMENT,
        "NULL config transport");
  CHECK(presently_event_kind(NULL) == PRESENTLY_EVENT_KIND_OTHER, "NULL event");

  /* Alice's settings: quick idle detection, a warning, quick reconnects, the schedule. */
  OK(presently_config_set_token(config, argv[2]));
  OK(presently_config_set_client_info(config, "smoke", "1.0", "c-linux"));
  OK(presently_config_set_idle_timeout_ms(config, 600000));
  OK(presently_config_set_idle_warning_ms(config, 30000));
  OK(presently_config_set_background_away_ms(config, 60000));
  OK(presently_config_set_reconnect_delays_ms(config, 100, 2000));
  OK(presently_config_set_transport(config, PRESENTLY_TRANSPORT_POLICY_AUTO));
  CHECK(presently_config_set_fallback_after(config, 0) == PRESENTLY_RESULT_INVALID_ARGUMENT, "fallback after 0");
  OK(presently_config_set_fallback_after(config, 2));
  OK(presently_config_set_dnd_schedule(config, schedule));


  /* Alice watches Bob; Bob (token from a callback) goes busy in the studio. */
  PresentlyClient *alice = NULL, *bob = NULL;
  CHECK(presently_client_new(config, &alice) == PRESENTLY_RESULT_OK, "alice");
  PresentlyConfig *bob_config = NULL;
  OK(presently_config_new(url, &bob_config));
  OK(presently_config_set_token_callback(bob_config, bob_token, argv[3]));
  OK(presently_client_new(bob_config, &bob));
  presently_config_free(bob_config);
  const char *watch[] = {"bob"};
  OK(presently_client_subscribe(alice, watch, 1));
  /* Nothing is connected yet: a query is refused at once. */
  uint64_t query_id = 0;
  CHECK(presently_client_query(alice, watch, 1, &query_id) == PRESENTLY_RESULT_NOT_CONNECTED, "query offline");
  /* Carol gets her events pushed; Dave polls when woken; both share Alice's connection. */
  PresentlyClient *carol = NULL, *dave = NULL;
  OK(presently_client_new(config, &carol));
  OK(presently_client_new(config, &dave));
  OK(presently_client_set_event_callback(carol, on_event, &pushed_bob_busy));
  OK(presently_client_set_wake_callback(dave, on_wake, &wakes));
  OK(presently_client_subscribe(carol, watch, 1));
  OK(presently_client_subscribe(dave, watch, 1));
  OK(presently_client_connect(carol));
  OK(presently_client_connect(dave));
  CHECK(presently_client_subscribe(alice, NULL, 1) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL list");
  const char *bad_ids[] = {""};
  CHECK(presently_client_subscribe(alice, bad_ids, 1) == PRESENTLY_RESULT_INVALID_ARGUMENT, "empty user id");
  OK(presently_client_connect(alice));
  OK(presently_client_connect(bob));
  CHECK(drain_until(alice, is_connected, NULL, WAIT_MS), "alice connected");
  CHECK(presently_client_state(alice) == PRESENTLY_CONNECTION_STATE_CONNECTED, "alice's state");
  CHECK(presently_client_transport(alice) == PRESENTLY_TRANSPORT_WEBSOCKET, "alice's transport");
  CHECK(presently_client_set_status(bob, PRESENTLY_AVAILABILITY_OFFLINE, NULL, NULL, NULL) ==
            PRESENTLY_RESULT_INVALID_ARGUMENT, "offline is not settable");
  CHECK(last_error_contains("INVISIBLE"), "the detail suggests invisible");
  CHECK(presently_client_set_status(bob, PRESENTLY_AVAILABILITY_BUSY, long_message, NULL, NULL) ==
            PRESENTLY_RESULT_INVALID_ARGUMENT, "too long a message");
  OK(presently_client_set_status(bob, PRESENTLY_AVAILABILITY_BUSY, "Mixing", "in_studio", "Ableton Live 12"));

  int checked = 0;
  CHECK(drain_until(alice, bob_is_busy, &checked, WAIT_MS), "alice saw bob busy");
  CHECK(checked, "message, activity and last-active time arrived");
  CHECK(atomic_load(&token_asks) >= 1, "bob's token came from the callback");
  for (int tries = 0; tries < 500 && atomic_load(&pushed_bob_busy) == 0; tries++) pause_ms(10);
  CHECK(atomic_load(&pushed_bob_busy) == 1, "carol's callback saw bob busy once");
  PresentlyEvent *none = NULL;
  CHECK(presently_client_next_event(carol, &none) == PRESENTLY_RESULT_NO_EVENT, "pushed events are not queued");
  CHECK(atomic_load(&wakes) > 0, "dave was woken");
  checked = 0;
  CHECK(drain_until(dave, bob_is_busy, &checked, WAIT_MS) && checked, "dave drained his queue");

  /* A plugin instance opened later joins the shared connection: it learns the state and what is known. */
  PresentlyClient *erin = NULL;
  OK(presently_client_new(config, &erin));
  CHECK(drain_until(erin, is_connected, NULL, WAIT_MS), "erin learns the connection is up");
  OK(presently_client_subscribe(erin, watch, 1));
  checked = 0;
  CHECK(drain_until(erin, bob_is_busy, &checked, WAIT_MS) && checked, "erin learns bob is busy");

  /* A query answers once, to the client that asked. */
  const char *who[] = {"bob", "nobody", "bob"};
  OK(presently_client_query(alice, who, 3, &query_id));
  struct QueryState q = {query_id, 0, 0, 0};
  CHECK(drain_until(alice, query_answer, &q, WAIT_MS), "the query completed");
  CHECK(q.bob_busy && q.offline_nobody && q.completed_ok, "query results %d %d %d", q.bob_busy, q.offline_nobody,
        q.completed_ok);

  /* DND: a snooze turns Alice busy with its message; a schedule can be replaced or removed at any time. */
  OK(presently_client_snooze_dnd(alice, 60000, "Tracking vocals"));
  CHECK(drain_until(alice, own_busy_dnd, NULL, WAIT_MS), "snoozed: busy");
  CHECK(presently_client_snooze_dnd(alice, 0, NULL) == PRESENTLY_RESULT_INVALID_ARGUMENT, "zero snooze");
  OK(presently_client_end_snooze(alice));
  OK(presently_client_set_dnd_schedule(alice, NULL));
  OK(presently_client_set_dnd_schedule(alice, schedule));
  presently_dnd_schedule_free(schedule);
  OK(presently_client_network_changed(alice));
  OK(presently_client_app_backgrounded(alice));
  OK(presently_client_app_foregrounded(alice));

  /* Frank's plugin: idle after 400 ms with a warning 200 ms before, away 100 ms after going to the background. */
  PresentlyConfig *frank_config = NULL;
  PresentlyClient *frank = NULL;
  OK(presently_config_new(url, &frank_config));
  OK(presently_config_set_token(frank_config, argv[4]));
  OK(presently_config_set_idle_timeout_ms(frank_config, 400));
  OK(presently_config_set_idle_warning_ms(frank_config, 200));
  OK(presently_config_set_background_away_ms(frank_config, 100));
  OK(presently_client_new(frank_config, &frank));
  presently_config_free(frank_config);
  OK(presently_client_connect(frank));
  CHECK(drain_until(frank, is_connected, NULL, WAIT_MS), "frank connected");
  PresentlyAvailability away = PRESENTLY_AVAILABILITY_AWAY, online = PRESENTLY_AVAILABILITY_ONLINE;
  CHECK(drain_until(frank, idle_warned, NULL, WAIT_MS), "still there? warning");
  CHECK(drain_until(frank, own_is, &away, WAIT_MS), "idle: away");
  presently_client_record_activity(frank);
  CHECK(drain_until(frank, own_is, &online, WAIT_MS), "activity: online again");
  OK(presently_client_app_backgrounded(frank));
  CHECK(drain_until(frank, own_is, &away, WAIT_MS), "background: away");
  OK(presently_client_app_foregrounded(frank));
  presently_client_record_activity(frank);
  CHECK(drain_until(frank, own_is, &online, WAIT_MS), "foreground: online");
  presently_client_free(frank);
  printf("idle and lifecycle from C: warning, away, back, background away, back\n");

  /* Four threads call into one client at once. */
  pthread_t threads[4];
  for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, hammer, alice);
  OK(presently_client_set_status(alice, PRESENTLY_AVAILABILITY_AWAY, "brb", NULL, NULL));
  OK(presently_client_set_status(alice, PRESENTLY_AVAILABILITY_INVISIBLE, NULL, NULL, NULL));
  for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);

  presently_config_free(config);
  presently_client_free(erin);
  presently_client_free(carol);
  presently_client_free(dave);
  presently_client_free(alice);
  presently_client_free(bob);
  int remaining = settled_thread_count(1);
  CHECK(remaining == -1 || remaining == 1, "no library thread left after the last client: %d threads", remaining);
  printf("ok\n");
  return 0;
}
