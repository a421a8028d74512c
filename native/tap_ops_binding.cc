// TapOps: runs a list of TAP and engine steps in order on a libuv pool thread
// (the `TapOps` class of backend/native.ts), for what a guest's control
// commands make the device do. None of it may wait on the JS thread: every tun
// ioctl takes the RTNL lock, which other processes may hold for long (a
// network namespace being deleted), TUNSETQUEUE's detach also waits for an RCU
// grace period, and stopping an engine joins its worker after it drained its
// TAP queue. Measured on a loaded 2-vCPU machine: single detaches and joins of
// 50-90 ms, 0.5-1.7 s for 64 VQ_PAIRS_SET commands of 16 pairs.
//
// One list runs at a time per TapOps; its promise settles on the JS thread
// with what each step did. cancel() stops the list after the step running now
// (steps run under the list's lock) and says which steps ran, so reset and
// close wait for one step at most, never for a whole list.
#include <napi.h>

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine_binding.h"
#include "errors.h"
#include "rss_steering.h"
#include "tap.h"

namespace vt {

namespace {

[[noreturn]] void BadArg(Napi::Env env, const std::string& msg) { ThrowCode(env, "EVHOST_BADARG", msg); }

// Steps one list may hold: a change of all 256 pairs is 2 steps a pair plus steering.
constexpr uint32_t kMaxSteps = 4096;

enum class Op { kAttach, kDetach, kSteer, kDiscard, kTxFilter, kOffload, kStart, kStop, kRss, kProgram, kRxSync };

struct Step {
  Op op;
  int fd = -1;
  int64_t arg = 0;             // steer: queue (-1: none); discard: max frames; offload/txfilter: flags; stop: drain
  std::vector<uint8_t> bytes;  // txfilter: MAC addresses
  EngineWrap* engine = nullptr;
  std::shared_ptr<RssSteeringConfig> rss;  // rss: what to compile
  // Runs even after an earlier step failed (steering put back), but not after cancel().
  bool always = false;
};

// What each step did: kPending until it ran.
enum StepStatus : int32_t { kPending = 0, kDone = 1, kFailed = 2, kSkipped = 3 };

// Shared by the pool thread running the list and the JS thread (cancel()).
struct Run {
  std::mutex mu;
  bool cancelled = false;
  std::vector<int32_t> status;
  std::vector<double> result;  // discard: frames read and dropped; rss: program fd, or -errno
  std::vector<std::string> note;  // rss: why the program did not load
  int failed = -1;
  SysResult err;
};

std::string FdDesc(int fd) { return "TAP queue fd " + std::to_string(fd); }

std::string Doing(const Step& s) {
  switch (s.op) {
    case Op::kAttach: return "attaching " + FdDesc(s.fd);
    case Op::kDetach: return "detaching " + FdDesc(s.fd);
    case Op::kSteer: return "setting the steering program via " + FdDesc(s.fd);
    case Op::kDiscard: return "discarding the frames " + FdDesc(s.fd) + " holds";
    case Op::kTxFilter: return "setting a TX filter on " + FdDesc(s.fd);
    case Op::kOffload: return "setting TAP offloads on " + FdDesc(s.fd);
    case Op::kStart: return "starting the engine worker";
    case Op::kStop: return "stopping the engine worker";
    case Op::kRss: return "setting the RSS steering program via " + FdDesc(s.fd);
    case Op::kProgram: return "setting the steering program via " + FdDesc(s.fd);
    case Op::kRxSync: return "waiting for the engine worker's RX round";
  }
  return "";
}

// Loads the RSS program and attaches it; when it cannot load (no CAP_BPF, a
// verifier that refuses it) the kernel's own steering takes over and the step
// still succeeds: result -errno, `note` the reason. Only a TAP that refuses
// the ioctl fails the step.
SysResult RunRss(const Step& s, double* result, std::string* note) {
  int prog = -1;
  std::string verifier;
  const SysResult load = RssSteeringLoad(*s.rss, &prog, &verifier);
  if (!load.ok()) {
    const SysResult off = TapSetSteeringProgram(s.fd, -1);
    if (!off.ok()) return off;
    *result = -load.err;
    *note = std::string(load.syscall) + (verifier.empty() ? "" : ": " + verifier);
    return SysResult{};
  }
  const SysResult r = TapSetSteeringProgram(s.fd, prog);
  if (!r.ok()) {
    ::close(prog);
    return r;
  }
  *result = prog;
  return r;
}

SysResult RunStep(const Step& s, double* result, std::string* note) {
  switch (s.op) {
    case Op::kAttach: return TapSetQueue(s.fd, true);
    case Op::kDetach: return TapSetQueue(s.fd, false);
    case Op::kSteer: return TapSteerAllTo(s.fd, static_cast<int>(s.arg));
    case Op::kDiscard: {
      int n = 0;
      const SysResult r = TapDiscardQueued(s.fd, static_cast<int>(s.arg), &n);
      *result = n;
      return r;
    }
    case Op::kTxFilter:
      return TapSetTxFilter(s.fd, static_cast<uint16_t>(s.arg), s.bytes.data(), static_cast<uint16_t>(s.bytes.size() / 6));
    case Op::kOffload: return TapSetOffload(s.fd, static_cast<unsigned>(s.arg));
    case Op::kStart: return StartEngineAnyThread(s.engine);
    case Op::kStop: StopEngineAnyThread(s.engine, s.arg != 0); return SysResult{};
    case Op::kRss: return RunRss(s, result, note);
    case Op::kProgram: return TapSetSteeringProgram(s.fd, static_cast<int>(s.arg));
    case Op::kRxSync: SyncRxAnyThread(s.engine); return SysResult{};
  }
  return SysResult{};
}

class RunWorker : public Napi::AsyncWorker {
 public:
  RunWorker(Napi::Env env, std::shared_ptr<Run> run, std::vector<Step> steps, std::vector<Napi::ObjectReference> keep)
      : Napi::AsyncWorker(env, "vhost-tap TapOps"),
        deferred_(Napi::Promise::Deferred::New(env)),
        run_(std::move(run)),
        steps_(std::move(steps)),
        keep_(std::move(keep)) {
    // Should the environment go away with the list still running (process or
    // Worker exit), the engines it names are torn down: stop the list first.
    napi_add_env_cleanup_hook(env, &RunWorker::OnEnvCleanup, this);
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    bool failed = false;
    for (size_t i = 0; i < steps_.size(); i++) {
      std::lock_guard<std::mutex> g(run_->mu);
      if (run_->cancelled) return;
      if (failed && !steps_[i].always) {
        run_->status[i] = kSkipped;
        continue;
      }
      const SysResult r = RunStep(steps_[i], &run_->result[i], &run_->note[i]);
      run_->status[i] = r.ok() ? kDone : kFailed;
      if (!r.ok() && !failed) {
        failed = true;
        run_->failed = static_cast<int>(i);
        run_->err = r;
      }
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    napi_remove_env_cleanup_hook(env, &RunWorker::OnEnvCleanup, this);
    Napi::Object out = Napi::Object::New(env);
    std::lock_guard<std::mutex> g(run_->mu);
    Napi::Array status = Napi::Array::New(env, steps_.size());
    Napi::Array result = Napi::Array::New(env, steps_.size());
    Napi::Array note = Napi::Array::New(env, steps_.size());
    for (uint32_t i = 0; i < steps_.size(); i++) {
      status.Set(i, Napi::Number::New(env, run_->status[i]));
      result.Set(i, Napi::Number::New(env, run_->result[i]));
      note.Set(i, Napi::String::New(env, run_->note[i]));
    }
    out.Set("status", status);
    out.Set("result", result);
    out.Set("note", note);
    out.Set("cancelled", Napi::Boolean::New(env, run_->cancelled));
    if (run_->failed >= 0) {
      const SysResult& r = run_->err;
      out.Set("failed", Napi::Number::New(env, run_->failed));
      out.Set("error", ErrnoError(env, r.err, r.syscall, Doing(steps_[run_->failed])).Value());
    } else {
      out.Set("failed", Napi::Number::New(env, -1));
      out.Set("error", env.Null());
    }
    run_->cancelled = true;  // finished: nothing of it runs any more
    keep_.clear();
    deferred_.Resolve(out);
  }

  void OnError(const Napi::Error& e) override {
    napi_remove_env_cleanup_hook(Env(), &RunWorker::OnEnvCleanup, this);
    keep_.clear();
    deferred_.Reject(e.Value());
  }

 private:
  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<RunWorker*>(arg);
    std::lock_guard<std::mutex> g(self->run_->mu);
    self->run_->cancelled = true;
  }

  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Run> run_;
  std::vector<Step> steps_;
  // The Engine objects the steps name, alive until the list settles.
  std::vector<Napi::ObjectReference> keep_;
};

int64_t IntField(const Napi::Object& o, const char* name, int64_t lo, int64_t hi, uint32_t i) {
  Napi::Value v = o.Get(name);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1e300;
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || d != static_cast<double>(static_cast<int64_t>(d)))
    BadArg(o.Env(), "TapOps step " + std::to_string(i) + ": '" + name + "' must be an integer " + std::to_string(lo) +
                        ".." + std::to_string(hi));
  return static_cast<int64_t>(d);
}

}  // namespace

