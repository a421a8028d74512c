{
  "targets": [
    {
      "target_name": "vhost_tap",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/tap.cc",
        "native/tap_binding.cc",
        "native/tap_ops_binding.cc",
        "native/rss_steering.cc",
        "native/notify.cc",
        "native/memory.cc",
        "native/memory_binding.cc",
        "native/fault_guard.cc",
        "native/virtqueue.cc",
        "native/packed_queue.cc",
        "native/ctrl_queue.cc",
        "native/ctrl_binding.cc",
        "native/uring.cc",
        "native/tap_io_readv.cc",
        "native/tap_io_uring.cc",
        "native/tap_io_auto.cc",
        "native/rx_stash.cc",
        "native/engine.cc",
        "native/engine_binding.cc",
        "native/vhost_user.cc",
        "native/vhost_user_binding.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fexceptions"],
      "conditions": [
        ["'<!(echo $VHOST_TAP_SANITIZE)'=='1'", {
          "cflags_cc": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"],
          "ldflags": ["-fsanitize=address,undefined"]
        }, {
          "defines": ["NDEBUG"]
        }]
      ]
    }
  ]
}
