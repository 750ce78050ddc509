#pragma once
/// @file detail/tcp_store.hpp
/// Creating a c10d::TCPStore on every LibTorch: the libuv server switch.
///
/// LibTorch 2.2 added `TCPStoreOptions::useLibUV` and 2.4 made it default to true, but a LibTorch
/// may be built without libuv (Debian's 2.6 and 2.14 are): then the constructor refuses with
/// "use_libuv was requested but PyTorch was build[sic, 2.6] without libuv support". The check it uses,
/// c10d::detail::is_libuv_tcpstore_backend_available(), is not exported from libtorch_cpu, so the
/// store is asked for libuv and, when the constructor refuses that before it touches the network,
/// made again with the classic server. As Python's rendezvous does, USE_LIBUV=0 in the
/// environment asks for the classic server from the start. LibTorch 1.13 has no such option.

#include <torchkit/detail/environment.hpp>

#if __has_include(<torch/csrc/distributed/c10d/TCPStore.hpp>)
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <c10/util/Exception.h>

#include <atomic>
#include <string>
#include <string_view>

namespace torchkit::detail {

template <class Options>
concept HasLibUVOption = requires(Options& options) { options.useLibUV = false; };

/// True once a store was refused libuv by this LibTorch: later stores skip the first try.
inline std::atomic<bool>& libuv_unavailable() {
  static std::atomic<bool> unavailable{false};
  return unavailable;
}

template <class Options>
[[nodiscard]] c10::intrusive_ptr<c10d::Store> make_tcp_store(const std::string& host, Options options) {
  if constexpr (HasLibUVOption<Options>) {
    const auto use_libuv = get_environment("USE_LIBUV");
    if ((use_libuv && *use_libuv == "0") || libuv_unavailable().load()) {
      options.useLibUV = false;
    }
    if (options.useLibUV) {
      try {
        return c10::make_intrusive<c10d::TCPStore>(host, options);
      } catch (const c10::Error& error) {
        if (std::string_view(error.what()).find("without libuv") == std::string_view::npos) {
          throw;
        }
        libuv_unavailable().store(true);
        options.useLibUV = false;
      }
    }
  }
  return c10::make_intrusive<c10d::TCPStore>(host, options);
}

}  // namespace torchkit::detail
#endif