class TapOpsWrap : public Napi::ObjectWrap<TapOpsWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "TapOps",
                       {InstanceMethod<&TapOpsWrap::RunSteps>("run"), InstanceMethod<&TapOpsWrap::Cancel>("cancel")});
  }

  explicit TapOpsWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TapOpsWrap>(info) {}

 private:
  // run(steps) -> Promise<{ status, result, failed, error, cancelled }>. Each step is one of
  //   { op: 'attach' | 'detach', fd }     TUNSETQUEUE
  //   { op: 'steer', fd, queue }          every frame to `queue` (-1: the kernel's own steering)
  //   { op: 'discard', fd, max }          read and drop what the queue holds; result: frames
  //   { op: 'txfilter', fd, flags, macs } TUNSETTXFILTER
  //   { op: 'offload', fd, flags }        TUNSETOFFLOAD
  //   { op: 'start', engine } / { op: 'stop', engine, drain }
  //   { op: 'rxsync', engine }            wait for the worker's RX round (Engine::SyncRx)
  //   { op: 'rss', fd, hashTypes, key, table, unclassifiedQueue }
  //                                       load and attach the RSS steering program; result:
  //                                       its fd (the caller closes it), or -errno when it
  //                                       could not load and the kernel's steering runs (note: why)
  //   { op: 'program', fd, prog }         attach a loaded program (-1: the kernel's own steering)
  // with `always: true` to run even after an earlier step failed. After a failure the
  // other steps are skipped; `failed` is its index, `error` an errno Error.
  Napi::Value RunSteps(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (run_ && !Finished()) ThrowCode(env, "EVHOST_STATE", "TapOps.run() while a list is still running");
    if (!info[0].IsArray()) BadArg(env, "TapOps.run(steps) takes an array of steps");
    Napi::Array arr = info[0].As<Napi::Array>();
    if (arr.Length() > kMaxSteps) BadArg(env, "TapOps.run(steps): at most " + std::to_string(kMaxSteps) + " steps");
    std::vector<Step> steps;
    std::vector<Napi::ObjectReference> keep;
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Napi::Value v = arr.Get(i);
      if (!v.IsObject()) BadArg(env, "TapOps step " + std::to_string(i) + " must be an object");
      Napi::Object o = v.As<Napi::Object>();
      Napi::Value opv = o.Get("op");
      const std::string op = opv.IsString() ? opv.As<Napi::String>().Utf8Value() : "";
      Step s{};
      s.always = o.Get("always").ToBoolean().Value();
      if (op == "start" || op == "stop" || op == "rxsync") {
        s.op = op == "start" ? Op::kStart : op == "stop" ? Op::kStop : Op::kRxSync;
        Napi::Value e = o.Get("engine");
        s.engine = EngineFromValue(e);
        if (!s.engine) BadArg(env, "TapOps step " + std::to_string(i) + ": 'engine' must be an Engine");
        if (s.op == Op::kStop) s.arg = o.Get("drain").ToBoolean().Value() ? 1 : 0;
        keep.push_back(Napi::Persistent(e.As<Napi::Object>()));
      } else {
        s.fd = static_cast<int>(IntField(o, "fd", 0, INT32_MAX, i));
        if (op == "attach") {
          s.op = Op::kAttach;
        } else if (op == "detach") {
          s.op = Op::kDetach;
        } else if (op == "steer") {
          s.op = Op::kSteer;
          s.arg = IntField(o, "queue", -1, 0xffff, i);
        } else if (op == "program") {
          s.op = Op::kProgram;
          s.arg = IntField(o, "prog", -1, INT32_MAX, i);
        } else if (op == "rss") {
          s.op = Op::kRss;
          s.rss = std::make_shared<RssSteeringConfig>();
          s.rss->hash_types = static_cast<uint32_t>(IntField(o, "hashTypes", 0, 0xffffffffLL, i));
          s.rss->unclassified = static_cast<uint16_t>(IntField(o, "unclassifiedQueue", 0, 0xffff, i));
          Napi::Value k = o.Get("key");
          Napi::Value tb = o.Get("table");
          if (!k.IsTypedArray() || k.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
              k.As<Napi::Uint8Array>().ByteLength() > sizeof s.rss->key)
            BadArg(env, "TapOps step " + std::to_string(i) + ": 'key' must be a Uint8Array of at most " +
                            std::to_string(sizeof s.rss->key) + " bytes");
          if (!tb.IsTypedArray() || tb.As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array)
            BadArg(env, "TapOps step " + std::to_string(i) + ": 'table' must be a Uint16Array");
          Napi::Uint8Array ku = k.As<Napi::Uint8Array>();
          Napi::Uint16Array tu = tb.As<Napi::Uint16Array>();
          std::memcpy(s.rss->key, ku.Data(), ku.ByteLength());
          s.rss->key_len = ku.ByteLength();
          s.rss->table.assign(tu.Data(), tu.Data() + tu.ElementLength());
          std::string why;
          if (!RssSteeringCheck(*s.rss, &why)) BadArg(env, "TapOps step " + std::to_string(i) + ": " + why);
        } else if (op == "discard") {
          s.op = Op::kDiscard;
          s.arg = IntField(o, "max", 0, 1000000000, i);
        } else if (op == "offload") {
          s.op = Op::kOffload;
          s.arg = IntField(o, "flags", 0, 0xffffffffLL, i);
        } else if (op == "txfilter") {
          s.op = Op::kTxFilter;
          s.arg = IntField(o, "flags", 0, 0xffff, i);
          Napi::Value m = o.Get("macs");
          if (!m.IsTypedArray() || m.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
              m.As<Napi::Uint8Array>().ByteLength() % 6 != 0 || m.As<Napi::Uint8Array>().ByteLength() / 6 > 0xffff)
            BadArg(env, "TapOps step " + std::to_string(i) + ": 'macs' must be a Uint8Array of whole 6-byte addresses");
          Napi::Uint8Array u8 = m.As<Napi::Uint8Array>();
          s.bytes.assign(u8.Data(), u8.Data() + u8.ByteLength());
        } else {
          BadArg(env, "TapOps step " + std::to_string(i) + ": unknown op '" + op + "'");
        }
      }
      steps.push_back(std::move(s));
    }
    auto run = std::make_shared<Run>();
    run->status.assign(steps.size(), kPending);
    run->result.assign(steps.size(), 0);
    run->note.assign(steps.size(), std::string());
    auto* w = new RunWorker(env, run, std::move(steps), std::move(keep));
    Napi::Promise p = w->Promise();
    run_ = std::move(run);
    w->Queue();
    return p;
  }

  // cancel() -> { status, result } of the last list, after the step it runs
  // (if any) has ended, whether it finished or not; null when there is none,
  // or cancel() already answered for it. No further step of it runs.
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!run_) return env.Null();
    std::shared_ptr<Run> run = std::move(run_);
    std::lock_guard<std::mutex> g(run->mu);
    run->cancelled = true;
    Napi::Object out = Napi::Object::New(env);
    Napi::Array status = Napi::Array::New(env, run->status.size());
    Napi::Array result = Napi::Array::New(env, run->status.size());
    for (uint32_t i = 0; i < run->status.size(); i++) {
      status.Set(i, Napi::Number::New(env, run->status[i]));
      result.Set(i, Napi::Number::New(env, run->result[i]));
    }
    out.Set("status", status);
    out.Set("result", result);
    return out;
  }

  bool Finished() {
    std::lock_guard<std::mutex> g(run_->mu);
    return run_->cancelled;
  }

  std::shared_ptr<Run> run_;
};

void InitTapOps(Napi::Env env, Napi::Object exports) { exports.Set("TapOps", TapOpsWrap::Define(env)); }

}  // namespace vt
