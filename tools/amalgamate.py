#!/usr/bin/env python3
"""Generates single_include/torchkit/torchkit.hpp from include/torchkit/torchkit.hpp.

Every `#include <torchkit/...>` is replaced by that header's text, each header inlined once,
in the order the umbrella header first reaches it. `#pragma once` lines of inlined headers are
dropped (the generated file has its own). Headers under `#if` blocks (opencv.hpp) are inlined
where they are included, so the preprocessor condition still guards them.

    python3 tools/amalgamate.py           # regenerate
    python3 tools/amalgamate.py --check   # exit 1 and name the stale header if out of date

Python standard library only.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INCLUDE_DIR = ROOT / "include"
UMBRELLA = INCLUDE_DIR / "torchkit" / "torchkit.hpp"
OUTPUT = ROOT / "single_include" / "torchkit" / "torchkit.hpp"

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*[<"](torchkit/[^>"]+)[>"]')
PRAGMA_ONCE_RE = re.compile(r"^\s*#\s*pragma\s+once\s*$")
BEGIN_MARK = "// ---- begin {} ----"
END_MARK = "// ---- end {} ----"

BANNER = """\
// torchkit — single-header edition.
//
// GENERATED FILE — DO NOT EDIT. It is produced by tools/amalgamate.py from include/torchkit/;
// edit those headers and run `python3 tools/amalgamate.py` instead.
//
// Copy this one file into a project, then compile with C++20 and link LibTorch and fmt.
// Define TORCHKIT_WITH_CUDA=1 when LibTorch's CUDA libraries are linked, and
// TORCHKIT_WITH_OPENCV=1 to get the cv::Mat adapters (needs OpenCV).
//
// SPDX-License-Identifier: MIT
"""


def amalgamate() -> str:
    """Returns the text of the single header."""
    inlined: set[Path] = set()
    out: list[str] = [BANNER, "#pragma once\n"]

    def inline(path: Path) -> None:
        inlined.add(path)
        relative = path.relative_to(INCLUDE_DIR).as_posix()
        out.append(BEGIN_MARK.format(relative) + "\n")
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if PRAGMA_ONCE_RE.match(line):
                continue
            match = INCLUDE_RE.match(line)
            if match:
                target = (INCLUDE_DIR / match.group(1)).resolve()
                if not target.is_file():
                    raise SystemExit(f"amalgamate: {relative} includes missing header {match.group(1)}")
                if target not in inlined:
                    inline(target)
                continue
            out.append(line if line.endswith("\n") else line + "\n")
        out.append(END_MARK.format(relative) + "\n")

    inline(UMBRELLA.resolve())
    return "".join(out)


def own_sections(text: str) -> dict[str, list[str]]:
    """Each inlined header's own lines (without the headers nested in it), by header name."""
    sections: dict[str, list[str]] = {}
    stack: list[str] = []
    for line in text.splitlines():
        begin = re.fullmatch(r"// ---- begin (\S+) ----", line)
        end = re.fullmatch(r"// ---- end (\S+) ----", line)
        if begin:
            stack.append(begin.group(1))
            sections.setdefault(stack[-1], [])
        elif end and stack:
            stack.pop()
        elif stack:
            sections[stack[-1]].append(line)
    return sections


def stale_headers(current: str, expected: str) -> list[str]:
    """Names the headers whose inlined text differs between the two versions."""
    now, wanted = own_sections(current), own_sections(expected)
    names = list(wanted) + [name for name in now if name not in wanted]
    return [name for name in names if now.get(name) != wanted.get(name)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="do not write; fail if the committed file is stale")
    args = parser.parse_args()

    expected = amalgamate()
    if args.check:
        if not OUTPUT.is_file():
            print(f"amalgamate: {OUTPUT.relative_to(ROOT)} does not exist; run python3 tools/amalgamate.py")
            return 1
        current = OUTPUT.read_text(encoding="utf-8")
        if current == expected:
            print(f"amalgamate: {OUTPUT.relative_to(ROOT)} is up to date")
            return 0
        stale = stale_headers(current, expected)
        print(f"amalgamate: {OUTPUT.relative_to(ROOT)} is out of date with include/; run python3 tools/amalgamate.py")
        for header in stale or ["(the banner or the order of headers)"]:
            print(f"  differs: {header}")
        diff = difflib.unified_diff(current.splitlines(), expected.splitlines(), "committed", "generated", n=1, lineterm="")
        for i, line in enumerate(diff):
            if i >= 20:
                print("  ...")
                break
            print("  " + line)
        return 1

    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(expected, encoding="utf-8")
    print(f"amalgamate: wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
