"""`python -m tests.emulator` serves the demo until SIGTERM, then exits cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def test_command_line_serves_demo_and_stops_on_sigterm() -> None:
    command = [
        sys.executable,
        "-m",
        "tests.emulator",
        "--port",
        "0",
        "--demo",
        "--api-key",
        "sk-cli",
        "--deleted-sources",
        "missing",
        "--no-pinned-counts",
    ]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        try:
            lines = [process.stdout.readline() for _ in range(3)]
            url = lines[1].rsplit(" ", 1)[-1].strip()
            assert url.startswith("http://127.0.0.1:")
            assert "sk-cli" in lines[2]
            with requests.Session() as session:
                session.headers["Authorization"] = "Bearer sk-cli"
                names = {
                    p["name"] for p in session.get(url + "/v1/project", timeout=5).json()["objects"]
                }
                dataset = session.get(url + "/v1/dataset", timeout=5).json()["objects"][0]
                count = f"SELECT count(1) AS n FROM dataset('{dataset['id']}')"  # noqa: S608
                body = {"query": count, "fmt": "json", "version": "1"}
                refused = session.post(url + "/btql", json=body, timeout=5)
            assert len(names) == 3
            assert refused.status_code == 400  # --no-pinned-counts
            assert "aggregate" in refused.json()["Message"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert process.stdout.read().strip() == "stopped"
        finally:
            if process.poll() is None:
                process.kill()
