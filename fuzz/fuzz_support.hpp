#pragma once
/// Shared by torchkit's libFuzzer targets: the one rule every target checks.
///
/// A public function given any input either succeeds or throws torchkit::Error. Any other
/// exception, a crash, a sanitizer report, a hang or a leak is a finding; each one found becomes
/// an input in fuzz/regressions/<target>/, replayed by every later run.

#include <torchkit/error.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <utility>

namespace torchkit::fuzz {

/// Runs `call`; returns true when it returned, false when it threw torchkit::Error. Aborts (a
/// finding) on any other exception.
template <class F>
bool accepts(F&& call) {
  try {
    std::forward<F>(call)();
    return true;
  } catch (const torchkit::Error&) {
    return false;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "fuzz: not a torchkit::Error: %s\n", error.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "fuzz: a non-std exception escaped\n");
    std::abort();
  }
}

/// Aborts with `what` unless `condition` holds: a property of an accepted input failed.
inline void require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "fuzz: property failed: %s\n", what);
    std::abort();
  }
}

}  // namespace torchkit::fuzz
