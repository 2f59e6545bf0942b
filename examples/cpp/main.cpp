// Connects to a Presently server, sets a status, watches two users and prints what happens.
//   presently-cpp-example URL TOKEN USER1 USER2 [SECONDS]
// Exits 0 once both watched users' presence was seen (or 1 after SECONDS, default 10).
#include <presently.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <thread>

namespace {

// Owns a client; frees it (with the library's own function) when it goes out of scope.
struct ClientDeleter {
  void operator()(PresentlyClient *client) const { presently_client_free(client); }
};
using Client = std::unique_ptr<PresentlyClient, ClientDeleter>;

struct ConfigDeleter {
  void operator()(PresentlyConfig *config) const { presently_config_free(config); }
};
using Config = std::unique_ptr<PresentlyConfig, ConfigDeleter>;

struct ScheduleDeleter {
  void operator()(PresentlyDndSchedule *schedule) const { presently_dnd_schedule_free(schedule); }
};
using Schedule = std::unique_ptr<PresentlyDndSchedule, ScheduleDeleter>;

struct EventDeleter {
  void operator()(PresentlyEvent *event) const { presently_event_free(event); }
};
using Event = std::unique_ptr<PresentlyEvent, EventDeleter>;

const char *name(PresentlyAvailability availability) {
  switch (availability) {
    case PRESENTLY_AVAILABILITY_ONLINE: return "online";
    case PRESENTLY_AVAILABILITY_AWAY: return "away";
    case PRESENTLY_AVAILABILITY_BUSY: return "busy";
    case PRESENTLY_AVAILABILITY_OFFLINE: return "offline";
    case PRESENTLY_AVAILABILITY_INVISIBLE: return "invisible";
  }
  return "?";
}

bool ok(PresentlyResult result, const char *what) {
  if (result == PRESENTLY_RESULT_OK) return true;
  char detail[256];
  presently_last_error_message(detail, sizeof detail);
  std::fprintf(stderr, "%s: %s\n", what, detail);
  return false;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s URL TOKEN USER1 USER2 [SECONDS]\n", argv[0]);
    return 2;
  }
  const int seconds = argc > 5 ? std::stoi(argv[5]) : 10;
  std::printf("libpresently %s\n", presently_version());

  // Settings: who we are, when to go away, and quiet hours on weekday nights in Berlin.
  PresentlyConfig *raw_config = nullptr;
  if (!ok(presently_config_new(argv[1], &raw_config), "config")) return 1;
  Config config(raw_config);
  PresentlyDndSchedule *raw_schedule = nullptr;
  if (!ok(presently_dnd_schedule_new("Europe/Berlin", &raw_schedule), "schedule")) return 1;
  Schedule schedule(raw_schedule);
  if (!ok(presently_dnd_schedule_add_window(schedule.get(), "weekdays", "22:00", "07:00"), "window") ||
      !ok(presently_config_set_token(config.get(), argv[2]), "token") ||
      !ok(presently_config_set_client_info(config.get(), "cpp-example", "1.0", "linux"), "client info") ||
      !ok(presently_config_set_idle_timeout_ms(config.get(), 5 * 60 * 1000), "idle timeout") ||
      !ok(presently_config_set_dnd_schedule(config.get(), schedule.get()), "dnd schedule")) {
    return 1;
  }

  PresentlyClient *raw = nullptr;
  if (!ok(presently_client_new(config.get(), &raw), "create")) return 1;
  Client client(raw);
  const char *watch[] = {argv[3], argv[4]};
  if (!ok(presently_client_subscribe(client.get(), watch, 2), "subscribe")) return 1;
  if (!ok(presently_client_set_status(client.get(), PRESENTLY_AVAILABILITY_BUSY, "Mixing", "in_studio",
                                      "Ableton Live 12"),
          "set status")) {
    return 1;
  }
  if (!ok(presently_client_connect(client.get()), "connect")) return 1;

  std::set<std::string> seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline && seen.size() < 2) {
    PresentlyEvent *next = nullptr;
    while (presently_client_next_event(client.get(), &next) == PRESENTLY_RESULT_OK) {
      Event event(next);
      switch (presently_event_kind(event.get())) {
        case PRESENTLY_EVENT_KIND_PRESENCE_CHANGED: {
          const char *message = presently_event_message(event.get());
          std::printf("presence %s %s%s%s\n", presently_event_user_id(event.get()),
                      name(presently_event_availability(event.get())), message ? " " : "", message ? message : "");
          seen.insert(presently_event_user_id(event.get()));
          break;
        }
        case PRESENTLY_EVENT_KIND_STATE_CHANGED:
          std::printf("state %s\n", presently_event_message(event.get()));
          break;
        case PRESENTLY_EVENT_KIND_OWN_STATUS_CHANGED:
          std::printf("own status %s\n", name(presently_event_availability(event.get())));
          break;
        default:
          break;
      }
    }
    presently_client_record_activity(client.get());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::printf("saw %zu of 2 watched users\n", seen.size());
  return seen.size() == 2 ? 0 : 1;
}
