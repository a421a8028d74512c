// A libuv poll watch for binding objects that JS may drop while libuv still
// holds the handle (FdWatcher, and the vhost-user Listener and Connection):
// the uv_poll_t lives in its own heap block, freed only in uv_close's
// callback, and forgets its owner when the owner closes it, so a late event
// never reaches a dead object. Binding-side only (libuv and N-API).
#pragma once
#include <napi.h>
#include <uv.h>

#include "errors.h"

namespace vt {

template <typename Owner>
class PollWatch {
 public:
  // Called on the JS thread with libuv's status (< 0: the fd went bad) and events.
  using Callback = void (*)(Owner* owner, int status, int events);

  PollWatch() = default;
  PollWatch(const PollWatch&) = delete;
  PollWatch& operator=(const PollWatch&) = delete;
  ~PollWatch() { Close(); }

  // Starts watching `fd` for `events` on env's event loop; throws (as a JS
  // error) when there is no loop or libuv refuses the fd. `what` names the fd
  // in the error. An unref'd watch does not keep the process (or a Worker) alive.
  void Start(Napi::Env env, int fd, int events, Owner* owner, Callback cb, const char* what, bool ref = true) {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) ThrowCode(env, "EVHOST_STATE", "no event loop for this thread");
    auto* h = new Handle{};
    const int err = uv_poll_init(loop, &h->poll, fd);
    if (err) {
      delete h;
      ThrowErrno(env, -err, "uv_poll_init", what);
    }
    h->owner = owner;
    h->cb = cb;
    h->events = events;
    h->poll.data = h;
    uv_poll_start(&h->poll, events, &PollWatch::OnEvent);
    if (!ref) uv_unref(reinterpret_cast<uv_handle_t*>(&h->poll));
    h_ = h;
  }

  bool open() const { return h_ != nullptr; }

  // No callbacks until Resume(); the fd stays as it is.
  void Pause() {
    if (h_) uv_poll_stop(&h_->poll);
  }
  void Resume() {
    if (h_) uv_poll_start(&h_->poll, h_->events, &PollWatch::OnEvent);
  }
  // Watches for `events` from now on (0: none until the next SetEvents).
  void SetEvents(int events) {
    if (!h_) return;
    h_->events = events;
    if (events) uv_poll_start(&h_->poll, events, &PollWatch::OnEvent);
    else uv_poll_stop(&h_->poll);
  }

  // Stops for good; the handle's block goes when libuv is done with it.
  void Close() {
    if (!h_) return;
    h_->owner = nullptr;
    uv_poll_stop(&h_->poll);
    uv_close(reinterpret_cast<uv_handle_t*>(&h_->poll), [](uv_handle_t* hh) { delete static_cast<Handle*>(hh->data); });
    h_ = nullptr;
  }

 private:
  struct Handle {
    uv_poll_t poll;
    Owner* owner = nullptr;
    Callback cb = nullptr;
    int events = 0;
  };

  static void OnEvent(uv_poll_t* p, int status, int events) {
    auto* h = static_cast<Handle*>(p->data);
    if (h->owner) h->cb(h->owner, status, events);
  }

  Handle* h_ = nullptr;
};

}  // namespace vt
