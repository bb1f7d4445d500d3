"""The web page's fixtures: Debian's Chromium driven by Playwright, and real servers on ephemeral ports.

- `browser`: one headless Chromium for the session. A missing Chromium fails the
  tests (it is never a skip): `make test` installs it first (.ci/install-browser).
- `page`: a fresh browser context and page per test (so session storage starts
  empty) at desktop size; a JavaScript error on the page fails the test.
- `models`: session-wide template version folders (tests/ui/models.py): "plain"
  (no verify signature) and "verify".
- `ui_server(...)`: starts signflow's model server on a model folder of its own and
  returns a UiServer (`.url`, `.page_url`, `.base`, `.feedback_dir`, `.thread`); stopped at
  teardown. `shared_server`: one such server per module, for tests that change nothing.
- `app_server(app)`: any Starlette app on 127.0.0.1; `ui_command_server(api)`: `signflow ui
  --api api` (serving.ui_command) that way.

Waiting is on page state (Playwright's auto-waiting locators and `expect`), never on time.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.server import ServerThread
from tests.serving.conftest import install_version, make_settings
from tests.ui.models import build_model, write_push_record, write_training_status

MODEL = "signatures"
TOKEN = "s3cret-token-for-the-page"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Playwright's waits: a hang guard for two cores shared with other jobs, not a speed claim.
WAIT_MS = 30_000


def chromium_path() -> str | None:
    """Debian's chromium ($SIGNFLOW_CHROMIUM overrides), or None."""
    override = os.environ.get("SIGNFLOW_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser():
    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is not installed: run .ci/install-browser (make test does) or "
                    "apt-get install -y chromium; the browser tests do not skip without it", pytrace=False)
    from playwright.sync_api import expect, sync_playwright

    # `expect` keeps its own limit (5 s), which the contexts' default timeout does not change.
    expect.set_options(timeout=WAIT_MS)
    # Root cannot use Chromium's sandbox (CI runs as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=args)
        yield chromium
        chromium.close()


def open_page(browser, viewport=DESKTOP, **options):
    """A new context and page; returns (context, page, errors): the page's uncaught JavaScript errors."""
    context = browser.new_context(viewport=viewport, **options)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors


@pytest.fixture
def page(browser):
    context, page, errors = open_page(browser)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ui_models")
    return {"plain": build_model(root / "plain"), "verify": build_model(root / "verify", verify=True),
            "open_set": build_model(root / "open_set", verify=True, open_set=True)}


@dataclass
class UiServer:
    thread: ServerThread
    base: Path
    feedback_dir: Path
    status_file: Path

    @property
    def url(self) -> str:
        return self.thread.rest_url

    @property
    def page_url(self) -> str:
        return f"{self.url}/ui/"


def start_ui_server(folder: Path, template: Path, versions=(1,), token: str = "", lineage: bool = True,
                    **flags) -> UiServer:
    """signflow's model server on `folder`/models/MODEL holding `versions` of `template`, with push records
    (with their lineage and per-signer figures unless `lineage` is False), a training status file and a
    feedback folder (unless the flags say otherwise)."""
    base = folder / "models" / MODEL
    base.mkdir(parents=True, exist_ok=True)
    for version in versions:
        install_version(template, base, version)
        write_push_record(base, version, f"run-{version}", 0.90 + version / 100, lineage=lineage)
    status = write_training_status(folder / "status.json", pushed_version=max(versions) if versions else None)
    flags.setdefault("feedback_dir", str(folder / "inbox"))
    flags.setdefault("training_status_file", str(status))
    settings = make_settings(model_name=MODEL, model_base_path=str(base), feedback_token=token, **flags)
    thread = ServerThread(settings).start()
    return UiServer(thread, base, Path(flags["feedback_dir"] or folder / "inbox"), status)


@pytest.fixture
def ui_server(models, tmp_path):
    """Factory: ui_server(model="plain", versions=(1,), token="", lineage=True, **flags) -> a running UiServer."""
    started: list[UiServer] = []

    def start(model: str = "plain", **options) -> UiServer:
        server = start_ui_server(tmp_path / f"server{len(started)}", models[model], **options)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.thread.stop()


@pytest.fixture(scope="module")
def shared_server(models, tmp_path_factory):
    """One server of the "plain" model (version 1, no token) for the tests of a module that change nothing."""
    server = start_ui_server(tmp_path_factory.mktemp("shared_ui_server"), models["plain"])
    yield server
    server.thread.stop()


class AppServer:
    """A Starlette app under uvicorn on 127.0.0.1 (an ephemeral port), on its own thread."""

    def __init__(self, app):
        import uvicorn

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self) -> "AppServer":
        self._thread.start()
        pause = threading.Event()
        while not self._server.started:  # uvicorn's own flag: set once the socket accepts
            if not self._thread.is_alive():
                raise RuntimeError("the app did not start")
            pause.wait(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()


@pytest.fixture
def app_server():
    """Factory: app_server(app) -> a running AppServer; all are stopped at teardown."""
    started: list[AppServer] = []

    def start(app) -> AppServer:
        server = AppServer(app).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def ui_command_server(app_server):
    """Factory: ui_command_server(api, models) -> `signflow ui --api api` (serving.ui_command) on a thread."""
    from serving.ui_command import create_app

    def start(api: str, models=(MODEL,)) -> AppServer:
        return app_server(create_app(api, list(models), timeout=30))

    return start
