"""The operator console (the UI's "Operator" tab) as an operator uses it, in a headless Chromium
against the real server started with an admin key: log in (a wrong key is refused), see the
adapters, run a refresh round and watch it, roll back, run a canary between two versions, find and
delete a logged prompt. What the
page shows is checked against the admin API and the SQLite log. Screenshots of each screen go to
tests/browser/artifacts/console_*.png."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC

from helpers.browser import OPT_OUT, ChatPage
from helpers.live_server import run_server
from helpers.stand_in import serve_json, url_of

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ADMIN_KEY = "console-test-key"
UI_MAX_TOKENS = 48
ROUND_TIMEOUT_S = 900  # a one-step round on a busy CPU
OVERRIDES = {"max_steps": 1, "prompts": 1, "reward": "rule", "num_generations": 4,
             "prompts_per_step": 1, "max_completion_tokens": 16, "gate.enabled": False}
OPERATOR_TAB = (By.XPATH, '//button[@role="tab" and normalize-space()="Operator"]')
CHAT_TAB = (By.XPATH, '//button[@role="tab" and normalize-space()="Chat"]')


def css(elem_id: str) -> tuple[str, str]:
    return By.CSS_SELECTOR, f"#{elem_id}"


PAIR = re.compile(r"Response A\n\n(.*)\n\nResponse B\n\n(.*)\n\nOutput format", re.DOTALL)


def length_judge(prefer_longer: bool):
    """A stand-in judge endpoint that prefers the longer (or the shorter) answer of a pair, in
    either order: two of them disagree on every pair of unequal lengths."""
    def respond(path, headers, body):
        a, b = (len(t.split()) for t in PAIR.search(body["messages"][-1]["content"]).groups())
        verdict = "tie" if a == b else "A" if (a > b) == prefer_longer else "B"
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "len",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": verdict}}]}, {}
    return respond


@pytest.fixture(scope="module")
def panel_settings():
    """The gate's judge: a panel of two stand-in judges that always disagree."""
    judges = [serve_json(length_judge(True)), serve_json(length_judge(False))]
    yield "".join(f'[[eval.judges]]\nurl = "{url_of(j)}"\nmodel = "len"\nname = "{name}"\n'
                  for j, name in zip(judges, ("longer", "shorter")))
    for judge in judges:
        judge.shutdown()
        judge.server_close()


@pytest.fixture(scope="module")
def ui_server(browser_binaries, base_model, tmp_path_factory, panel_settings):
    """The conftest's server, with an admin key, in LoRA swap mode: a canary serves two versions
    side by side (the chat UI's tests run the CPU default, merged). Its chat asks for answers of
    at most UI_MAX_TOKENS (ui.max_tokens): the 135M filled the default 512 planning a garden day,
    ~45 s an answer on a busy machine. The gate's judge is a panel (test_j)."""
    yield from run_server(tmp_path_factory, base_model, "lora", ui=True, admin_key=ADMIN_KEY,
                          ui_settings=f"max_tokens = {UI_MAX_TOKENS}\n", settings=panel_settings)


class Console(ChatPage):
    """The Operator tab of the page."""

    def open_console(self) -> Console:
        self.open()
        self.click(OPERATOR_TAB)
        self.wait().until(EC.element_to_be_clickable(css("login")))
        return self

    def text(self, elem_id: str) -> str:
        return self.driver.find_element(*css(elem_id)).text

    def fill(self, elem_id: str, text: str) -> None:
        field = self.wait().until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, f"#{elem_id} input, #{elem_id} textarea")))
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(text)

    def log_in(self, key: str) -> None:
        self.fill("admin-key", key)
        self.click(css("login"))

    def shows(self, elem_id: str, text: str, timeout: float = 120) -> str:
        return self.wait(timeout).until(lambda _: text in self.text(elem_id) and self.text(elem_id),
                                        f"{text!r} in #{elem_id}")

    def console_shown(self) -> bool:
        found = self.driver.find_elements(*css("console"))
        return bool(found) and found[0].is_displayed()

    def shot(self, elem_id: str, name: str) -> None:
        element = self.driver.find_element(*css(elem_id))
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
        ARTIFACTS.mkdir(exist_ok=True)
        self.driver.save_screenshot(str(ARTIFACTS / f"console_{name}.png"))


