#!/usr/bin/env python3
"""Checks that `tools/amalgamate.py --check` catches a stale single header and names the header.

Works on a copy of include/, tools/ and single_include/ in a temporary directory, so the source
tree is never touched: first the copy must pass --check, then a header is touched and --check
must fail naming that header, then regenerating must make --check pass again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

source = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]


def amalgamate(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "tools/amalgamate.py"), *args], capture_output=True, text=True)


with tempfile.TemporaryDirectory() as temporary:
    root = Path(temporary)
    for folder in ("include", "tools", "single_include"):
        shutil.copytree(source / folder, root / folder)

    # A copy of an up-to-date tree passes (regenerate first: the source tree may be mid-edit).
    amalgamate(root)
    result = amalgamate(root, "--check")
    assert result.returncode == 0, f"fresh copy should pass --check:\n{result.stdout}{result.stderr}"

    # Touch one header: --check fails and names it.
    header = root / "include/torchkit/error.hpp"
    header.write_text(header.read_text() + "\n// touched\n")
    result = amalgamate(root, "--check")
    print(result.stdout)
    assert result.returncode != 0, "--check must fail after a header is touched"
    assert "differs: torchkit/error.hpp" in result.stdout, "--check must name the stale header"

    # Regenerating fixes it; the banner says the file is generated.
    amalgamate(root)
    assert amalgamate(root, "--check").returncode == 0, "--check must pass after regenerating"
    text = (root / "single_include/torchkit/torchkit.hpp").read_text()
    assert "GENERATED FILE" in text and "DO NOT EDIT" in text, "the banner is missing"
    assert not re.search(r'^\s*#\s*include\s*[<"]torchkit/', text, flags=re.MULTILINE), "a torchkit include was left"
    assert text.count("#pragma once") == 1, "exactly one #pragma once"
    for path in (root / "include").rglob("*.hpp"):
        relative = path.relative_to(root / "include").as_posix()
        assert text.count(f"// ---- begin {relative} ----") == 1, f"{relative} must be inlined exactly once"

print("amalgamate --check detects stale headers")
