"""README command #1 where data teams run it: the demo in fresh clones, oldest and newest Python.

Run through `bash scripts/fresh-clones [--keep]` (CI runs it before the suite). For the oldest
and the newest Python that `pyproject.toml` supports, it clones this repository's committed
HEAD into a new folder only its user may enter (`mktemp -d`; under root that is what a
container gives: the server's account cannot enter it), and there runs `bash scripts/demo`,
then `bash scripts/demo remove`, then the same with `--duckdb`, exactly as the README says,
with `UV_PYTHON` naming that Python. Each clone has venvs of its own, so the suite's are
never re-synced. It checks that the demo's server is stopped and its files are gone, and
deletes the clone.

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

from scripts.interpreters import find_interpreter, supported_versions

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
        if not problem:
            duckdb = run("bash", "scripts/demo", "--duckdb")
            problem, loaded = _duckdb_outcome(duckdb)
            first_run += f"; --duckdb: {loaded}"
            run("bash", "scripts/demo", "remove", timeout=300)
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


def _duckdb_outcome(demo: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """What went wrong with `--duckdb` (or an empty string), and what it did.

    Where the DuckDB loader has no wheel and no older Python is found to run it, saying so
    plainly is right.
    """
    if demo.returncode == 0:
        loaded = re.search(r"^Loaded into .*$", demo.stdout, re.MULTILINE)
        older = re.search(r"its plugins run on Python \S+", demo.stdout)
        done = (loaded.group() if loaded else "") + (f" ({older.group()})" if older else "")
        return ("", done) if loaded else ("`--duckdb` printed no `Loaded into` line", "")
    if "has no wheel for Python" in demo.stderr and "Install one" in demo.stderr:
        return "", "not run: no older Python to run target-duckdb with (said so)"
    return f"`bash scripts/demo --duckdb` exited {demo.returncode}: {demo.stderr[-1500:]}", ""


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
    supported = supported_versions()
    versions = dict.fromkeys((supported[0], supported[-1]))
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
