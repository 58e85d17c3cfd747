"""README command #1 where data teams run it: the demo in fresh clones, oldest and newest Python.

Run through `bash scripts/fresh-clones [--keep]` (CI runs it before the suite). For the oldest
and the newest Python that `pyproject.toml` supports, it clones this repository's committed
HEAD into a new folder only its user may enter (`mktemp -d`; under root that is what a
container gives: the server's account cannot enter it), and there runs `bash scripts/demo`,
then `bash scripts/demo remove`, exactly as the README says, with `UV_PYTHON` naming that
Python. Each clone has venvs of its own, so the suite's are never re-synced. Then it checks
that the demo's server is stopped and its files are gone, and deletes the clone.

Interpreters are found by running them: pyenv shims answer `command -v` and then fail.
Fewer than two found is said in the output; none found fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_TIMEOUT = 1800  # seconds; a fresh clone installs its venvs first
EXPECTED_LINES = ("Second run, incremental:", "The database stays up for you")
# Settings of the developer's own pipeline that must not reach a clone's demo.
_OWN_PREFIXES = ("TAP_BRAINTRUST_", "TARGET_", "MELTANO_", "PG", "UV_", "VIRTUAL_ENV")


@dataclass(frozen=True)
class Outcome:
    """How the demo went in one fresh clone."""

    python: str
    interpreter: Path
    passed: bool
    seconds: float
    detail: str


def supported_versions() -> tuple[str, str]:
    """The oldest and newest `X.Y` the package claims (its classifiers, which CI tests)."""
    text = (ROOT / "pyproject.toml").read_text()
    versions = sorted(
        {tuple(map(int, found)) for found in re.findall(r"Python :: (\d+)\.(\d+)\"", text)}
    )
    if not versions:
        message = "pyproject.toml lists no `Programming Language :: Python :: X.Y` classifier"
        raise SystemExit(message)
    return "{}.{}".format(*versions[0]), "{}.{}".format(*versions[-1])


def find_interpreter(version: str) -> Path | None:
    """A Python `version` that really runs: on PATH, the system's, uv's or pyenv's."""
    home = Path.home()
    candidates = [
        shutil.which(f"python{version}"),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
        *sorted(
            map(str, home.glob(f".pyenv/versions/{version}.*/bin/python{version}")),
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


def clone_environment(interpreter: Path) -> dict[str, str]:
    """This environment without pipeline settings, the Python chosen, and our `uv` on PATH."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    path = environment.get("PATH", "/usr/bin:/bin")
    return {
        **environment,
        "PATH": f"{Path(uv).parent}{os.pathsep}{path}",
        "UV_PYTHON": str(interpreter),
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def demo_in_fresh_clone(version: str, interpreter: Path, *, keep: bool) -> Outcome:
    """Clone, run the demo, remove it, check nothing is left running; the clone deleted."""
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="tap-braintrust-clone-"))  # mode 0700
    clone = folder / "tap-braintrust"
    environment = clone_environment(interpreter)
    log = folder / "demo.log"

    def run(*command: str, timeout: float = DEMO_TIMEOUT) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(  # noqa: S603 - the README's commands
            command,
            cwd=clone,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with log.open("a") as file:
            file.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
        return done

    problem, first_run = "", ""
    try:
        subprocess.run(  # noqa: S603
            [_git(), "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)],
            check=True,
            timeout=300,
        )
        demo = run("bash", "scripts/demo")
        first_run = _first_run(demo)
        removed = run("bash", "scripts/demo", "remove", timeout=300)
        problem = _problem(demo, removed, clone)
    except subprocess.SubprocessError as error:  # a clone that failed, a command that hung
        problem = str(error)
        if clone.exists():
            run("bash", "scripts/demo", "remove", timeout=300)  # stop what it started
    finally:
        seconds = time.monotonic() - started
        if (problem or keep) and log.exists():
            shutil.copyfile(log, Path(tempfile.gettempdir()) / f"fresh-clone-{version}.log")
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    detail = problem or first_run
    return Outcome(version, interpreter, passed=not problem, seconds=seconds, detail=detail)


def _git() -> str:
    git = shutil.which("git")
    if git is None:
        message = "git is not installed"
        raise SystemExit(message)
    return git


def _problem(
    demo: subprocess.CompletedProcess[str], removed: subprocess.CompletedProcess[str], clone: Path
) -> str:
    """What went wrong, or an empty string."""
    if demo.returncode != 0:
        return f"`bash scripts/demo` exited {demo.returncode}: {demo.stderr.strip()[-1500:]}"
    missing = [line for line in EXPECTED_LINES if line not in demo.stdout]
    if missing:
        return f"the demo's output lacks {missing}"
    if removed.returncode != 0:
        return f"`bash scripts/demo remove` exited {removed.returncode}: {removed.stderr[-800:]}"
    server_files = clone / "output" / "postgres"
    if server_files.exists() or server_files.is_symlink():
        return "`bash scripts/demo remove` left output/postgres behind"
    linked = re.search(r"-> (\S+), where the server's account", demo.stdout)
    if linked and Path(linked.group(1)).exists():
        return f"`bash scripts/demo remove` left {linked.group(1)} behind"
    return ""


def _first_run(demo: subprocess.CompletedProcess[str]) -> str:
    """The demo's line about its first `meltano run`."""
    return next((line for line in demo.stdout.splitlines() if line.startswith("First run")), "")


def main() -> int:
    """Run the check; 0 when every demo found passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the clones and their logs")
    args = parser.parse_args()
    who = "root" if os.geteuid() == 0 else "a user"
    print(f"fresh clones: the demo as {who}, each clone in a folder only its user may enter")
    outcomes: list[Outcome] = []
    versions = dict.fromkeys(supported_versions())
    found = {version: find_interpreter(version) for version in versions}
    for version, interpreter in found.items():
        if interpreter is None:
            print(f"  Python {version}: not found on this machine, not checked")
            continue
        outcome = demo_in_fresh_clone(version, interpreter, keep=args.keep)
        outcomes.append(outcome)
        verdict = "passed" if outcome.passed else "FAILED"
        print(
            f"  Python {version} ({interpreter}): {verdict} in {outcome.seconds:.0f} s"
            f"  {outcome.detail}",
            flush=True,
        )
    if len(outcomes) < len(versions):
        print(f"fresh clones: only {len(outcomes)} of the {len(versions)} Pythons were found")
    if not outcomes:
        return 1
    return 0 if all(outcome.passed for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