@pytest.fixture
def console(browser, ui_server) -> Console:
    return Console(browser, ui_server.ui_url).open_console()


def plot_drawn(console: Console, elem_id: str) -> bool:
    """The gr.Plot shows a matplotlib image (a base64 PNG)."""
    images = console.driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
    return any((i.get_attribute("src") or "").startswith("data:image/png") for i in images)


def logged_in(console: Console) -> Console:
    console.log_in(ADMIN_KEY)
    console.shows("login-message", "logged in")
    console.wait().until(lambda _: console.console_shown(), "the console to be shown")
    return console


def test_a_wrong_key_is_refused(console):
    console.log_in("not-the-key")
    console.shows("login-message", "wrong admin key")
    assert not console.console_shown()
    assert "Traceback" not in console.driver.page_source
    console.shot("admin-key", "login")


def test_b_right_key_shows_the_adapters_and_the_active_version(console, ui_server):
    logged_in(console)
    console.shows("active-version", ui_server.base_name)
    console.shows("active-version", "users' approval: no ratings yet")
    table = console.driver.find_element(*css("adapters-table"))
    assert table.is_displayed() and "version" in table.text and "status" in table.text
    assert ui_server.active() == ui_server.base_name
    console.shows("schedule-info", "Refresh schedule")
    console.wait().until(lambda _: plot_drawn(console, "eval-plot"), "the empty scores chart")
    console.shot("active-version", "adapters")


def chat_in_the_ui(console: Console, text: str, opt_out: bool, thumb: str = "") -> None:
    """Send `text` from the Chat tab (the opt-out box ticked or not) and wait for its answer;
    with `thumb` ("Like", "Dislike"), click that thumb under the answer and see it shown as given."""
    console.click(CHAT_TAB)
    if console.opt_out.is_selected() != opt_out:
        console.click(OPT_OUT)
    console.type(text)
    console.press_enter()
    console.wait_for_user_message(text)
    console.wait_idle()
    if thumb:
        console.click((By.XPATH, f'(//button[@aria-label="{thumb}"])[last()]'))
        console.wait().until(EC.presence_of_element_located(
            (By.XPATH, f'//button[@aria-label="{thumb}d"]')), f"the {thumb} shown as given")
    console.click(OPERATOR_TAB)


def test_c_refresh_now_shows_progress_and_publishes_a_version(console, ui_server):
    """Also: of two chats sent from the UI, the opted-out one never reaches the round's prompts
    and the other does (logged_share 1, so the round takes every logged prompt it may); a thumb
    down on the other in the UI is stored with the version that answered, moves the console's
    approval, and goes with the prompt into the round."""
    kept, private = (f"Plan a {w} for a school garden ({uuid.uuid4().hex[:8]})"
                     for w in ("harvest day", "seed swap"))
    chat_in_the_ui(console, kept, opt_out=False, thumb="Dislike")
    chat_in_the_ui(console, private, opt_out=True)
    [rated] = ui_server.query(
        "select f.rating, e.version, e.model_served, e.params, e.completion_tokens from feedback f "
        "join exchanges e on e.id = f.exchange_id where e.messages like ?", (f"%{kept}%",))
    # ui.max_tokens reached the UI: what it asked for, and what it got
    assert json.loads(rated.pop("params"))["max_tokens"] == UI_MAX_TOKENS
    assert rated.pop("completion_tokens") <= UI_MAX_TOKENS
    assert rated == {"rating": -1, "version": None, "model_served": ui_server.base_name}
    logged_in(console)
    console.shows("active-version", "users' approval: 0 % [0-79] of 1")  # the base's, moved
    console.fill("refresh-overrides", json.dumps({**OVERRIDES, "prompts": 2, "logged_share": 1.0}))
    console.click(css("refresh-now"))
    console.shows("refresh-message", "round 1")
    console.shows("round-progress", "round 1: status")
    console.shot("refresh-now", "refresh_progress")
    # the timer polls: the round ends and the new version shows up active in the table
    console.wait(ROUND_TIMEOUT_S).until(
        lambda _: "active" in console.text("adapters-table") and "round 1: status promoted"
        in console.text("round-progress"), "round 1 to be promoted and shown in the table")
    served = ui_server.active()
    assert served != ui_server.base_name
    trained = (ui_server.home / "rounds" / "0001" / "prompts.jsonl").read_text()
    assert json.dumps(kept) in trained and private not in trained
    [row] = [r for r in map(json.loads, trained.splitlines()) if r["prompt"] == kept]
    assert row["rating"] == -1  # rated down in the UI: taken first, and recorded
    console.shows("active-version", served)
    assert "→" in console.text("adapters-table")  # the round's reward, first -> last step
    console.shot("active-version", "adapters_after_round")
    # the timer redrew the reward chart when the round took its step
    console.wait().until(lambda _: plot_drawn(console, "reward-plot"), "the reward chart")
    console.shot("reward-plot", "plots")


