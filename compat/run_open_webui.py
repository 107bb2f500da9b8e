"""`make compat`: ember under a real client, Open WebUI, driven through its own page in headless Chromium.

Not part of `make test`: Open WebUI is a large install (its own environment, .compat/venv, about 3 GB) and a run takes
minutes. `make compat` installs what is missing, then runs this script with that environment's Python.

What it does, everything on 127.0.0.1 and nothing downloaded:

  1. `ember pull smollm2` into a temporary EMBER_HOME, then `ember serve` on a free port;
  2. a recording pass-through in front of ember (compat/ember_recorder.py): each exchange Open WebUI has with ember,
     with its status and how the answer arrived, goes to ember-requests.jsonl, so a failure names the exact request;
  3. `open-webui serve` offline (the settings are OPEN_WEBUI_ENV below; the README's Open WebUI section lists them)
     with a temporary DATA_DIR, on a free port;
  4. Debian's Chromium, headless, through playwright (no browser download); every request the page makes to any
     host other than 127.0.0.1 is refused and listed in the report.

Then the steps, each checked in the real page, with Open WebUI's default settings (nothing is switched off):

  01-models          the model selector lists smollm2:latest
  02-chat-streamed   a typed message gets an answer, and the answer grows on the page while it is written
  03-document        a Markdown file attached to a chat is retrieved (the answer names it as its source) and reached
                     ember in the prompt
  04-pull            Admin Settings > Models > Actions > Manage: pull smollm2:135m (a bundled tag, installed offline)
  05-copy            the same dialog's "Create a model" from smollm2:135m (the copy the page offers), and Ollama's
                     /api/copy through Open WebUI's own /ollama/api/copy route, called from the page with its token
                     (Open WebUI's page has no copy button; its backend forwards the route)
  06-delete          the same dialog's "Delete a model", for both copies

Each effect of 04-06 is checked on ember's side with its /api/tags. Screenshots (01-models.png, …), report.json,
and the logs of the three servers go to compat/screenshots/. The script exits non-zero, naming each failed step and
why, and prints a table of steps with their time.

    .compat/venv/bin/python compat/run_open_webui.py [--steps 01,04] [--keep]

For diagnosis, not the acceptance run: --model NAME --modelfile PATH runs the chat steps on a model of your own
(created in the temporary store first), and --legacy-function-calling sets Open WebUI's Function Calling to Legacy
(no built-in tools sent to the model); the report lists any setting so changed.
"""

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# This runs in Open WebUI's environment, where ember is not installed; the harness needs only the stdlib and httpx.
sys.path.insert(0, str(REPO / "src"))
from ember.bench.harness import ember_env, free_port  # noqa: E402

SHOTS = REPO / "compat" / "screenshots"
EMBER = REPO / ".venv" / "bin" / "ember"

MODEL = "smollm2:latest"  # the bundled model, what `ember pull smollm2` installs
PULL_MODEL = "smollm2:135m"  # another bundled tag: "pulled" from the admin page, offline
CREATE_COPY = "smollm2-copy:latest"  # made by the admin page's "Create a model" from PULL_MODEL
API_COPY = "smollm2-cp:latest"  # made by Ollama's /api/copy, through Open WebUI's /ollama/api/copy
CHAT_PROMPT = "Hello! What is the capital of France?"
DOC_NAME = "ember-facts.md"
DOC_FACT_WORD = "Ugolyok"
DOC_TEXT = f"""# Ember facts

The ember project's mascot is a fox named {DOC_FACT_WORD}.

- {DOC_FACT_WORD} means "little coal" in Russian.
- {DOC_FACT_WORD} lives in the ember repository and guards the model store.
"""
DOC_QUESTION = "What is the name of the ember project's mascot? Answer from the attached document."

# Open WebUI 0.12.4, offline, without accounts, talking to ember as its one Ollama connection. OLLAMA_BASE_URL and
# DATA_DIR are added per run.
OPEN_WEBUI_ENV = {
    "OFFLINE_MODE": "true",  # no Hugging Face downloads (sets HF_HUB_OFFLINE), no version check, no pip installs
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ENABLE_VERSION_UPDATE_CHECK": "False",
    "WEBUI_AUTH": "False",  # single-user mode: the page signs in as the admin by itself
    "ENABLE_OPENAI_API": "False",  # ember is reached through the Ollama connection alone
    "RAG_EMBEDDING_ENGINE": "ollama",  # embeddings from ember's /api/embed, not a sentence-transformers download
    "RAG_EMBEDDING_MODEL": MODEL,
    "ANONYMIZED_TELEMETRY": "False",  # chromadb
    "DO_NOT_TRACK": "true",
    "SCARF_NO_ANALYTICS": "true",
}

