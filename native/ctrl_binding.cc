// JS face of the control virtqueue: the `ControlQueue` class of
// backend/native.ts. Commands are rare and small, so they are decoded on the
// JS thread when the guest kicks: pop() decodes a bounded number of them with
// the native walker (ctrl_queue.h), the device logic decides, answer() writes
// the acks (and any result) back and publishes them, all at once or a few at
// a time as the device completes them.
#include <napi.h>

#include <memory>
#include <vector>

#include "ctrl_queue.h"
#include "errors.h"
#include "memory_binding.h"

namespace vt {

namespace {

// Descriptors one pop() may walk before it stops and leaves the rest for the
// next turn of the event loop. A command's own walk is bounded by the chain
// rules (at most 32768 descriptors plus an indirect table of 32768), so a turn
// costs at most this plus one command: about a millisecond of the JS thread
// whatever the guest puts in its control queue.
constexpr uint64_t kDescriptorsPerTurn = 65536;

[[noreturn]] void BadArg(Napi::Env env, const std::string& msg) { ThrowCode(env, "EVHOST_BADARG", msg); }

uint64_t Field(const Napi::Object& o, const char* name, uint64_t max) {
  const int64_t v = GetInt(o, name);
  if (v < 0 || static_cast<uint64_t>(v) > max)
    BadArg(o.Env(), std::string("control queue '") + name + "' must be in 0.." + std::to_string(max));
  return static_cast<uint64_t>(v);
}

}  // namespace

class CtrlQueueWrap : public Napi::ObjectWrap<CtrlQueueWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ControlQueue",
                       {InstanceMethod<&CtrlQueueWrap::Pop>("pop"), InstanceMethod<&CtrlQueueWrap::Answer>("answer")});
  }

  // new ControlQueue({ memory, size, desc, avail, used, eventIdx, indirect })
  explicit CtrlQueueWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CtrlQueueWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) BadArg(env, "ControlQueue options must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Value mem = o.Get("memory");
    slot_ = GuestMemoryWrap::From(mem, "memory")->slot();
    memory_ = Napi::Persistent(mem.As<Napi::Object>());
    constexpr uint64_t kMaxSafe = (uint64_t{1} << 53) - 1;
    QueueLayout l;
    l.size = static_cast<uint32_t>(Field(o, "size", RING_MAX_SIZE));
    l.desc = Field(o, "desc", kMaxSafe);
    l.avail = Field(o, "avail", kMaxSafe);
    l.used = Field(o, "used", kMaxSafe);
    table_ = slot_->Get();
    gen_ = slot_->generation();
    if (!table_) ThrowCode(env, "EVHOST_STATE", "guest memory has no regions yet");
    Violation v;
    l.packed = !o.Get("packed").IsUndefined() && GetBool(o, "packed");  // VIRTIO_F_RING_PACKED: desc, avail, used are ring, driver and device areas
    if (!q_.Init(*table_, l, GetBool(o, "eventIdx"), GetBool(o, "indirect"), &v))
      BadArg(env, "control queue: " + v.detail);
  }

 private:
  // pop(maxCommands) -> { commands: [{ cls, cmd, data, malformed }], more, broken }
  // `more`: the turn's budget ran out with commands left (call again on the
  // next turn). `broken`: { rule, detail } when the guest broke a rule; the
  // queue is then dead and every later call answers the same.
  Napi::Value Pop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int64_t max = info[0].IsNumber() ? info[0].As<Napi::Number>().Int64Value() : 0;
    if (max < 1 || max > 4096) BadArg(env, "pop(maxCommands): maxCommands must be 1..4096");
    if (!pending_.empty()) ThrowCode(env, "EVHOST_STATE", "pop() before the previous commands were answered");
    Napi::Object out = Napi::Object::New(env);
    Napi::Array cmds = Napi::Array::New(env);
    bool more = false;
    if (!broken_.rule) Refresh();
    if (!broken_.rule) {
      q_.DisableNotify();
      uint64_t walked = 0;
      for (;;) {
        if (static_cast<int64_t>(pending_.size()) >= max || walked >= kDescriptorsPerTurn) {
          more = true;
          break;
        }
        CtrlCommand c;
        const CtrlQueue::Next n = q_.Pop(&c, &walked, &broken_);
        if (n != CtrlQueue::Next::kCommand) break;
        Napi::Object js = Napi::Object::New(env);
        js.Set("cls", Napi::Number::New(env, c.cls));
        js.Set("cmd", Napi::Number::New(env, c.cmd));
        js.Set("data", Napi::Buffer<uint8_t>::Copy(env, c.data.data(), c.data.size()));
        js.Set("malformed", Napi::Boolean::New(env, c.malformed));
        cmds.Set(static_cast<uint32_t>(pending_.size()), js);
        pending_.push_back(std::move(c));
      }
    }
    out.Set("commands", cmds);
    out.Set("more", Napi::Boolean::New(env, more));
    if (broken_.rule) {
      Napi::Object b = Napi::Object::New(env);
      b.Set("rule", Napi::String::New(env, broken_.rule));
      b.Set("detail", Napi::String::New(env, broken_.detail));
      out.Set("broken", b);
    } else {
      out.Set("broken", env.Null());
    }
    return out;
  }

  // answer(answers) -> whether an interrupt is due. answers[i] answers the
  // i-th command of the last pop() not answered yet: an ack byte, or { ack,
  // result } for a command that returns data (written before the ack). Fewer
  // answers than commands answer the first ones (the device publishes acks as
  // their work completes); pop() waits until all are. Commands popped before a
  // rule was broken are still answered (their chains were valid).
  Napi::Value Answer(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsArray()) BadArg(env, "answer(answers) takes an array of acks");
    Napi::Array answers = info[0].As<Napi::Array>();
    if (answers.Length() > pending_.size())
      BadArg(env, "answer(answers): " + std::to_string(pending_.size()) + " commands are waiting, got " +
                      std::to_string(answers.Length()) + " answers");
    struct Parsed {
      uint8_t ack;
      std::vector<uint8_t> result;
    };
    std::vector<Parsed> parsed;
    for (uint32_t i = 0; i < answers.Length(); i++) {
      Napi::Value a = answers.Get(i);
      Parsed p{0, {}};
      if (a.IsObject() && !a.IsArray()) {
        Napi::Object o = a.As<Napi::Object>();
        Napi::Value r = o.Get("result");
        if (!r.IsTypedArray() || r.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
          BadArg(env, "answer(answers): result must be a Uint8Array");
        Napi::Uint8Array u8 = r.As<Napi::Uint8Array>();
        if (u8.ElementLength() > kCtrlMaxResultBytes)
          BadArg(env, "answer(answers): a result is at most " + std::to_string(kCtrlMaxResultBytes) + " bytes");
        p.result.assign(u8.Data(), u8.Data() + u8.ElementLength());
        a = o.Get("ack");
      }
      const int64_t v = a.IsNumber() ? a.As<Napi::Number>().Int64Value() : -1;
      if (v < 0 || v > 255) BadArg(env, "answer(answers): acks must be bytes");
      p.ack = static_cast<uint8_t>(v);
      parsed.push_back(std::move(p));
    }
    for (size_t i = 0; i < parsed.size(); i++)
      q_.Answer(pending_[i], parsed[i].ack, parsed[i].result.data(), static_cast<uint32_t>(parsed[i].result.size()));
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(parsed.size()));
    return Napi::Boolean::New(env, q_.Publish());
  }

  // Takes a new table if the guest memory was replaced since the last call.
  void Refresh() {
    const uint64_t gen = slot_->generation();
    if (gen == gen_) return;
    gen_ = gen;
    std::shared_ptr<const MemoryTable> next = slot_->Get();
    if (!next || next == table_) return;
    if (q_.Remap(*next, &broken_)) table_ = std::move(next);
  }

  Napi::ObjectReference memory_;
  std::shared_ptr<MemorySlot> slot_;
  std::shared_ptr<const MemoryTable> table_;
  uint64_t gen_ = 0;
  CtrlQueue q_;
  std::vector<CtrlCommand> pending_;
  Violation broken_;
};

void InitCtrl(Napi::Env env, Napi::Object exports) { exports.Set("ControlQueue", CtrlQueueWrap::Define(env)); }

}  // namespace vt
