// libpresently in a JUCE app, as a plugin would use it:
//   PresentlyJuceExample URL TOKEN USER1 USER2 [SECONDS]
// A juce::Timer on the message thread drains the client's events and records activity (as a plugin's editor
// would on mouse moves); nothing blocks and no thread of the app's own is needed. Exits 0 once both watched users
// were seen.
#include <juce_core/juce_core.h>
#include <juce_events/juce_events.h>
#include <presently.h>

#include <set>
#include <string>

namespace {

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

// Drains the client's events on the message thread, like a plugin editor's timer.
class PresenceTimer : public juce::Timer {
 public:
  PresenceTimer(PresentlyClient *client, int seconds) : client(client), seconds(seconds) {}

  void timerCallback() override {
    PresentlyEvent *event = nullptr;
    while (presently_client_next_event(client, &event) == PRESENTLY_RESULT_OK) {
      switch (presently_event_kind(event)) {
        case PRESENTLY_EVENT_KIND_PRESENCE_CHANGED: {
          const char *message = presently_event_message(event);
          juce::String line = juce::String("presence ") + presently_event_user_id(event) + " " +
                              name(presently_event_availability(event));
          if (message != nullptr) line << " " << message;
          std::printf("%s\n", line.toRawUTF8());
          seen.insert(presently_event_user_id(event));
          break;
        }
        case PRESENTLY_EVENT_KIND_STATE_CHANGED:
          std::printf("state %s\n", presently_event_message(event));
          break;
        case PRESENTLY_EVENT_KIND_OWN_STATUS_CHANGED:
          std::printf("own status %s\n", name(presently_event_availability(event)));
          break;
        default:
          break;
      }
      presently_event_free(event);
    }
    // The host saw the user: cheap enough for every mouse move, and safe on the audio thread too.
    presently_client_record_activity(client);
    std::fflush(stdout);
    if (seen.size() >= 2 || juce::Time::getMillisecondCounter() - started > (juce::uint32)seconds * 1000) {
      stopTimer();
      juce::MessageManager::getInstance()->stopDispatchLoop();
    }
  }

  bool sawBoth() const { return seen.size() >= 2; }

 private:
  PresentlyClient *client;
  int seconds;
  juce::uint32 started = juce::Time::getMillisecondCounter();
  std::set<std::string> seen;
};

}  // namespace

int main(int argc, char *argv[]) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s URL TOKEN USER1 USER2 [SECONDS]\n", argv[0]);
    return 2;
  }
  const int seconds = argc > 5 ? std::atoi(argv[5]) : 10;
  auto *messageManager = juce::MessageManager::getInstance();
  messageManager->setCurrentThreadAsMessageThread();

  // The plugin's settings: its name, and away after 5 minutes without activity (MIDI, mouse, transport).
  PresentlyConfig *config = nullptr;
  PresentlyClient *client = nullptr;
  if (presently_config_new(argv[1], &config) != PRESENTLY_RESULT_OK ||
      presently_config_set_token(config, argv[2]) != PRESENTLY_RESULT_OK ||
      presently_config_set_client_info(config, "juce-example", "1.0", "juce-linux") != PRESENTLY_RESULT_OK ||
      presently_config_set_idle_timeout_ms(config, 5 * 60 * 1000) != PRESENTLY_RESULT_OK ||
      presently_client_new(config, &client) != PRESENTLY_RESULT_OK) {
    char detail[256];
    presently_last_error_message(detail, sizeof detail);
    std::fprintf(stderr, "cannot create the client: %s\n", detail);
    presently_config_free(config);
    return 1;
  }
  presently_config_free(config);
  const char *watch[] = {argv[3], argv[4]};
  presently_client_subscribe(client, watch, 2);
  presently_client_set_status(client, PRESENTLY_AVAILABILITY_BUSY, "Tracking vocals", "in_studio", "JUCE host");
  presently_client_connect(client);

  bool sawBoth = false;
  {
    PresenceTimer timer(client, seconds);
    timer.startTimer(50);
    messageManager->runDispatchLoop();
    sawBoth = timer.sawBoth();
  }
  presently_client_free(client);
  std::printf("saw %s\n", sawBoth ? "both watched users" : "too little");
  juce::MessageManager::deleteInstance();
  return sawBoth ? 0 : 1;
}
