#!/usr/bin/env bash
# Builds the API reference from the `///` comments of include/torchkit/ with Doxygen, warnings as
# errors (an undocumented public entity fails). Output: build-docs/html/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCHKIT_EXTRA_PACKAGES="${TORCHKIT_EXTRA_PACKAGES:-} doxygen" bash tools/install-deps.sh
rm -rf build-docs
doxygen docs/Doxyfile
echo "docs: build-docs/html/index.html"
