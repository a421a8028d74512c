// JS face of the engine: the `Engine` class of backend/native.ts. Parses and
// checks options, holds the GuestMemory for the engine's whole life, and
// carries rule violations back to the JS thread.
#include <napi.h>

#include <memory>
#include <mutex>

#include "engine.h"
#include "engine_binding.h"
#include "errors.h"
#include "memory_binding.h"

namespace vt {

namespace {

struct BrokenReport {
  uint32_t index;
  std::string rule;
  std::string detail;
};

[[noreturn]] void BadArg(Napi::Env env, const std::string& msg) { ThrowCode(env, "EVHOST_BADARG", msg); }

int64_t GetRange(const Napi::Object& o, const char* name, int64_t lo, int64_t hi, const char* where) {
  int64_t v = GetInt(o, name);
  if (v < lo || v > hi)
    BadArg(o.Env(), std::string(where) + "'" + name + "' = " + std::to_string(v) + " is outside " +
                        std::to_string(lo) + ".." + std::to_string(hi));
  return v;
}

QueueConfig ParseQueue(const Napi::Object& opts, const char* key) {
  Napi::Env env = opts.Env();
  Napi::Value v = opts.Get(key);
  if (!v.IsObject()) BadArg(env, std::string("option '") + key + "' must be an object");
  Napi::Object q = v.As<Napi::Object>();
  const std::string where = std::string(key) + ".";
  constexpr int64_t kMaxSafe = (int64_t{1} << 53) - 1;
  QueueConfig c;
  c.index = static_cast<uint32_t>(GetRange(q, "index", 0, 0xffff, where.c_str()));
  c.layout.size = static_cast<uint32_t>(GetRange(q, "size", 1, RING_MAX_SIZE, where.c_str()));
  c.layout.desc = static_cast<uint64_t>(GetRange(q, "desc", 0, kMaxSafe, where.c_str()));
  c.layout.avail = static_cast<uint64_t>(GetRange(q, "avail", 0, kMaxSafe, where.c_str()));
  c.layout.used = static_cast<uint64_t>(GetRange(q, "used", 0, kMaxSafe, where.c_str()));
  c.layout.packed = !q.Get("packed").IsUndefined() && GetBool(q, "packed");
  c.kick_fd = static_cast<int>(GetRange(q, "kickFd", 0, INT32_MAX, where.c_str()));
  c.call_fd = static_cast<int>(GetRange(q, "callFd", 0, INT32_MAX, where.c_str()));
  if (!q.Get("lastAvailIdx").IsUndefined())
    c.last_avail_idx = static_cast<uint16_t>(GetRange(q, "lastAvailIdx", 0, 0xffff, where.c_str()));
  if (!q.Get("usedIdx").IsUndefined())
    c.used_idx = static_cast<uint16_t>(GetRange(q, "usedIdx", 0, 0xffff, where.c_str()));
  return c;
}

Napi::Object QueueStatsObject(Napi::Env env, const QueueStats& s, const char* const* names, size_t ndrops) {
  auto num = [&](uint64_t v) { return Napi::Number::New(env, static_cast<double>(v)); };
  Napi::Object o = Napi::Object::New(env);
  o.Set("packets", num(s.packets.load(std::memory_order_relaxed)));
  o.Set("bytes", num(s.bytes.load(std::memory_order_relaxed)));
  o.Set("usedChains", num(s.used_chains.load(std::memory_order_relaxed)));
  o.Set("interrupts", num(s.interrupts.load(std::memory_order_relaxed)));
  o.Set("kicks", num(s.kicks.load(std::memory_order_relaxed)));
  o.Set("tapFull", num(s.tap_full.load(std::memory_order_relaxed)));
  o.Set("reordered", num(s.reordered.load(std::memory_order_relaxed)));
  o.Set("withheld", num(s.withheld.load(std::memory_order_relaxed)));
  o.Set("udpTunnelGsoPackets", num(s.udp_tunnel_gso_packets.load(std::memory_order_relaxed)));
  o.Set("udpTunnelGsoBytes", num(s.udp_tunnel_gso_bytes.load(std::memory_order_relaxed)));
  Napi::Object drops = Napi::Object::New(env);
  for (size_t i = 0; i < ndrops; i++) drops.Set(names[i], num(s.drops[i].load(std::memory_order_relaxed)));
  o.Set("drops", drops);
  o.Set("broken", Napi::Boolean::New(env, s.broken.load()));
  o.Set("lastAvailIdx", num(s.last_avail_idx.load(std::memory_order_relaxed)));
  o.Set("usedIdx", num(s.used_idx.load(std::memory_order_relaxed)));
  return o;
}

// A Uint8Array field of a snapshot: its bytes, or nullptr with *len = 0 when
// `nullable` and the field is null.
const uint8_t* BytesField(const Napi::Object& o, const char* name, bool nullable, size_t* len) {
  Napi::Value v = o.Get(name);
  *len = 0;
  if (nullable && v.IsNull()) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    BadArg(o.Env(), std::string("rx filter '") + name + "' must be a Uint8Array" + (nullable ? " or null" : ""));
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  *len = a.ByteLength();
  return a.Data();
}

// RxFilterSnapshot (backend/rxfilter.ts) -> an immutable RxFilter.
std::shared_ptr<const RxFilter> ParseRxFilter(const Napi::Object& o) {
  Napi::Env env = o.Env();
  auto f = std::make_shared<RxFilter>();
  f->promisc = GetBool(o, "promisc");
  f->allmulti = GetBool(o, "allmulti");
  f->alluni = GetBool(o, "alluni");
  f->nomulti = GetBool(o, "nomulti");
  f->nouni = GetBool(o, "nouni");
  f->nobcast = GetBool(o, "nobcast");
  size_t n;
  const uint8_t* uni = BytesField(o, "unicast", false, &n);
  if (n % 6) BadArg(env, "rx filter 'unicast' must hold whole 6-byte addresses");
  f->SetUnicast(uni, n / 6);
  const uint8_t* multi = BytesField(o, "multicast", false, &n);
  if (n % 6) BadArg(env, "rx filter 'multicast' must hold whole 6-byte addresses");
  f->SetMulticast(multi, n / 6);
  const uint8_t* vlans = BytesField(o, "vlans", true, &n);
  if (vlans) {
    if (n != f->vlans.size()) BadArg(env, "rx filter 'vlans' must be 512 bytes (4096 bits) or null");
    std::copy(vlans, vlans + n, f->vlans.begin());
    f->vlan_enabled = true;
  }
  return f;
}

// Marks Engine objects, so that EngineFromValue never takes another wrap for one.
constexpr napi_type_tag kEngineTag = {0x7674656e67696e65ULL, 0x2d656e67696e6531ULL};

}  // namespace

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod<&EngineWrap::Start>("start"), InstanceMethod<&EngineWrap::Stop>("stop"),
                        InstanceMethod<&EngineWrap::Stats>("stats"), InstanceMethod<&EngineWrap::Wake>("wake"),
                        InstanceMethod<&EngineWrap::SetRxFilter>("setRxFilter"),
                        InstanceMethod<&EngineWrap::SetRssHash>("setRssHash"),
                        InstanceMethod<&EngineWrap::SetCoalescing>("setCoalescing"),
                        InstanceMethod<&EngineWrap::SetCallFd>("setCallFd"),
                        InstanceMethod<&EngineWrap::ResetQueue>("resetQueue"),
                        InstanceMethod<&EngineWrap::EnableQueue>("enableQueue"),
                        InstanceMethod<&EngineWrap::Close>("close")});
  }

  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    info.This().As<Napi::Object>().TypeTag(&kEngineTag);
    if (!info[0].IsObject()) BadArg(env, "Engine options must be an object");
    Napi::Object opts = info[0].As<Napi::Object>();

    EngineConfig cfg;
    Napi::Value mem = opts.Get("memory");
    cfg.memory = GuestMemoryWrap::From(mem, "memory")->slot();
    memory_ = Napi::Persistent(mem.As<Napi::Object>());
    cfg.tap_fd = static_cast<int>(GetRange(opts, "tapFd", 0, INT32_MAX, ""));
    cfg.hdr_len = static_cast<uint32_t>(GetRange(opts, "hdrLen", 0, 64, ""));
    cfg.mergeable = GetBool(opts, "mergeable");
    cfg.event_idx = GetBool(opts, "eventIdx");
    cfg.indirect = GetBool(opts, "indirect");
    cfg.in_order = !opts.Get("inOrder").IsUndefined() && GetBool(opts, "inOrder");
    cfg.rx_frame_max = static_cast<uint32_t>(GetRange(opts, "rxFrameMax", 0, UINT32_MAX, ""));
    cfg.host_udp_tunnel = !opts.Get("hostUdpTunnel").IsUndefined() && GetBool(opts, "hostUdpTunnel");
    cfg.host_udp_tunnel_csum = !opts.Get("hostUdpTunnelCsum").IsUndefined() && GetBool(opts, "hostUdpTunnelCsum");
    // A second at most: longer is a spinning thread, not a latency trade.
    if (!opts.Get("busyPollUs").IsUndefined())
      cfg.busy_poll_us = static_cast<uint32_t>(GetRange(opts, "busyPollUs", 0, 1000000, ""));
    Napi::Value io = opts.Get("io");
    if (!io.IsUndefined()) {
      const std::string v = io.IsString() ? io.As<Napi::String>().Utf8Value() : "";
      if (v != "auto" && v != "readv") BadArg(env, "option 'io' must be 'auto' or 'readv'");
      cfg.force_readv = v == "readv";
    }
    Napi::Value sq = opts.Get("sqpoll");
    if (!sq.IsUndefined()) {
      if (!sq.IsBoolean()) BadArg(env, "option 'sqpoll' must be a boolean");
      cfg.sqpoll = sq.As<Napi::Boolean>().Value();
    }
    cfg.rx = ParseQueue(opts, "rx");
    cfg.tx = ParseQueue(opts, "tx");
    // packed: VIRTIO_F_RING_PACKED; then rx/tx desc, avail, used are the
    // descriptor ring, driver and device event areas, and lastAvailIdx /
    // usedIdx carry the wrap counter in bit 15 (a new ring: 0x8000).
    const bool packed = !opts.Get("packed").IsUndefined() && GetBool(opts, "packed");
    for (auto [qc, key] : {std::pair<QueueConfig*, const char*>{&cfg.rx, "rx"}, {&cfg.tx, "tx"}}) {
      if (packed) qc->layout.packed = true;
      if (qc->layout.packed) {
        const Napi::Object q = opts.Get(key).As<Napi::Object>();
        if (q.Get("lastAvailIdx").IsUndefined()) qc->last_avail_idx = RING_PACKED_WRAP_BIT;
        if (q.Get("usedIdx").IsUndefined()) qc->used_idx = RING_PACKED_WRAP_BIT;
      }
    }
    Napi::Value cb = opts.Get("onBroken");
    if (!cb.IsFunction()) BadArg(env, "option 'onBroken' must be a function");
    std::string why;
    if (!Engine::Validate(cfg, &why)) BadArg(env, why);

    on_broken_ = Napi::ThreadSafeFunction::New(env, cb.As<Napi::Function>(), "vhost-tap onBroken", 0, 1);
    // A quiet engine must not keep the process alive; stop() is what ends it.
    on_broken_.Unref(env);
    tsfn_live_ = true;
    Napi::ThreadSafeFunction tsfn = on_broken_;
    engine_ = Engine::Create(cfg, [tsfn](uint32_t index, const char* rule, const std::string& detail) mutable {
      auto* r = new BrokenReport{index, rule, detail};
      napi_status s = tsfn.NonBlockingCall(r, [](Napi::Env env, Napi::Function fn, BrokenReport* rep) {
        std::unique_ptr<BrokenReport> own(rep);
        if (env == nullptr || fn.IsEmpty()) return;  // the function is being torn down
        fn.Call({Napi::Number::New(env, rep->index), Napi::String::New(env, rep->rule),
                 Napi::String::New(env, rep->detail)});
      });
      if (s != napi_ok) delete r;
    });
    napi_add_env_cleanup_hook(env_, &EngineWrap::OnEnvCleanup, this);
  }

  ~EngineWrap() override {
    Shutdown();
    if (engine_) napi_remove_env_cleanup_hook(env_, &EngineWrap::OnEnvCleanup, this);
  }

  // Start/Stop from a helper thread (engine_binding.h).
  SysResult StartAnyThread() {
    std::lock_guard<std::mutex> g(mu_);
    if (!engine_ || !tsfn_live_) return SysResult{EBADFD, "start", ""};
    if (engine_->running()) return SysResult{EBUSY, "start", ""};
    return engine_->Start();
  }
  void StopAnyThread(bool drain_rx) {
    std::lock_guard<std::mutex> g(mu_);
    if (engine_) engine_->Stop(drain_rx);
  }
  void SyncRxAnyThread() {
    std::lock_guard<std::mutex> g(mu_);
    if (engine_) engine_->SyncRx();
  }

 private:
  void Shutdown() {
    std::lock_guard<std::mutex> g(mu_);
    if (engine_) engine_->Stop();
    if (tsfn_live_) {
      tsfn_live_ = false;
      on_broken_.Release();
    }
  }

  static void OnEnvCleanup(void* arg) {
    auto* self = static_cast<EngineWrap*>(arg);
    self->Shutdown();
  }

  // close(): stops the worker and lets go of everything the engine holds now,
  // not when the garbage collector gets to this object: its worker, its
  // reference to the guest memory and the table (mappings) it last used. A
  // vhost-user session ends with its mappings gone. Idempotent; every other
  // method throws EVHOST_STATE afterwards.
  void Close(const Napi::CallbackInfo&) {
    if (!engine_) return;
    Shutdown();
    napi_remove_env_cleanup_hook(env_, &EngineWrap::OnEnvCleanup, this);
    std::lock_guard<std::mutex> g(mu_);
    engine_.reset();
    memory_.Reset();
  }

  void CheckOpen(Napi::Env env) const {
    if (!engine_) ThrowCode(env, "EVHOST_STATE", "engine is closed");
  }

  void Start(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    if (!tsfn_live_) ThrowCode(info.Env(), "EVHOST_STATE", "engine was shut down");
    if (engine_->running()) ThrowCode(info.Env(), "EVHOST_STATE", "engine is already running");
    SysResult r;
    {
      std::lock_guard<std::mutex> g(mu_);
      r = engine_->Start();
    }
    if (!r.ok()) ThrowErrno(info.Env(), r.err, r.syscall, "starting the engine worker");
  }

  // stop(drainRx?: boolean)
  void Stop(const Napi::CallbackInfo& info) {
    const bool drain = info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
    std::lock_guard<std::mutex> g(mu_);
    if (engine_) engine_->Stop(drain);
  }

  // wake(): the GuestMemory changed; a sleeping worker takes the new table now.
  void Wake(const Napi::CallbackInfo&) {
    if (engine_) engine_->Wake();
  }

  // setRxFilter(snapshot | null); null accepts every frame.
  void SetRxFilter(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    Napi::Value v = info[0];
    if (v.IsNull() || v.IsUndefined()) {
      engine_->SetRxFilter(nullptr);
      return;
    }
    if (!v.IsObject()) BadArg(info.Env(), "setRxFilter takes an RxFilterSnapshot or null");
    engine_->SetRxFilter(ParseRxFilter(v.As<Napi::Object>()));
  }

  // setRssHash({ hashTypes, key } | null): the guest's hash configuration,
  // checked by backend/rss.ts; null (or no type enabled) reports NONE.
  void SetRssHash(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    Napi::Value v = info[0];
    if (v.IsNull() || v.IsUndefined()) {
      engine_->SetRssHash(nullptr);
      return;
    }
    if (!v.IsObject()) BadArg(env, "setRssHash takes { hashTypes, key } or null");
    Napi::Object o = v.As<Napi::Object>();
    const uint32_t types = static_cast<uint32_t>(GetRange(o, "hashTypes", 0, 0xffffffff, ""));
    size_t n;
    const uint8_t* key = BytesField(o, "key", false, &n);
    if (n > RssHash::kMaxKey) BadArg(env, "setRssHash: key is at most " + std::to_string(RssHash::kMaxKey) + " bytes");
    engine_->SetRssHash(std::make_shared<const RssHash>(types, key, n));
  }

  // setCoalescing('rx' | 'tx', maxPackets, maxUsecs): u32 each, as the
  // driver's VIRTIO_NET_CTRL_NOTF_COAL command carries them.
  void SetCoalescing(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    const std::string dir = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (dir != "rx" && dir != "tx") BadArg(env, "setCoalescing(queue, maxPackets, maxUsecs): queue must be 'rx' or 'tx'");
    uint32_t v[2];
    for (int i = 0; i < 2; i++) {
      const double d = info[1 + i].IsNumber() ? info[1 + i].As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0 && d <= UINT32_MAX && d == static_cast<double>(static_cast<uint64_t>(d))))
        BadArg(env, "setCoalescing(queue, maxPackets, maxUsecs): maxPackets and maxUsecs must be integers 0..4294967295");
      v[i] = static_cast<uint32_t>(d);
    }
    engine_->SetCoalescing(dir == "rx", v[0], v[1]);
  }

  // setCallFd(queue: 'rx' | 'tx', fd): a new call fd, swapped into the running
  // worker (no restart); the engine keeps its own copy, the caller keeps `fd`.
  void SetCallFd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    const std::string dir = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (dir != "rx" && dir != "tx") BadArg(env, "setCallFd(queue, fd): queue must be 'rx' or 'tx'");
    const double d = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= INT32_MAX && d == static_cast<double>(static_cast<int64_t>(d))))
      BadArg(env, "setCallFd(queue, fd): fd must be a non-negative integer");
    const SysResult r = engine_->SetCallFd(dir == "rx", static_cast<int>(d));
    if (!r.ok()) ThrowErrno(env, r.err, r.syscall, "handing the engine a new call fd");
  }

  // resetQueue('rx' | 'tx'): per-queue reset (VIRTIO_F_RING_RESET); returns
  // { lastAvailIdx, usedIdx } where the ring stood.
  Napi::Value ResetQueue(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    const std::string dir = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (dir != "rx" && dir != "tx") BadArg(env, "resetQueue(queue): queue must be 'rx' or 'tx'");
    {
      // Not while a helper thread starts or stops this engine.
      std::lock_guard<std::mutex> g(mu_);
      engine_->ResetQueue(dir == "rx");
    }
    const QueueStats& s = dir == "rx" ? engine_->rx_stats : engine_->tx_stats;
    Napi::Object o = Napi::Object::New(env);
    o.Set("lastAvailIdx", Napi::Number::New(env, s.last_avail_idx.load()));
    o.Set("usedIdx", Napi::Number::New(env, s.used_idx.load()));
    return o;
  }

  // enableQueue('rx' | 'tx', { size, desc, avail, used, packed?, lastAvailIdx?, usedIdx? }):
  // serves a reset ring again with this layout (the engine's layout kind).
  void EnableQueue(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    const std::string dir = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (dir != "rx" && dir != "tx") BadArg(env, "enableQueue(queue, ring): queue must be 'rx' or 'tx'");
    if (!info[1].IsObject()) BadArg(env, "enableQueue(queue, ring): ring must be { size, desc, avail, used }");
    Napi::Object q = info[1].As<Napi::Object>();
    constexpr int64_t kMaxSafe = (int64_t{1} << 53) - 1;
    QueueLayout l;
    l.size = static_cast<uint32_t>(GetRange(q, "size", 1, RING_MAX_SIZE, "ring."));
    l.desc = static_cast<uint64_t>(GetRange(q, "desc", 0, kMaxSafe, "ring."));
    l.avail = static_cast<uint64_t>(GetRange(q, "avail", 0, kMaxSafe, "ring."));
    l.used = static_cast<uint64_t>(GetRange(q, "used", 0, kMaxSafe, "ring."));
    l.packed = !q.Get("packed").IsUndefined() && GetBool(q, "packed");
    const uint16_t fresh = l.packed ? RING_PACKED_WRAP_BIT : 0;
    const uint16_t last_avail = q.Get("lastAvailIdx").IsUndefined()
                                    ? fresh
                                    : static_cast<uint16_t>(GetRange(q, "lastAvailIdx", 0, 0xffff, "ring."));
    const uint16_t used_idx =
        q.Get("usedIdx").IsUndefined() ? fresh : static_cast<uint16_t>(GetRange(q, "usedIdx", 0, 0xffff, "ring."));
    std::string why;
    bool ok;
    {
      std::lock_guard<std::mutex> g(mu_);
      ok = engine_->EnableQueue(dir == "rx", l, last_avail, used_idx, &why);
    }
    if (!ok) BadArg(env, why);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    CheckOpen(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("rx", QueueStatsObject(env, engine_->rx_stats, kRxDropNames.data(), kRxDropNames.size()));
    o.Set("tx", QueueStatsObject(env, engine_->tx_stats, kTxDropNames.data(), kTxDropNames.size()));
    o.Set("io", Napi::String::New(env, engine_->io_name.load()));
    Napi::Object batches = Napi::Object::New(env);
    batches.Set("uring", Napi::Number::New(env, static_cast<double>(engine_->io_batches[kIoUring].load())));
    batches.Set("readv", Napi::Number::New(env, static_cast<double>(engine_->io_batches[kIoReadv].load())));
    o.Set("ioBatches", batches);
    o.Set("wakeups", Napi::Number::New(env, static_cast<double>(engine_->wakeups.load())));
    o.Set("running", Napi::Boolean::New(env, engine_->running()));
    return o;
  }

  napi_env env_;
  // Held while the worker is made or joined (Engine::Start/Stop) and while
  // engine_ goes: a helper thread (tap_ops_binding.cc) may start or stop this
  // engine while the JS thread closes it or the environment tears down.
  std::mutex mu_;
  // Declared before engine_ so that the engine (and its worker) is gone
  // before the memory it points into may be let go.
  Napi::ObjectReference memory_;
  std::unique_ptr<Engine> engine_;
  Napi::ThreadSafeFunction on_broken_;
  bool tsfn_live_ = false;
};

EngineWrap* EngineFromValue(Napi::Value v) {
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kEngineTag)) return nullptr;
  return EngineWrap::Unwrap(v.As<Napi::Object>());
}

SysResult StartEngineAnyThread(EngineWrap* w) { return w->StartAnyThread(); }
void StopEngineAnyThread(EngineWrap* w, bool drain_rx) { w->StopAnyThread(drain_rx); }
void SyncRxAnyThread(EngineWrap* w) { w->SyncRxAnyThread(); }

void InitEngine(Napi::Env env, Napi::Object exports) { exports.Set("Engine", EngineWrap::Define(env)); }

}  // namespace vt