def test_d_roll_back_serves_the_base_model_again(console, ui_server):
    logged_in(console)
    assert ui_server.active() != ui_server.base_name, "test_c published no version"
    console.click(css("rollback"))
    console.shows("adapters-message", "rolled back")
    console.shows("active-version", ui_server.base_name)
    assert ui_server.active() == ui_server.base_name
    assert httpx.get(f"{ui_server.url}/admin/adapters").status_code == 401  # the key is needed
    # and "Activate" serves the version again; a second roll back leaves the base model again
    console.fill("activate-version", "1")
    console.click(css("activate"))
    console.shows("adapters-message", "active: ")
    served = console.wait().until(lambda _: ui_server.active() != ui_server.base_name and
                                  ui_server.active(), "version 1 to be served")
    console.shows("active-version", served)
    console.click(css("rollback"))
    console.shows("active-version", ui_server.base_name)
    assert ui_server.active() == ui_server.base_name


def test_e_a_chat_exchange_is_listed_and_deleted(console, ui_server):
    token = uuid.uuid4().hex[:12]
    console.click(CHAT_TAB)
    console.type(f"Say hi. (ref {token}) Write to me at jane.doe@example.com")
    console.press_enter()
    rows = ui_server.wait_for(
        lambda: ui_server.query("select id from exchanges where messages like ?", (f"%{token}%",)),
        600, f"the exchange naming {token}", interval=0.5)
    exchange_id = rows[0]["id"]
    console.click(OPERATOR_TAB)
    logged_in(console)
    console.fill("exchanges-filter", token)
    console.click(css("exchanges-search"))
    console.shows("exchanges-table", token)
    console.shows("exchanges-message", "1 exchange(s)")
    # as stored: redacted before it was written
    assert "[EMAIL]" in console.text("exchanges-table")
    assert "jane.doe" not in console.text("exchanges-table")
    console.shot("exchanges-filter", "logged_prompts")
    console.fill("exchange-id", str(exchange_id))
    console.click(css("delete-exchange"))
    console.shows("exchanges-message", f"deleted exchange {exchange_id}")
    console.wait().until(lambda _: token not in console.text("exchanges-table"), "the row to go")
    assert not ui_server.query("select id from exchanges where id = ?", (exchange_id,))


def test_f_the_schedule_is_set_switched_off_and_reset(console, ui_server):
    logged_in(console)
    console.shows("schedule-info", "from the config file")
    console.fill("schedule-interval", "6")
    console.click(css("save-schedule"))
    console.shows("schedule-info", "every 6 h, set here")
    assert ui_server.get("/admin/schedule").json()["source"] == "operator"
    console.click(css("schedule-off"))
    console.shows("schedule-info", "off, set here")
    assert ui_server.get("/admin/schedule").json()["next_run"] is None
    console.click(css("schedule-reset"))
    console.shows("schedule-info", "from the config file")
    assert ui_server.get("/admin/schedule").json()["source"] == "config"


