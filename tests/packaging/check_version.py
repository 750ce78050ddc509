#!/usr/bin/env python3
"""Checks that every copy of torchkit's version number equals the one definition.

The version is written once, as TORCHKIT_VERSION_MAJOR/MINOR/PATCH in
include/torchkit/version.hpp (torchkit::version() is built from them). The packaging tools need
literal copies: CMakeLists.txt's project(torchkit VERSION ...), ports/torchkit/vcpkg.json's
"version" and conanfile.py's `version = ...`. Each must match; the message names the file that
does not.

    check_version.py <source-dir>
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path


def header_version(source: Path) -> str:
    text = (source / "include" / "torchkit" / "version.hpp").read_text()
    parts = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        match = re.search(rf"^#define TORCHKIT_VERSION_{part} (\d+)\s*$", text, flags=re.MULTILINE)
        if not match:
            raise SystemExit(f"FAIL  version.hpp has no '#define TORCHKIT_VERSION_{part} <number>'")
        parts.append(str(int(match.group(1))))
    if re.search(r'version\(\) noexcept \{ return "', text):
        raise SystemExit("FAIL  version.hpp: version() returns a literal; build it from the macros")
    return ".".join(parts)


def cmake_version(source: Path) -> str | None:
    match = re.search(r"project\(torchkit\s+VERSION\s+([0-9.]+)", (source / "CMakeLists.txt").read_text())
    return match.group(1) if match else None


def vcpkg_version(source: Path) -> str | None:
    manifest = json.loads((source / "ports" / "torchkit" / "vcpkg.json").read_text())
    return manifest.get("version")


def conan_version(source: Path) -> str | None:
    tree = ast.parse((source / "conanfile.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                        and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == "version"
                        and isinstance(statement.value, ast.Constant)):
                    return str(statement.value.value)
    return None


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    source = Path(sys.argv[1]).resolve()
    expected = header_version(source)
    print(f"ok    include/torchkit/version.hpp defines {expected}")
    failures = 0
    for name, found in (("CMakeLists.txt project(VERSION)", cmake_version(source)),
                        ("ports/torchkit/vcpkg.json \"version\"", vcpkg_version(source)),
                        ("conanfile.py version", conan_version(source))):
        if found == expected:
            print(f"ok    {name} is {found}")
        else:
            print(f"FAIL  {name} is {found!r}, but include/torchkit/version.hpp defines {expected}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
