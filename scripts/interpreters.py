"""The Pythons the package supports, and where this machine has them.

Found by running them: pyenv shims answer `command -v` for every version, then fail for
those not selected.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def supported_versions() -> list[str]:
    """Every `X.Y` the package claims (its classifiers, which CI tests), oldest first."""
    text = (ROOT / "pyproject.toml").read_text()
    versions = sorted(
        {tuple(map(int, found)) for found in re.findall(r"Python :: (\d+)\.(\d+)\"", text)}
    )
    if not versions:
        message = "pyproject.toml lists no `Programming Language :: Python :: X.Y` classifier"
        raise SystemExit(message)
    return ["{}.{}".format(*version) for version in versions]


def find_interpreter(version: str) -> Path | None:
    """A Python `version` that really runs: on PATH, the system's, uv's or pyenv's."""
    home = Path.home()
    pyenv = Path(os.environ.get("PYENV_ROOT") or home / ".pyenv")
    candidates = [
        shutil.which(f"python{version}"),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
        *sorted(
            map(str, pyenv.glob(f"versions/{version}.*/bin/python{version}")),
            reverse=True,
        ),
        *sorted(
            map(str, home.glob(f".local/share/uv/python/cpython-{version}.*/bin/python{version}")),
            reverse=True,
        ),
    ]
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            done = subprocess.run(  # noqa: S603 - interpreters found on this machine
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return Path(candidate)
    return None
