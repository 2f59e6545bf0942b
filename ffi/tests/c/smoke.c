/* libpresently from C: argument checks, a status change seen by another client, create/free cycles.
 * Usage: smoke URL TOKEN_ALICE TOKEN_BOB. Exits 0 on success; run under AddressSanitizer by the test. */
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
      fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);         \
      fprintf(stderr, __VA_ARGS__);                                  \
      fprintf(stderr, "\n");                                         \
      return 1;                                                      \
    }                                                                \
  } while (0)

static void pause_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
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

int main(int argc, char **argv) {
  CHECK(argc == 4, "usage: smoke URL TOKEN_ALICE TOKEN_BOB");
  const char *url = argv[1];

  CHECK(strcmp(presently_version(), "0.1.0") == 0, "version %s", presently_version());
  char buf[64];
  size_t n = presently_result_message(PRESENTLY_RESULT_NULL_ARGUMENT, buf, sizeof buf);
  CHECK(n > 0 && strstr(buf, "NULL") != NULL, "message '%s'", buf);
  char tiny[5];
  presently_result_message(PRESENTLY_RESULT_NULL_ARGUMENT, tiny, sizeof tiny);
  CHECK(strlen(tiny) == 4, "truncated to the buffer");

  /* Bad arguments get result codes, never a crash. */
  PresentlyClient *client = NULL;
  CHECK(presently_client_new(NULL, "t", "a", "1", "c", &client) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL url");
  CHECK(presently_client_new(url, "t", "a", "1", "c", NULL) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL out");
  const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};
  CHECK(presently_client_new(bad_utf8, "t", "a", "1", "c", &client) == PRESENTLY_RESULT_INVALID_UTF8, "bad UTF-8");
  CHECK(presently_client_new("http://nope", "t", "a", "1", "c", &client) == PRESENTLY_RESULT_INVALID_URL, "bad URL");
  CHECK(presently_client_connect(NULL) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL client");
  presently_client_record_activity(NULL);
  presently_client_free(NULL);
  presently_event_free(NULL);
  CHECK(presently_event_kind(NULL) == PRESENTLY_EVENT_KIND_OTHER, "NULL event");

  /* Plugin load/unload: create and free clients many times. */
  for (int i = 0; i < 200; i++) {
    PresentlyClient *c = NULL;
    CHECK(presently_client_new(url, argv[2], "smoke", "1", "c", &c) == PRESENTLY_RESULT_OK, "new #%d", i);
    presently_client_record_activity(c);
    presently_client_free(c);
  }

  /* Alice watches Bob; Bob goes busy in the studio. */
  PresentlyClient *alice = NULL, *bob = NULL;
  CHECK(presently_client_new(url, argv[2], "smoke", "1", "c", &alice) == PRESENTLY_RESULT_OK, "alice");
  CHECK(presently_client_new(url, argv[3], "smoke", "1", "c", &bob) == PRESENTLY_RESULT_OK, "bob");
  const char *watch[] = {"bob"};
  CHECK(presently_client_subscribe(alice, watch, 1) == PRESENTLY_RESULT_OK, "subscribe");
  /* Carol gets her events pushed; Dave polls when woken. */
  PresentlyClient *carol = NULL, *dave = NULL;
  CHECK(presently_client_new(url, argv[2], "smoke", "1", "c", &carol) == PRESENTLY_RESULT_OK, "carol");
  CHECK(presently_client_new(url, argv[2], "smoke", "1", "c", &dave) == PRESENTLY_RESULT_OK, "dave");
  CHECK(presently_client_set_event_callback(carol, on_event, &pushed_bob_busy) == PRESENTLY_RESULT_OK, "push cb");
  CHECK(presently_client_set_wake_callback(dave, on_wake, &wakes) == PRESENTLY_RESULT_OK, "wake cb");
  CHECK(presently_client_subscribe(carol, watch, 1) == PRESENTLY_RESULT_OK, "carol subscribes");
  CHECK(presently_client_subscribe(dave, watch, 1) == PRESENTLY_RESULT_OK, "dave subscribes");
  CHECK(presently_client_connect(carol) == PRESENTLY_RESULT_OK, "connect carol");
  CHECK(presently_client_connect(dave) == PRESENTLY_RESULT_OK, "connect dave");
  CHECK(presently_client_subscribe(alice, NULL, 1) == PRESENTLY_RESULT_NULL_ARGUMENT, "NULL list");
  CHECK(presently_client_connect(alice) == PRESENTLY_RESULT_OK, "connect alice");
  CHECK(presently_client_connect(bob) == PRESENTLY_RESULT_OK, "connect bob");
  CHECK(presently_client_set_status(bob, PRESENTLY_AVAILABILITY_OFFLINE, NULL, NULL, NULL) ==
            PRESENTLY_RESULT_INVALID_ARGUMENT, "offline is not settable");
  CHECK(presently_client_set_status(bob, PRESENTLY_AVAILABILITY_BUSY, "Mixing", "in_studio", "Ableton Live 12") ==
            PRESENTLY_RESULT_OK, "set status");

  int saw_connected = 0, saw_busy = 0;
  for (int tries = 0; tries < 1000 && !saw_busy; tries++) {
    PresentlyEvent *event = NULL;
    while (presently_client_next_event(alice, &event) == PRESENTLY_RESULT_OK) {
      if (presently_event_kind(event) == PRESENTLY_EVENT_KIND_STATE_CHANGED &&
          presently_event_connection_state(event) == PRESENTLY_CONNECTION_STATE_CONNECTED) {
        saw_connected = 1;
      }
      if (presently_event_kind(event) == PRESENTLY_EVENT_KIND_PRESENCE_CHANGED &&
          strcmp(presently_event_user_id(event), "bob") == 0 &&
          presently_event_availability(event) == PRESENTLY_AVAILABILITY_BUSY) {
        const char *message = presently_event_message(event);
        const char *detail = presently_event_activity_detail(event);
        CHECK(message && strcmp(message, "Mixing") == 0, "message");
        CHECK(detail && strcmp(detail, "Ableton Live 12") == 0, "activity detail");
        printf("alice sees bob: busy \"%s\" (%s: %s)\n", message, presently_event_activity_kind(event), detail);
        saw_busy = 1;
      }
      presently_event_free(event);
    }
    presently_client_record_activity(alice);
    pause_ms(10);
  }
  CHECK(saw_connected, "alice connected");
  CHECK(saw_busy, "alice saw bob busy within 10 s");
  for (int tries = 0; tries < 500 && atomic_load(&pushed_bob_busy) == 0; tries++) pause_ms(10);
  CHECK(atomic_load(&pushed_bob_busy) == 1, "carol's callback saw bob busy once");
  PresentlyEvent *none = NULL;
  CHECK(presently_client_next_event(carol, &none) == PRESENTLY_RESULT_NO_EVENT, "pushed events are not queued");
  CHECK(atomic_load(&wakes) > 0, "dave was woken");
  int dave_saw = 0;
  PresentlyEvent *event = NULL;
  while (presently_client_next_event(dave, &event) == PRESENTLY_RESULT_OK) {
    dave_saw += presently_event_kind(event) == PRESENTLY_EVENT_KIND_PRESENCE_CHANGED;
    presently_event_free(event);
  }
  CHECK(dave_saw > 0, "dave drained his queue");

  /* Four threads call into one client at once. */
  pthread_t threads[4];
  for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, hammer, alice);
  CHECK(presently_client_set_status(alice, PRESENTLY_AVAILABILITY_AWAY, "brb", NULL, NULL) == PRESENTLY_RESULT_OK,
        "a status while others record activity");
  for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);

  /* Alice, Carol and Dave use one token: one shared connection, each with its own events (above). */
  presently_client_free(carol);
  presently_client_free(dave);
  presently_client_free(alice);
  presently_client_free(bob);
  int remaining = thread_count();
  CHECK(remaining == -1 || remaining == 1, "no library thread left after the last client: %d threads", remaining);
  printf("ok\n");
  return 0;
}
