# vcpkg overlay port for torchkit (header-only).
#   vcpkg install torchkit --overlay-ports=<torchkit>/ports
vcpkg_from_github(
  OUT_SOURCE_PATH SOURCE_PATH
  REPO torchkit/torchkit
  REF "v${VERSION}"
  SHA512 0
  HEAD_REF main
)

set(VCPKG_BUILD_TYPE release)  # header-only: one configuration is enough

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    -DTORCHKIT_BUILD_TESTS=OFF
    -DTORCHKIT_BUILD_EXAMPLES=OFF
    -DTORCHKIT_BUILD_BENCHMARKS=OFF
    -DTORCHKIT_INSTALL=ON
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(CONFIG_PATH share/torchkit)

file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug" "${CURRENT_PACKAGES_DIR}/lib")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
