"""Conan 2 recipe for torchkit (header-only).

    conan create . --build=missing
"""

from conan import ConanFile
from conan.tools.cmake import CMake, CMakeToolchain, cmake_layout
from conan.tools.files import copy
import os


class TorchkitConan(ConanFile):
    name = "torchkit"
    version = "0.1.0"
    license = "MIT"
    url = "https://github.com/torchkit/torchkit"
    homepage = "https://github.com/torchkit/torchkit"
    description = "Header-only C++20 helpers over LibTorch: the everyday PyTorch training tips, one line each."
    topics = ("pytorch", "libtorch", "deep-learning", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    exports_sources = "CMakeLists.txt", "cmake/*", "include/*", "LICENSE"
    no_copy_source = True

    def requirements(self):
        self.requires("libtorch/[>=1.13]")
        self.requires("fmt/[>=9]")

    def layout(self):
        cmake_layout(self)

    def generate(self):
        toolchain = CMakeToolchain(self)
        toolchain.cache_variables["TORCHKIT_BUILD_TESTS"] = False
        toolchain.cache_variables["TORCHKIT_BUILD_EXAMPLES"] = False
        toolchain.cache_variables["TORCHKIT_BUILD_BENCHMARKS"] = False
        toolchain.cache_variables["TORCHKIT_INSTALL"] = True
        toolchain.generate()

    def package(self):
        copy(self, "LICENSE", src=self.source_folder, dst=os.path.join(self.package_folder, "licenses"))
        cmake = CMake(self)
        cmake.configure()
        cmake.install()

    def package_id(self):
        self.info.clear()

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "torchkit")
        self.cpp_info.set_property("cmake_target_name", "torchkit::torchkit")
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.requires = ["libtorch::libtorch", "fmt::fmt"]