def test_f2_a_cron_schedule_in_a_timezone_and_a_bad_one(console, ui_server):
    logged_in(console)
    console.click((By.XPATH, '//*[@id="schedule-kind"]//label[normalize-space()="cron"]'))
    console.fill("schedule-cron", "not a cron")
    console.click(css("save-schedule"))
    console.shows("schedule-info", "⚠️")
    assert ui_server.get("/admin/schedule").json()["source"] == "config"  # nothing saved
    console.fill("schedule-cron", "30 3 * * 1")
    console.fill("schedule-timezone", "Europe/Paris")
    console.click(css("save-schedule"))
    console.shows("schedule-info", "(Europe/Paris), set here")
    assert "30 3 * * 1" in console.text("schedule-info")
    info = ui_server.get("/admin/schedule").json()
    assert info["spec"] == {"cron": "30 3 * * 1", "timezone": "Europe/Paris"}
    next_run = datetime.fromisoformat(info["next_run"])  # Paris time, a Monday (crontab's 1)
    assert next_run.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert (next_run.weekday(), next_run.hour, next_run.minute) == (0, 3, 30)
    console.shot("schedule-info", "schedule")
    console.click(css("schedule-reset"))
    console.shows("schedule-info", "from the config file")


def test_g_a_running_round_is_cancelled(console, ui_server):
    logged_in(console)
    console.fill("refresh-overrides", json.dumps({**OVERRIDES, "max_steps": 200}))
    console.click(css("refresh-now"))
    console.shows("refresh-message", "round 2")
    console.click(css("cancel-round"))
    console.shows("refresh-message", "round 2: ")
    console.shows("round-progress", "round 2: status cancelled", timeout=ROUND_TIMEOUT_S)
    assert ui_server.get("/admin/rounds/2").json()["status"] == "cancelled"


def test_h_a_gated_round_is_rejected_shown_with_why_and_forced_live(console, ui_server):
    """A tiny gate on: 2 held-out prompts cannot give the 4 consistent judgments the gate needs,
    so the candidate is rejected, whatever the model answers."""
    logged_in(console)
    gated = {**OVERRIDES, "gate.enabled": True, "gate.prompts": 2, "gate.multiturn": 0,
             "gate.limit": 2, "gate.max_tokens": 16}
    console.fill("refresh-overrides", json.dumps(gated))
    console.click(css("refresh-now"))
    started = console.shows("refresh-message", "started")
    round_id = int(re.search(r"round (\d+) started", started).group(1))
    console.shows("round-progress", f"round {round_id}: status rejected", timeout=ROUND_TIMEOUT_S)
    version = ui_server.get(f"/admin/rounds/{round_id}").json()["adapter_version"]
    # why, in its note (the header "note (why rejected)" names the word before the row is drawn)
    console.wait().until(lambda _: "the judge was consistent on" in console.text("adapters-table"),
                         "the rejected row with its note")
    console.wait().until(lambda _: plot_drawn(console, "eval-plot"), "the scores chart")
    console.shot("eval-plot", "eval_plot")
    console.fill("activate-version", str(version))
    console.click(css("activate"))
    console.shows("adapters-message", 'Tick "Force"')
    assert ui_server.active() == ui_server.base_name  # refused: nothing changed
    console.click((By.CSS_SELECTOR, "#activate-force input"))
    console.click(css("activate"))
    console.shows("adapters-message", f"active: dynalign-v{version}")
    console.shows("active-version", f"dynalign-v{version}")
    assert ui_server.active() == f"dynalign-v{version}"


def test_i_a_canary_is_started_watched_promoted_and_stopped(console, ui_server):
    """After test_h: version 1 (round 1's) is not active, so it can be tried on half the users."""
    logged_in(console)
    active = ui_server.active()
    assert active != "dynalign-v1", "test_h left version 1 active"
    console.fill("canary-version", "99")
    console.click(css("canary-start"))
    console.shows("canary-message", "⚠️")  # an unknown version: said, nothing started
    assert ui_server.get("/admin/canary").json()["canary"] is None
    console.fill("canary-version", "1")
    console.fill("canary-share", "0.5")
    console.click(css("canary-start"))
    console.shows("canary-message", "canary 1 started")
    console.shows("canary-status", "Canary 1: running")
    assert ui_server.get("/admin/canary").json()["canary"]["min_feedback"] == 50  # the default
    # watched: users' requests show up in both arms' counts as the timer polls
    for i in range(8):
        ui_server.client().chat.completions.create(
            model="dynalign", messages=[{"role": "user", "content": "hi"}], max_tokens=1,
            extra_headers={"X-Dynalign-User": f"canary-user-{i}"})
    arms = ui_server.wait_for(lambda: arms_with(ui_server, 8), 60,
                              "the eight requests in the canary's arms")
    # the arms' table, rendered: a row reads "requests <active> <canary>"
    console.shows("canary-status", f"requests {arms['active']['requests']} "
                                   f"{arms['canary']['requests']}")
    console.shot("canary-status", "canary_running")
    console.click(css("canary-promote"))
    console.shows("canary-message", "canary 1: promoted")
    console.shows("canary-status", "Canary 1: promoted")
    console.shows("active-version", "dynalign-v1")
    assert ui_server.active() == "dynalign-v1"
    # a second canary (version 1's adapter registered again, as version N) is stopped
    [row] = ui_server.query("select path from adapters where version = 1")
    again = ui_server.post("/admin/adapters", json={"path": row["path"]}).json()["version"]
    console.fill("canary-version", str(again))
    console.click(css("canary-start"))
    console.shows("canary-status", "Canary 2: running")
    console.click(css("canary-stop"))
    console.shows("canary-message", "canary 2: stopped")
    console.shows("canary-status", "Canary 2: stopped")
    assert ui_server.get("/admin/canary").json()["canary"]["status"] == "stopped"
    assert ui_server.active() == "dynalign-v1"


