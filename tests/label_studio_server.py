"""A real Label Studio server for the tests: its own virtual environment (``make label-studio``), a migrated
data directory built once per test session, a server on a free 127.0.0.1 port, stopped at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).parents[1]
EXECUTABLE = Path(os.environ.get("LABEL_STUDIO_BIN", ROOT / ".venv-label-studio" / "bin" / "label-studio"))
USER, PASSWORD = "annotator@example.com", "annotator-password-1"
TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # a legacy token fixed at init (tests only)
QUIET = {"LATEST_VERSION_CHECK": "false", "COLLECT_ANALYTICS": "false", "DJANGO_LOG_LEVEL": "WARNING"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_label_studio() -> Path:
    if EXECUTABLE.exists():
        return EXECUTABLE
    message = f"Label Studio is not installed at {EXECUTABLE} (run `make label-studio`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def init_data_dir(data_dir: Path) -> float:
    """Migrate a fresh data directory with one user and a legacy token; returns the seconds it took."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(require_label_studio()),
            "init",
            "--data-dir",
            str(data_dir),
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ],
        env={**os.environ, **QUIET, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=data_dir.parent,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return time.perf_counter() - started


@dataclass
class Server:
    url: str
    token: str
    process: subprocess.Popen
    start_seconds: float

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def start_server(data_dir: Path, log: Path) -> Server:
    """``label-studio start`` on ``data_dir`` (already migrated), ready when ``/health`` answers."""
    port = free_port()
    started = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(
            [
                str(require_label_studio()),
                "start",
                "--data-dir",
                str(data_dir),
                "--no-browser",
                "--port",
                str(port),
                "--internal-host",
                "127.0.0.1",
            ],
            env={**os.environ, **QUIET, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir)},
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=data_dir.parent,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return Server(url, TOKEN, process, time.perf_counter() - started)
        except requests.RequestException:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"Label Studio did not answer /health within 180 s: {log.read_text()[-2000:]}")


def template_data_dir(factory: pytest.TempPathFactory) -> Path:
    """One migrated data directory per test session (migrations take tens of seconds; a copy starts in seconds)."""
    root = factory.getbasetemp() / "label-studio-template"
    if not (root / "label_studio.sqlite3").exists():
        root.mkdir(exist_ok=True)
        seconds = init_data_dir(root)
        (root.parent / "label-studio-init-seconds").write_text(f"{seconds:.1f}")
    return root


def fresh_server(factory: pytest.TempPathFactory) -> Server:
    """A server on a copy of the template data directory."""
    template = template_data_dir(factory)
    data_dir = factory.mktemp("label-studio-data")
    shutil.copytree(template, data_dir, dirs_exist_ok=True)
    return start_server(data_dir, data_dir / "server.log")


class Annotator:
    """Posts annotations through the REST API, as a person in the Label Studio UI would."""

    def __init__(self, server: Server) -> None:
        self.url = server.url
        self.headers = {"Authorization": f"Token {server.token}"}

    def tasks(self, project: int) -> list[dict]:
        answer = requests.get(
            f"{self.url}/api/projects/{project}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
            headers=self.headers,
            timeout=60,
        )
        answer.raise_for_status()
        return answer.json()

    def annotate(self, task_id: int, choices: list[str] | None, cancelled: bool = False) -> None:
        result = (
            []
            if choices is None
            else [{"from_name": "label", "to_name": "sample", "type": "choices", "value": {"choices": choices}}]
        )
        answer = requests.post(
            f"{self.url}/api/tasks/{task_id}/annotations/",
            json={"result": result, "was_cancelled": cancelled},
            headers=self.headers,
            timeout=30,
        )
        answer.raise_for_status()

    def delete(self, task_id: int) -> None:
        requests.delete(f"{self.url}/api/tasks/{task_id}/", headers=self.headers, timeout=30).raise_for_status()