# Each wait on the page, in seconds. An answer can be slow: Open WebUI asks the model for retrieval queries, a title,
# tags and follow-ups beside the answer itself, on two CPU cores.
ANSWER_TIMEOUT = 300
PAGE_TIMEOUT = 30


class StepFailed(Exception):
    """A check that did not hold; its message is what the report says."""


# -- processes ------------------------------------------------------------------------------------------------------

class Service:
    """A server in its own process group (so that everything it starts is stopped with it), its output in a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path):
        self.name, self.cmd, self.env, self.log_path, self.cwd = name, cmd, env, log, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Service":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StepFailed(f"{self.name} exited with {self.proc.returncode} while starting; "
                                 f"its log ends:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise StepFailed(f"{self.name} did not answer {url} within {timeout:.0f}s; its log ends:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def http_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


# -- the run --------------------------------------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    title: str
    run: Callable[[], str]
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""
    error: str = ""
    screenshots: list[str] = field(default_factory=list)


class Compat:
    def __init__(self, args):
        self.args = args
        self.model = args.model
        self.tmp = Path(tempfile.mkdtemp(prefix="ember-compat-"))
        self.logs = SHOTS / "logs"
        self.services: list[Service] = []
        self.blocked: list[str] = []
        self.ws_events: list[dict] = []  # Open WebUI's socket.io events to the page, with the time they came
        self.page = None
        self.browser = None
        self.playwright = None
        self.ember_url = self.webui_url = ""
        self.versions: dict[str, str] = {}
        self.current: Step | None = None
        self.changelog_closed = False
        self.changed_settings: dict[str, str] = {}  # Open WebUI settings changed from its defaults (none, unless asked)
        self.steps = [
            Step("01-models", "the model selector lists the bundled model", self.step_models),
            Step("02-chat-streamed", "a typed message gets a streamed answer", self.step_chat),
            Step("03-document", "an attached Markdown document is answered from", self.step_document),
            Step("04-pull", "a model is pulled from the admin page", self.step_pull),
            Step("05-copy", "a model is copied from the admin page", self.step_copy),
            Step("06-delete", "a model is deleted from the admin page", self.step_delete),
        ]

    # -- setup ------------------------------------------------------------------------------------------------------

    def start(self) -> None:
        ember_home = self.tmp / "ember-home"
        ember_port, recorder_port, webui_port = free_port(), free_port(), free_port()
        self.ember_url = f"http://127.0.0.1:{ember_port}"
        self.webui_url = f"http://127.0.0.1:{webui_port}"
        recorder_url = f"http://127.0.0.1:{recorder_port}"
        env = ember_env(ember_home, ember_port)

        print(f"compat: ember pull smollm2 (EMBER_HOME={ember_home})", flush=True)
        pulled = subprocess.run([str(EMBER), "pull", "smollm2", "--quiet"], env=env, capture_output=True, text=True)
        if pulled.returncode != 0:
            raise StepFailed(f"ember pull smollm2 failed: {pulled.stderr.strip() or pulled.stdout.strip()}")
        self.versions["ember"] = subprocess.run([str(EMBER.parent / "python"), "-c",
                                                 "import importlib.metadata as m; print(m.version('ember'))"],
                                                capture_output=True, text=True).stdout.strip() or "?"

        print(f"compat: ember serve on {self.ember_url}", flush=True)
        ember = Service("ember serve", [str(EMBER), "serve"], env, self.logs / "ember.log", self.tmp).start()
        self.services.append(ember)
        ember.wait_ready(self.ember_url + "/api/version", 120)
        if self.args.modelfile:  # a model of your own for the chat steps (--model NAME --modelfile PATH)
            made = subprocess.run([str(EMBER), "create", self.model, "-f", self.args.modelfile], env=env,
                                  capture_output=True, text=True)
            if made.returncode != 0:
                raise StepFailed(f"ember create {self.model} failed: {made.stderr.strip() or made.stdout.strip()}")
        if self.model not in self.ember_tags():
            raise StepFailed(f"ember's /api/tags does not list {self.model} after `ember pull smollm2`")

        recorder = Service("ember recorder", [sys.executable, str(REPO / "compat" / "ember_recorder.py"),
                                              "--listen", f"127.0.0.1:{recorder_port}", "--upstream", self.ember_url,
                                              "--log", str(self.logs / "ember-requests.jsonl"),
                                              "--watch", DOC_FACT_WORD],
                           {**os.environ, "PYTHONUNBUFFERED": "1"}, self.logs / "recorder.log", self.tmp).start()
        self.services.append(recorder)
        recorder.wait_ready(recorder_url + "/api/version", 30)

        print(f"compat: open-webui serve on {self.webui_url} (OLLAMA_BASE_URL={recorder_url} -> ember)", flush=True)
        webui_env = {**os.environ, **OPEN_WEBUI_ENV,
                     "OLLAMA_BASE_URL": recorder_url,
                     "DATA_DIR": str(self.tmp / "open-webui"),
                     "WEBUI_SECRET_KEY": secrets.token_hex(16),
                     "CORS_ALLOW_ORIGIN": self.webui_url,
                     "PYTHONUNBUFFERED": "1"}
        (self.tmp / "open-webui").mkdir()
        webui = Service("open-webui serve", [str(Path(sys.executable).parent / "open-webui"), "serve",
                                             "--host", "127.0.0.1", "--port", str(webui_port)],
                        webui_env, self.logs / "open-webui.log", self.tmp).start()
        self.services.append(webui)
        webui.wait_ready(self.webui_url + "/health", 300)

        from playwright.sync_api import sync_playwright
        chromium = self.args.chromium or shutil.which("chromium") or "/usr/bin/chromium"
        print(f"compat: headless {chromium} through playwright {package_version('playwright')}", flush=True)
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path=chromium, headless=True,
                                                       args=["--no-sandbox", "--disable-dev-shm-usage"])
        self.versions.update({"open-webui": package_version("open-webui"), "playwright": package_version("playwright"),
                              "chromium": self.browser.version})
        context = self.browser.new_context(viewport={"width": 1280, "height": 860}, locale="en-US")
        context.set_default_timeout(PAGE_TIMEOUT * 1000)
        context.route("**/*", self.only_loopback)
        self.page = context.new_page()
        self.page.on("websocket", self.watch_websocket)
        if self.args.legacy_function_calling:
            self.set_legacy_function_calling()

    def set_legacy_function_calling(self) -> None:
        """Diagnosis only (--legacy-function-calling), not Open WebUI's default: the user's setting Function
        Calling = Legacy (Settings > General > Advanced Parameters), under which Open WebUI sends no built-in tools
        to the model. It shows whether chat and documents work apart from tool calls."""
        page = self.page
        page.goto(self.webui_url + "/")
        page.locator("#chat-input").wait_for()
        self.dismiss_changelog()
        status, body = page.evaluate("""async () => {
            const h = {'Content-Type': 'application/json', Authorization: 'Bearer ' + localStorage.token};
            const ui = (await (await fetch('/api/v1/users/user/settings', {headers: h})).json())?.ui || {};
            ui.params = {...(ui.params || {}), function_calling: 'legacy'};
            const r = await fetch('/api/v1/users/user/settings/update',
                                  {method: 'POST', headers: h, body: JSON.stringify({ui})});
            return [r.status, await r.text()];
        }""")
        if status != 200:
            raise StepFailed(f"could not set Function Calling = Legacy: {status} {body[:200]}")
        self.changed_settings["function_calling"] = "legacy"

    def check_services(self) -> None:
        """A server that stopped (crashed, or was killed from outside) fails the step with its exit and log."""
        for service in self.services:
            code = service.proc.poll()
            if code is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
                raise StepFailed(f"{service.name} is no longer running (it ended with {how}); its log ends:\n"
                                 f"{service.tail(8)}")

    def only_loopback(self, route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def watch_websocket(self, ws) -> None:
        """Open WebUI sends the answer to the page as socket.io `events` (`42["events", {...}]` frames)."""
        def received(payload) -> None:
            if not isinstance(payload, str) or not payload.startswith('42["events"'):
                return
            try:
                event = json.loads(payload[2:])[1]
            except (ValueError, IndexError):
                return
            event["_t"] = time.monotonic()
            self.ws_events.append(event)
        ws.on("framereceived", received)

    def stop(self) -> None:
        for closer in (self.browser and self.browser.close, self.playwright and self.playwright.stop):
            if closer:
                with contextlib.suppress(Exception):  # stopping anyway
                    closer()
        for service in reversed(self.services):
            service.stop()
        if self.args.keep:
            print(f"compat: kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def ember_tags(self) -> dict[str, str]:
        """ember's own answer (not through Open WebUI): name -> digest."""
        return {m["name"]: m["digest"] for m in http_json(self.ember_url + "/api/tags")["models"]}

    def shot(self, step: Step, name: str) -> None:
        path = SHOTS / name
        self.page.screenshot(path=str(path))
        step.screenshots.append(str(path.relative_to(REPO)))

    def open_chat(self) -> None:
        """A new chat with the model chosen in the selector, as a user does."""
        page = self.page
        page.goto(self.webui_url + "/")
        page.locator("#chat-input").wait_for()
        self.dismiss_changelog()
        self.choose_model()

    def dismiss_changelog(self) -> None:
        """The first visit shows "What's New in Open WebUI"; a user closes it."""
        if self.changelog_closed:
            return
        button = self.page.get_by_role("button", name="Okay, Let's Go!")
        try:
            button.wait_for(timeout=5000)
            button.click()
            self.changelog_closed = True
        except Exception:  # not shown: nothing to close
            pass

    def model_selector(self):
        return self.page.locator("button[aria-haspopup=listbox][id^=model-selector-]").first

    def choose_model(self) -> None:
        selector = self.model_selector()
        if selector.get_attribute("aria-label") == f"Selected model: {self.model}":
            return
        selector.click()
        self.page.get_by_role("option", name=f"Select {self.model} model").click()
        if selector.get_attribute("aria-label") != f"Selected model: {self.model}":
            raise StepFailed(f"chose {self.model} in the model selector, but it shows "
                             f"{selector.get_attribute('aria-label')!r}")

    def watch_answer_growth(self) -> None:
        """Records every length the newest answer's text has on the page, with when (a MutationObserver sees each
        change as the page renders it: nothing between two polls is missed)."""
        self.define_answer_text()
        self.page.evaluate("""() => {
            window.__emberGrowth = [];
            const t0 = performance.now();
            const note = () => {
                const text = window.__emberAnswerText();
                const last = window.__emberGrowth[window.__emberGrowth.length - 1];
                if (!last || last.len !== text.length)
                    window.__emberGrowth.push({t: Math.round(performance.now() - t0), len: text.length});
            };
            window.__emberObserver?.disconnect();
            window.__emberObserver = new MutationObserver(note);
            window.__emberObserver.observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")

    def define_answer_text(self) -> None:
        """window.__emberAnswerText(): the newest answer's text as rendered Markdown, without what Open WebUI puts
        around it (status lines, the sources button, an error box)."""
        self.page.evaluate("""() => {
            window.__emberAnswerText = () => {
                const all = document.querySelectorAll('#response-content-container');
                if (!all.length) return '';
                const parts = [...all[all.length - 1].querySelectorAll('.markdown-prose')];
                return parts.map(p => p.innerText).join('\\n').trim();
            };
        }""")

    def send(self, text: str) -> tuple[float, str]:
        """Types `text` and presses Enter; when it was sent and the new chat's id (the page moves to /c/ID)."""
        page = self.page
        page.locator("#chat-input").click()
        page.keyboard.type(text)
        sent = time.monotonic()
        page.keyboard.press("Enter")
        page.wait_for_url("**/c/*")
        page.locator("#response-content-container").first.wait_for()
        return sent, page.url.rsplit("/c/", 1)[1].split("?")[0]

    def wait_answer(self, sent: float, chat_id: str) -> tuple[str, str | None]:
        """Waits until Open WebUI tells the page the answer is done (a socket.io event for this chat with
        `done: true`, or its error event; the answer's Copy button too), then returns the answer's text on the
        page and the error the page shows, if any."""
        deadline = sent + self.args.answer_timeout
        page = self.page
        error = None
        while time.monotonic() < deadline:
            events = [e["data"] for e in self.ws_events
                      if e["_t"] >= sent and e.get("chat_id") == chat_id and isinstance(e.get("data"), dict)]
            # An error comes as its own event, or inside the completion's (as ember's 400s have, both ways).
            error = next((e for e in events if e.get("type") == "chat:message:error"
                          or (isinstance(e.get("data"), dict) and e["data"].get("error"))), None)
            # (Status events, "searching the knowledge…", carry `done` too: only the completion's counts.)
            done = any(e.get("type") in ("chat:completion", "response:completion") and isinstance(e.get("data"), dict)
                       and e["data"].get("done") is True for e in events)
            if error or done or page.locator(".copy-response-button").count():
                page.wait_for_timeout(1500)  # let the page render the end
                break
            page.wait_for_timeout(250)
        else:
            raise StepFailed(f"no answer on the page within {self.args.answer_timeout:.0f}s of sending"
                             f"{self.ember_in_flight()}")
        self.define_answer_text()  # (the page may have been reloaded since)
        text = page.evaluate("window.__emberAnswerText()")
        shown = page.locator("#response-content-container").last.inner_text().strip()
        shown_error = None
        if error:
            content = (error.get("data") or {}).get("error") if isinstance(error.get("data"), dict) else None
            if isinstance(content, dict):
                content = content.get("content") or content.get("message") or json.dumps(content)
            shown_error = shown or str(content)
        elif not text and shown:  # no answer, but something in its place: the page's error box
            shown_error = shown
        return text, shown_error

    def recorded(self) -> list[dict]:
        """ember-requests.jsonl: the exchanges Open WebUI had with ember (one line when each starts, one when it
        ends)."""
        path = self.logs / "ember-requests.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def ember_in_flight(self) -> str:
        entries = self.recorded()
        ended = {e["id"] for e in entries if "started" not in e}
        open_ = [e for e in entries if "started" in e and e["id"] not in ended]
        if not open_:
            return ""
        now = time.time()
        return "; ember has not finished: " + ", ".join(
            f"{e['method']} {e['path']} (for {now - e['started']:.0f}s)" for e in open_)

    def ember_chats_since(self, wall_start: float) -> list[dict]:
        return [e for e in self.recorded() if e.get("path") == "/api/chat" and "started" not in e
                and e.get("at", 0) >= wall_start]

    # -- the steps --------------------------------------------------------------------------------------------------

    def step_models(self) -> str:
        step = self.current
        page = self.page
        page.goto(self.webui_url + "/")
        page.locator("#chat-input").wait_for()
        self.dismiss_changelog()
        self.model_selector().click()
        page.get_by_role("option").first.wait_for()
        names = [o.get_attribute("aria-label") for o in page.get_by_role("option").all()]
        self.shot(step, "01-models.png")
        page.keyboard.press("Escape")
        listed = [n.removeprefix("Select ").removesuffix(" model") for n in names]
        if self.model not in listed:
            raise StepFailed(f"the model selector lists {listed}, not {self.model}")
        return f"the model selector lists {listed}"

    def step_chat(self) -> str:
        step = self.current
        self.open_chat()
        self.watch_answer_growth()
        wall = time.time()
        sent, chat_id = self.send(CHAT_PROMPT)
        text, error = self.wait_answer(sent, chat_id)
        seconds = time.monotonic() - sent
        growth = self.page.evaluate("window.__emberGrowth")
        self.shot(step, "02-chat-streamed.png")
        chats = [e for e in self.ember_chats_since(wall) if (e.get("request") or {}).get("stream") is True]
        ember_side = "; ".join(f"ember answered /api/chat (stream, {len((e['request'] or {}).get('tools') or [])} "
                               f"tools) {e['status']} in {e.get('chunks')} chunk(s)" for e in chats)
        if error:
            raise StepFailed(f"Open WebUI shows the error {error!r} instead of an answer"
                             + (f" ({ember_side})" if ember_side else ""))
        if not text:
            raise StepFailed("the answer on the page is empty" + (f" ({ember_side})" if ember_side else ""))
        # Streamed: the page showed the answer partly written before it showed it whole. `growth` is every length
        # the answer's text had on the page (a MutationObserver's record, so no render is missed); a streamed
        # answer passes through at least one non-empty length short of the final one. One that arrives in one
        # piece (a server that buffers the answer) goes from 0 straight to its full length. This is checked on the
        # page, whatever the transport (Open WebUI relays ember's chunks to the page over socket.io).
        partial = sorted({g["len"] for g in growth if 0 < g["len"] < len(text)})
        shown = f"{len(text)} characters in {seconds:.1f}s, {len(partial)} partial lengths on the page before the end"
        if not partial:
            raise StepFailed(f"the answer was not streamed: it appeared on the page in one piece ({shown}"
                             + (f"; {ember_side}" if ember_side else "") + f"): {text[:120]!r}")
        return f"answer {text[:100]!r}: {shown}" + (f"; {ember_side}" if ember_side else "")

    def step_document(self) -> str:
        step = self.current
        page = self.page
        doc = self.tmp / DOC_NAME
        doc.write_text(DOC_TEXT)
        self.open_chat()
        # Attached as a user does: "+" then "Upload Files", answering the file chooser.
        page.locator("#input-menu-button").click()
        with page.expect_file_chooser() as chooser:
            page.get_by_role("menuitem", name="Upload Files").click()
        chooser.value.set_files(str(doc))
        container = page.locator("#message-input-container")
        container.get_by_text(DOC_NAME).wait_for()
        # Uploaded and embedded (through ember's /api/embed) once the file's spinner is gone.
        page.wait_for_function("() => !document.querySelector('#message-input-container .spinner_ajPY')",
                               timeout=self.args.answer_timeout * 1000)
        wall = time.time()
        sent, chat_id = self.send(DOC_QUESTION)
        text, error = self.wait_answer(sent, chat_id)
        # Retrieved: Open WebUI shows the sources an answer used under it ("1 Source"); opened, each names its file.
        sources = page.locator("#response-content-container").last.locator("button[aria-label^='Toggle']")
        named = []
        if sources.count():
            sources.first.click()
            answer = page.locator("#response-content-container").last
            named = [b.get_attribute("aria-label") for b in answer.locator("button[aria-label^='View source']").all()]
        self.shot(step, "03-document.png")
        # And the document reached the model: the prompt ember got for the answer holds the document's fact.
        chats = [e for e in self.ember_chats_since(wall) if (e.get("request") or {}).get("stream") is True]
        in_prompt = any(DOC_FACT_WORD in json.dumps(e.get("request")) or DOC_FACT_WORD in (e.get("watched") or [])
                        for e in chats)
        retrieved = (f"; the document was retrieved before that: ember's prompt held {DOC_FACT_WORD!r}"
                     if in_prompt else "")
        if error:
            raise StepFailed(f"Open WebUI shows the error {error!r} instead of an answer{retrieved}")
        if not text:
            raise StepFailed(f"the answer on the page is empty{retrieved}")
        if not any(DOC_NAME in (n or "") for n in named):
            raise StepFailed(f"the answer names no source {DOC_NAME!r} (sources shown: {named or 'none'}): "
                             f"{text[:120]!r}")
        if chats and not in_prompt:
            raise StepFailed(f"the prompt ember got for the answer does not hold the document's {DOC_FACT_WORD!r}")
        # Whether a 135M model repeats the fact is luck, not compatibility: reported, not required.
        quoted = DOC_FACT_WORD.lower() in text.lower()
        return (f"sources: {named}; the document was in ember's prompt: {in_prompt}; the answer "
                f"{'quotes' if quoted else 'does not quote'} {DOC_FACT_WORD!r}: {text[:120]!r}")

    def open_manage_models(self) -> object:
        """Admin Settings > Models > Actions > Manage: Open WebUI's dialog for the Ollama connection's models."""
        page = self.page
        dialogs = page.get_by_role("dialog")
        if dialogs.count():
            dialogs.last.get_by_role("button", name="Close").click()
            page.wait_for_timeout(300)
        if "/admin/settings/models" not in page.url:
            page.goto(self.webui_url + "/admin/settings/models")
            self.dismiss_changelog()
        page.get_by_role("button", name="Actions").click()
        page.get_by_role("menu").get_by_text("Manage", exact=True).click()
        dialog = page.get_by_role("dialog").last
        dialog.get_by_text("Pull a model from Ollama.com").wait_for()
        return dialog

    def mark_toasts(self) -> None:
        """Marks the notices on the page now, so that wait_toast looks only at those that come after."""
        self.page.evaluate("() => document.querySelectorAll('[data-sonner-toast]')"
                           ".forEach(t => t.setAttribute('data-compat-seen', '1'))")

    def wait_toast(self, *wanted: str, timeout: float = 120) -> str:
        """The page's new notice (toast) that holds one of `wanted`; a new error notice fails the step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            toasts = self.page.locator("[data-sonner-toast]:not([data-compat-seen])")
            for i in range(toasts.count()):
                toast = toasts.nth(i)
                try:
                    text, kind = toast.inner_text(timeout=1000).strip(), toast.get_attribute("data-type")
                except Exception:  # it went away while being read
                    continue
                if any(w in text for w in wanted):
                    return text
                if kind == "error":
                    raise StepFailed(f"Open WebUI shows the error {text!r}")
            self.page.wait_for_timeout(200)
        raise StepFailed(f"no notice saying {' or '.join(map(repr, wanted))} within {timeout:.0f}s"
                         f"{self.ember_in_flight()}")

    def step_pull(self) -> str:
        step = self.current
        if PULL_MODEL in self.ember_tags():
            raise StepFailed(f"{PULL_MODEL} is in ember's store before the pull; nothing to show")
        dialog = self.open_manage_models()
        tag = dialog.get_by_placeholder("Enter model tag (e.g. mistral:7b)")
        tag.fill(PULL_MODEL)
        self.mark_toasts()
        tag.locator("xpath=ancestor::div[contains(@class,'flex w-full')][1]//button").first.click()
        notice = self.wait_toast("successfully downloaded")
        self.shot(step, "04-pull.png")
        tags = self.ember_tags()
        if PULL_MODEL not in tags:
            raise StepFailed(f"the page says {notice!r} but ember's /api/tags has no {PULL_MODEL}: {sorted(tags)}")
        return f"page: {notice!r}; ember's /api/tags lists {PULL_MODEL}"

    def step_copy(self) -> str:
        step = self.current
        page = self.page
        tags = self.ember_tags()
        source = PULL_MODEL if PULL_MODEL in tags else self.model
        dialog = self.open_manage_models()
        # The page's way: "Create a model" with {"from": SOURCE}, Ollama's /api/create, which is a copy.
        dialog.get_by_placeholder("Enter model tag (e.g. my-modelfile)").fill(CREATE_COPY)
        dialog.locator("textarea").fill(json.dumps({"from": source}))
        self.mark_toasts()
        dialog.get_by_role("button", name="Create Model").click()
        self.wait_toast("success")
        # Ollama's /api/copy: the page has no button for it, but Open WebUI forwards it (/ollama/api/copy, admins
        # only); called from the page with the page's own session, as its JavaScript would.
        status, body = page.evaluate("""async ([source, destination]) => {
            const r = await fetch('/ollama/api/copy', {method: 'POST', headers: {'Content-Type': 'application/json',
                Authorization: 'Bearer ' + localStorage.token}, body: JSON.stringify({source, destination})});
            return [r.status, await r.text()];
        }""", [source, API_COPY])
        # Reopened (its list of models is read when it opens): the copy is there to choose for deletion.
        dialog = self.open_manage_models()
        select = dialog.locator("select[title='Select a model']")
        listed = [o.get_attribute("value") for o in select.locator("option").all()]
        if CREATE_COPY in listed:
            select.select_option(CREATE_COPY)
        self.shot(step, "05-copy.png")
        tags = self.ember_tags()
        problems = [] if CREATE_COPY in listed else [f"the dialog's list of models lacks {CREATE_COPY}: {listed}"]
        if tags.get(CREATE_COPY) != tags.get(source):
            problems.append(f"\"Create a model\" from {source}: ember has {CREATE_COPY} "
                            f"{'with another digest' if CREATE_COPY in tags else 'missing'}")
        if status != 200:
            problems.append(f"/ollama/api/copy answered {status} {body[:200]!r}")
        elif tags.get(API_COPY) != tags.get(source):
            problems.append(f"/ollama/api/copy: ember has {API_COPY} "
                            f"{'with another digest' if API_COPY in tags else 'missing'}")
        if problems:
            raise StepFailed("; ".join(problems))
        return (f"{CREATE_COPY} (the page's \"Create a model\") and {API_COPY} (/ollama/api/copy) are in ember's "
                f"/api/tags with {source}'s digest")

    def step_delete(self) -> str:
        step = self.current
        tags = self.ember_tags()
        victims = [m for m in (CREATE_COPY, API_COPY) if m in tags] or ([PULL_MODEL] if PULL_MODEL in tags else [])
        if not victims:
            raise StepFailed(f"nothing to delete: neither {CREATE_COPY}, {API_COPY} nor {PULL_MODEL} is in ember")
        for i, victim in enumerate(victims):
            dialog = self.open_manage_models()
            select = dialog.locator("select[title='Select a model']")
            select.select_option(victim)
            dialog.get_by_role("button", name="Delete Model").click()
            confirm = self.page.get_by_role("dialog").last
            confirm.get_by_text("Confirm your action").wait_for()
            self.mark_toasts()
            confirm.get_by_role("button", name="Confirm").click()
            self.wait_toast(f"Deleted {victim}")
            if i == 0:
                self.shot(step, "06-delete.png")
        tags = self.ember_tags()
        left = [m for m in victims if m in tags]
        if left:
            raise StepFailed(f"the page says deleted, but ember's /api/tags still lists {left}")
        if self.model not in tags:
            raise StepFailed(f"{self.model} went missing from ember along with the copies")
        return f"deleted {victims}; ember's /api/tags: {sorted(tags)}"

    # -- running, reporting -----------------------------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        wall = time.time()
        setup = Step("00-setup", "ember, Open WebUI and Chromium started", lambda: "")
        try:
            t = time.monotonic()
            try:
                self.start()
                setup.status, setup.detail = "pass", f"versions: {self.versions}"
            except Exception as e:  # reported; the steps are skipped
                setup.status, setup.error = "fail", str(e) if isinstance(e, StepFailed) else traceback.format_exc()
            setup.seconds = time.monotonic() - t
            print(f"compat: {setup.name} {setup.status} ({setup.seconds:.1f}s) {setup.error}", flush=True)
            wanted = set(self.args.steps.split(",")) if self.args.steps else None
            for step in self.steps:
                if wanted and not any(step.name.startswith(w) for w in wanted):
                    step.status = "skipped"
                    continue
                if setup.status != "pass":
                    step.status = "skipped"
                    continue
                self.current = step
                print(f"compat: {step.name}: {step.title} …", flush=True)
                t = time.monotonic()
                try:
                    self.check_services()
                    step.detail = step.run()
                    step.status = "pass"
                except Exception as e:  # reported, and the next step runs
                    step.status = "fail"
                    step.error = str(e).split("\nCall log:")[0] if not isinstance(e, StepFailed) else str(e)
                    if not isinstance(e, StepFailed):
                        step.error = f"{type(e).__name__}: {step.error}"
                    with contextlib.suppress(Exception):  # no page to shoot
                        self.shot(step, f"{step.name}-FAILED.png")
                step.seconds = time.monotonic() - t
                print(f"compat: {step.name} {step.status} ({step.seconds:.1f}s): {step.error or step.detail}",
                      flush=True)
        finally:
            self.stop()
        total = time.monotonic() - started
        self.report([setup, *self.steps], wall, total)
        return 0 if setup.status == "pass" and all(s.status != "fail" for s in self.steps) else 1

    def report(self, steps: list[Step], wall: float, total: float) -> None:
        entries = self.recorded()
        ended = {e["id"] for e in entries if "started" not in e}
        ember_errors = [{k: e.get(k) for k in ("method", "path", "request", "status", "error_body", "proxy_error",
                                               "request_file")}
                        for e in entries if "started" not in e and (e.get("status", 200) >= 400 or "proxy_error" in e)]
        unfinished = [e for e in entries if "started" in e and e["id"] not in ended]
        streamed_chats = [{"tools": len((e.get("request") or {}).get("tools") or []), "status": e.get("status"),
                           "chunks": e.get("chunks"), "first_chunk_s": e.get("first_chunk_s"),
                           "seconds": e.get("seconds")}
                          for e in entries if "started" not in e and e.get("path") == "/api/chat"
                          and (e.get("request") or {}).get("stream")]
        report = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(wall)),
            "total_seconds": round(total, 1),
            "versions": self.versions,
            "model": self.model,
            "open_webui_env": OPEN_WEBUI_ENV,
            "open_webui_settings_changed": self.changed_settings,
            "steps": [{"name": s.name, "title": s.title, "status": s.status, "seconds": round(s.seconds, 1),
                       "detail": s.detail, "error": s.error, "screenshots": s.screenshots} for s in steps],
            "requests_refused_off_loopback": sorted(set(self.blocked)),
            "ember_error_answers": ember_errors,
            "ember_unfinished_requests": unfinished,
            "ember_streamed_chats": streamed_chats,
            "logs": {p.name: str(p.relative_to(REPO)) for p in sorted(self.logs.glob("*")) if p.is_file()},
        }
        (SHOTS / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

        if self.changed_settings:
            print(f"\nNOTE: Open WebUI settings changed from its defaults: {self.changed_settings}")
        print("\nstep               result    seconds")
        for s in steps:
            print(f"{s.name:<18} {s.status:<8} {s.seconds:>8.1f}")
        print(f"{'total':<18} {'':<8} {total:>8.1f}")
        failed = [s for s in steps if s.status == "fail"]
        for s in failed:
            print(f"\nFAILED {s.name} ({s.title}):\n  {s.error}")
        if ember_errors:
            print("\nember answered with an error:")
            for e in ember_errors:
                saved = f" (whole request: {(self.logs / e['request_file']).relative_to(REPO)})" \
                    if e.get("request_file") else ""
                print(f"  {e['method']} {e['path']} -> {e.get('status') or 'no answer'}{saved}: "
                      f"{(e.get('error_body') or e.get('proxy_error') or '')[:200]}")
        if self.blocked:
            print(f"\nrequests the page tried off loopback (refused): {sorted(set(self.blocked))}")
        print(f"\nscreenshots and report.json in {SHOTS.relative_to(REPO)}/; run time {total:.0f}s")
        if failed:
            print(f"compat: FAILED: {', '.join(s.name for s in failed)}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description="ember under Open WebUI, driven in headless Chromium (make compat)")
    ap.add_argument("--steps", help="only these steps, by number prefix: 01,04 (setup always runs)")
    ap.add_argument("--model", default=MODEL, help=f"the model the chat steps use (default {MODEL})")
    ap.add_argument("--modelfile", help="with --model: create that model from this Modelfile in ember first")
    ap.add_argument("--chromium", help="the Chromium binary (default: `chromium` on PATH)")
    ap.add_argument("--answer-timeout", type=float, default=ANSWER_TIMEOUT, help="seconds to wait for one answer")
    ap.add_argument("--legacy-function-calling", action="store_true",
                    help="diagnosis, not the default: Open WebUI's Function Calling = Legacy (no built-in tools sent)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary homes of ember and Open WebUI")
    args = ap.parse_args()
    if not EMBER.exists():
        print(f"compat: {EMBER} is missing: run `make setup` first", file=sys.stderr)
        return 2
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in [*SHOTS.glob("*.png"), SHOTS / "report.json"]:
        old.unlink(missing_ok=True)
    shutil.rmtree(SHOTS / "logs", ignore_errors=True)
    (SHOTS / "logs").mkdir()

    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, terminate)
    try:
        return Compat(args).run()  # stops its servers however it ends
    except KeyboardInterrupt as e:
        print(f"compat: interrupted ({e or 'Ctrl-C'}); the servers are stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
