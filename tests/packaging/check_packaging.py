#!/usr/bin/env python3
"""Checks the vcpkg overlay port and the Conan recipe as far as possible offline.

- ports/torchkit/vcpkg.json parses, names torchkit at the project's version, depends on
  libtorch and fmt;
- the exact -D options portfile.cmake passes to vcpkg_cmake_configure configure and install
  this tree, giving share/torchkit/torchkitConfig.cmake (where vcpkg_cmake_config_fixup looks),
  the headers, and no lib/;
- ports/torchkit/usage shows find_package and the target;
- conanfile.py parses (ast), declares package_type = "header-library", the version, and
  requires libtorch and fmt.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

failures: list[str] = []


def check(condition: bool, message: str) -> None:
    print(("ok    " if condition else "FAIL  ") + message)
    if not condition:
        failures.append(message)


def project_version(source: Path) -> str:
    text = (source / "CMakeLists.txt").read_text()
    match = re.search(r"project\(torchkit\s+VERSION\s+([0-9.]+)", text)
    assert match, "no project(torchkit VERSION ...) in CMakeLists.txt"
    return match.group(1)


def portfile_options(portfile: str) -> list[str]:
    call = re.search(r"vcpkg_cmake_configure\((.*?)\n\)", portfile, flags=re.DOTALL)
    assert call, "portfile.cmake has no vcpkg_cmake_configure(...) call"
    body = call.group(1)
    options = body.split("OPTIONS", 1)[1] if "OPTIONS" in body else ""
    return re.findall(r"-D[A-Za-z0-9_]+=[^\s)]+", options)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--cmake", default="cmake")
    parser.add_argument("--generator", default="Ninja")
    parser.add_argument("--cxx-compiler", default="c++")
    parser.add_argument("--torch-dir", default="")
    parser.add_argument("--fmt-dir", default="")
    args = parser.parse_args()
    source: Path = args.source_dir.resolve()
    version = project_version(source)

    # vcpkg manifest
    manifest = json.loads((source / "ports/torchkit/vcpkg.json").read_text())
    check(manifest.get("name") == "torchkit", "vcpkg.json names the port torchkit")
    check(manifest.get("version") == version, f"vcpkg.json version is the project's ({version})")
    dependencies = {d if isinstance(d, str) else d.get("name") for d in manifest.get("dependencies", [])}
    check({"libtorch", "fmt"} <= dependencies, "vcpkg.json depends on libtorch and fmt")
    check({"vcpkg-cmake", "vcpkg-cmake-config"} <= dependencies, "vcpkg.json has the vcpkg-cmake helper ports")

    # portfile: the options it passes really configure and install this tree
    portfile = (source / "ports/torchkit/portfile.cmake").read_text()
    options = portfile_options(portfile)
    print("portfile options:", " ".join(options))
    check("-DTORCHKIT_INSTALL=ON" in options, "portfile switches TORCHKIT_INSTALL on")
    for name in ("TESTS", "EXAMPLES", "BENCHMARKS"):
        check(f"-DTORCHKIT_BUILD_{name}=OFF" in options, f"portfile switches TORCHKIT_BUILD_{name} off")
    fixup = re.search(r"vcpkg_cmake_config_fixup\(\s*CONFIG_PATH\s+(\S+?)\s*\)", portfile)
    check(fixup is not None and fixup.group(1) == "share/torchkit", "portfile fixes up share/torchkit")

    work: Path = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    build, prefix = work / "build", work / "prefix"
    configure = [args.cmake, "-S", str(source), "-B", str(build), "-G", args.generator,
                 f"-DCMAKE_CXX_COMPILER={args.cxx_compiler}", f"-DCMAKE_INSTALL_PREFIX={prefix}", *options]
    if args.torch_dir:
        configure.append(f"-DTorch_DIR={args.torch_dir}")
    if args.fmt_dir:
        configure.append(f"-Dfmt_DIR={args.fmt_dir}")
    for command in (configure, [args.cmake, "--build", str(build)], [args.cmake, "--install", str(build)]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout, result.stderr)
        check(result.returncode == 0, "runs: " + " ".join(command[:3]) + " ...")
        if result.returncode != 0:
            return 1
    check((prefix / "share/torchkit/torchkitConfig.cmake").is_file(), "installs share/torchkit/torchkitConfig.cmake")
    check((prefix / "share/torchkit/torchkitConfigVersion.cmake").is_file(), "installs the version file")
    check((prefix / "include/torchkit/torchkit.hpp").is_file(), "installs include/torchkit/torchkit.hpp")
    check((prefix / "include/torchkit/opencv.hpp").is_file(), "installs include/torchkit/opencv.hpp")
    check(not (prefix / "lib").exists(), "installs no lib/ (header-only)")
    check(not any(build.glob("**/*.o")), "the port's configuration compiles nothing")
    installed = sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file())
    print("installed files:\n  " + "\n  ".join(installed))
    headers = sorted(p.relative_to(source / "include").as_posix() for p in (source / "include").rglob("*.hpp"))
    check(all(f"include/{h}" in installed for h in headers), "installs every header under include/")

    usage = (source / "ports/torchkit/usage").read_text()
    check("find_package(torchkit CONFIG REQUIRED)" in usage and "torchkit::torchkit" in usage,
          "usage shows find_package and torchkit::torchkit")

    # Conan recipe
    tree = ast.parse((source / "conanfile.py").read_text())
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    check(len(classes) == 1, "conanfile.py defines one recipe class")
    attributes = {}
    requires: list[str] = []
    for node in ast.walk(classes[0]):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                attributes[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "requires"
                and node.args and isinstance(node.args[0], ast.Constant)):
            requires.append(node.args[0].value)
    check(attributes.get("package_type") == "header-library", 'conanfile.py: package_type = "header-library"')
    check(attributes.get("name") == "torchkit", "conanfile.py: name = torchkit")
    check(attributes.get("version") == version, f"conanfile.py: version = {version}")
    check(any(r.startswith("libtorch/") for r in requires) and any(r.startswith("fmt/") for r in requires),
          "conanfile.py requires libtorch and fmt")

    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