def test_j_the_pairs_a_judge_panel_split_on_are_decided_in_the_console(console, ui_server):
    """A gated round whose judge panel (a judge preferring longer answers, one preferring shorter)
    splits on the pairs: they are queued; an operator decides one in the console, once; the
    verdict shows in the round's report, apart from the judges' numbers."""
    logged_in(console)
    gated = {**OVERRIDES, "gate.enabled": True, "gate.prompts": 2, "gate.multiturn": 0,
             "gate.limit": 0, "gate.max_tokens": 16, "learning_rate": 1e-2}  # moves the answers
    round_id = ui_server.post("/admin/refresh", json=gated).json()["id"]
    done = ui_server.wait_for(lambda: ended(ui_server, round_id), ROUND_TIMEOUT_S, "the round")
    tally = done["reviews"]
    assert tally["queued"] >= 1 and tally["open"] == tally["queued"], done["summary"]
    pair = ui_server.get(f"/admin/reviews/{tally['ids'][0]}").json()
    assert sorted(m["preference"] for m in pair["item"]["members"]) == [0.0, 1.0]
    console.click(css("reviews-reload"))
    console.shows("reviews-message", f"{tally['open']} waiting for a verdict")
    console.shows("reviews-table", pair["item"]["a"][:20].strip())
    console.fill("review-id", str(pair["id"]))
    console.fill("reviewer", "ann")
    console.click(css("review-better"))
    console.shows("reviews-message", f"review {pair['id']}: better (by ann)")
    console.shows("reviews-table", "better by ann")
    console.shot("reviews-table", "reviews")
    console.click(css("review-worse"))  # a second verdict on the same item is refused
    console.shows("reviews-message", "decided already, by ann")
    console.fill("review-id", "99999")
    console.click(css("review-tie"))
    console.shows("reviews-message", "no review item with id 99999")
    report = ui_server.get(f"/admin/rounds/{round_id}").json()["reviews"]
    assert (report["better"], report["worse"], report["open"]) == (1, 0, tally["queued"] - 1)
    assert report["win_rate"] == 1.0
    assert ui_server.get(f"/admin/reviews/{pair['id']}").json()["decided_by"] == "ann"
    # the same queue from the command line: listed, and a second verdict refused (exit 1)
    listed = ui_server.cli("reviews", "list", "--round", str(round_id), timeout=120)
    assert listed.returncode == 0 and f"#{pair['id']} round {round_id} [better by ann]" in \
        listed.stdout, listed.stderr
    again = ui_server.cli("reviews", "decide", str(pair["id"]), "--verdict", "tie", "--by", "bob",
                          timeout=120)
    assert again.returncode == 1 and "decided already, by ann" in again.stderr


def ended(server, round_id: int) -> dict | None:
    view = server.get(f"/admin/rounds/{round_id}").json()
    return view if view["status"] in ("promoted", "rejected", "failed") else None


def arms_with(server, requests: int) -> dict | None:
    """The running canary's arms once they hold `requests` requests together (logged rows)."""
    arms = server.get("/admin/canary").json()["arms"]
    return arms if arms["active"]["requests"] + arms["canary"]["requests"] == requests else None
