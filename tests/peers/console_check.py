"""Weir's operator console in a real browser: headless Chromium driven by Selenium (chromedriver),
against a running `weir demo`. Opens every page, performs every action and checks its effect in the
page and in the metadata DB (read with Python's sqlite3), saves a screenshot of each page.

Usage: console_check.py URL OPERATE_TOKEN READ_TOKEN METADATA_DB DAG_FILE SHOTS_DIR
Prints one line per check; exits non-zero at the first failure, naming it."""

import json
import os
import sqlite3
import sys
import time
import urllib.error
from urllib.parse import quote
import urllib.request

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

URL, OPERATE, READ, DB, DAG_FILE, SHOTS = sys.argv[1:7]
DAG = "orders_daily"


def step(what):
    print("ok", what, flush=True)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800", "--disable-dev-shm-usage"]:
        options.add_argument(a)
    options.add_experimental_option("prefs", {"download.default_directory": SHOTS, "download.prompt_for_download": False})
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


d = browser()
wait = WebDriverWait(d, 30, poll_frequency=0.1)


def until(cond, what, timeout=30):
    """Waits for cond() to be truthy (an observable effect), failing with `what`."""
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # the page may be re-rendering
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what} (last error: {last}); page: {d.current_url}\n{d.find_element(By.TAG_NAME, 'main').text[:2000]}")


def db(sql, *args):
    con = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def open_page(route, token=None):
    """Opens the console at `route` (a deep link, loaded afresh), with `token` when given, and
    waits until the page has rendered that route."""
    d.get("about:blank")
    sep = "&" if "?" in route else "?"
    d.get(f"{URL}/#{route}{sep}token={token}" if token else f"{URL}/#{route}")
    until(lambda: d.execute_script("return document.body.dataset.route") == "#" + route, f"render of {route}")


def shot(name):
    path = os.path.join(SHOTS, name + ".png")
    d.save_screenshot(path)
    assert os.path.getsize(path) > 10_000, f"screenshot {name} looks empty"


def main_text():
    return d.find_element(By.TAG_NAME, "main").text


def confirm(fill=None):
    """Answers the open confirmation dialog (after `fill` fills its inputs) and returns the flash text."""
    dlg = until(lambda: d.find_element(By.ID, "confirm").get_attribute("open") is not None and d.find_element(By.ID, "confirm"), "the confirmation dialog")
    before = len(d.find_elements(By.CSS_SELECTOR, "#flash div"))
    if fill:
        fill()
    dlg.find_element(By.ID, "confirm-ok").click()
    msg = until(lambda: len(d.find_elements(By.CSS_SELECTOR, "#flash div")) > before and d.find_elements(By.CSS_SELECTOR, "#flash div")[-1], "the action's result")
    return msg.get_attribute("data-flash"), msg.text


def type_into(element_id, text):
    """A filler for confirm(): replaces the text of a dialog's input."""
    def fill():
        box = d.find_element(By.ID, element_id)
        box.clear()
        box.send_keys(text)
    return fill


def http(method, path, token, body=None):
    req = urllib.request.Request(URL + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def trigger(dag):
    """A manual run of `dag` through the API (with the operate token): its run id."""
    status, body = http("POST", f"/api/v1/dags/{dag}/runs", OPERATE, {})
    assert status == 201, (status, body)
    return json.loads(body)["run_id"]


try:
    # ---- a read token: everything shows, no action is possible, in the UI and the API ----
    open_page("/dags", READ)
    until(lambda: "token scope: read" in d.find_element(By.ID, "who").text, "whoami says read")
    row = until(lambda: d.find_element(By.CSS_SELECTOR, f'.dl-row[data-dag="{DAG}"]'), "orders_daily in the list")
    assert row.find_element(By.CSS_SELECTOR, "input.pause").get_attribute("disabled") is not None, "pause toggle enabled for a read token"
    open_page(f"/dag/{DAG}/grid")
    assert d.find_element(By.ID, "a-trigger").get_attribute("disabled") is not None, "trigger enabled for a read token"
    # The button is disabled; a request made anyway is refused by the API.
    status, body = http("PATCH", f"/api/v1/dags/{DAG}", READ, {"is_paused": True})
    assert status == 403 and b"operate" in body, (status, body)
    d.execute_script("me = {scope: 'read', operate: true};")  # a tampered page still cannot act
    d.execute_script("document.getElementById('a-pause').disabled = false;")
    d.find_element(By.ID, "a-pause").click()
    kind, text = confirm()
    assert kind == "error" and "operate" in text, (kind, text)
    assert db("SELECT paused FROM flow_dags WHERE dag_id = ?", DAG) == [(0,)], "a read token paused the DAG"
    step("a read token sees every page and cannot act (UI and API: 403)")
    # No action through a GET: action routes answer 405 to GET.
    for path in [f"/api/v1/dags/{DAG}/clear", f"/api/v1/dags/{DAG}/backfill", f"/api/v1/dags/{DAG}/runs/r/tasks/t/state"]:
        status, _ = http("GET", path, OPERATE)
        assert status == 405, (path, status)
    step("no action is possible through a GET (405)")

    # ---- an operate token ----
    open_page("/", OPERATE)
    until(lambda: "token scope: operate" in d.find_element(By.ID, "who").text, "whoami says operate")
    until(lambda: "raw.food_delivery_orders" in main_text() and DAG in main_text(), "the overview's lake and DAG sections")
    shot("01-overview")

    # DAG list: search, filter, pause toggle.
    open_page("/dags")
    q = d.find_element(By.ID, "dag-q")
    q.send_keys("orders", Keys.ENTER)
    until(lambda: "q=orders" in d.current_url and len(d.find_elements(By.CSS_SELECTOR, "#dag-table .dl-row[data-dag]")) == 1, "search narrows the list to orders_daily")
    shot("02-dags-search")
    open_page("/dags")
    d.find_element(By.CSS_SELECTOR, '.dl-row[data-dag="canary"] input.pause').click()
    kind, text = confirm()
    assert kind == "ok", text
    until(lambda: db("SELECT paused FROM flow_dags WHERE dag_id = 'canary'") == [(1,)], "canary paused in the metadata DB")
    open_page("/dags?filter=paused")
    until(lambda: [r.get_attribute("data-dag") for r in d.find_elements(By.CSS_SELECTOR, "#dag-table .dl-row[data-dag]")] == ["canary"], "the paused filter shows canary only")
    shot("03-dags-paused")
    step("DAG list: search, filter, pause (metadata DB flow_dags.paused = 1)")

    # A DAG: trigger with conf, unpause from its page.
    open_page("/dag/canary/grid")
    d.find_element(By.ID, "a-pause").click()
    assert confirm()[0] == "ok"
    until(lambda: db("SELECT paused FROM flow_dags WHERE dag_id = 'canary'") == [(0,)], "canary unpaused in the metadata DB")
    step("unpause from the DAG page")

    open_page(f"/dag/{DAG}/grid")
    before = {r[0] for r in db("SELECT run_id FROM flow_dag_runs WHERE dag_id = ?", DAG)}
    d.find_element(By.ID, "a-trigger").click()

    kind, text = confirm(type_into("t-conf", '{"note": "from the console"}'))
    assert kind == "ok" and "manual__" in text, text
    runs = until(lambda: [r for r in db("SELECT run_id, conf FROM flow_dag_runs WHERE dag_id = ?", DAG) if r[0] not in before], "the triggered run in the metadata DB")
    run_id, conf = runs[0]
    assert json.loads(conf)["note"] == "from the console", conf
    until(lambda: db("SELECT state FROM flow_dag_runs WHERE dag_id = ? AND run_id = ?", DAG, run_id) == [("success",)], "the triggered run succeeds", timeout=90)
    open_page(f"/dag/{DAG}/grid")
    grid = until(lambda: d.find_element(By.ID, "grid"), "the grid")
    runs_shown = len(db("SELECT run_id FROM flow_dag_runs WHERE dag_id = ?", DAG))
    until(lambda: int(grid.get_attribute("data-cells")) == 5 * runs_shown, "a cell per task and run")
    # The newest run is the rightmost column: its first task's cell is drawn in success green.
    col, row = runs_shown - 1, 0
    pixel = d.execute_script(
        "const c = document.getElementById('grid'), r = window.devicePixelRatio || 1;"
        "return Array.from(c.getContext('2d').getImageData((arguments[0] * 16 + 7) * r, ((arguments[1] + 1) * 16 + 7) * r, 1, 1).data);",
        col, row)
    assert pixel[:3] == [0x12, 0xB7, 0x6A], pixel
    size = grid.size
    at = lambda c, r: ((c * 16 + 7) - size["width"] // 2, ((r + 1) * 16 + 7) - size["height"] // 2)
    webdriver.ActionChains(d).move_to_element_with_offset(grid, *at(col, row)).perform()
    until(lambda: d.find_element(By.ID, "tip").text.startswith("snapshot_orders\n") and "success · try 1 · " in d.find_element(By.ID, "tip").text, "hovering a cell shows its task, state, try and duration")
    # Keyboard: focus, arrows, Enter opens the focused task.
    grid.send_keys(Keys.ARROW_DOWN)
    until(lambda: d.find_element(By.ID, "tip").text.startswith("snapshot_payments\n"), "arrows move the focus (and say where)")
    shot("04-dag-grid")
    grid.send_keys(Keys.ENTER)
    until(lambda: "/task/orders_daily/" in d.current_url and d.current_url.endswith("/snapshot_payments"), "Enter opens the focused task")
    step(f"trigger with conf: run {run_id} recorded with its conf and succeeded; grid shows it")

    # Graph of the run: states as colours, a node click opens the task.
    open_page(f"/dag/{DAG}/graph?run={quote(run_id, safe='')}")
    nodes = until(lambda: d.find_elements(By.CSS_SELECTOR, "#graph rect.node.s-success"), "the graph's nodes coloured success")
    assert len(nodes) == 5, len(nodes)
    assert "from the console" in main_text(), "the run's conf is not shown"
    lineage = d.find_element(By.ID, "lineage").text
    assert "current.food_delivery_orders@" in lineage and "order_facts (try 1)" in lineage and "views.order_facts@" in lineage, lineage
    shot("05-dag-graph")
    d.find_element(By.CSS_SELECTOR, '#graph g[data-task="order_facts"] rect').click()
    until(lambda: "/task/" in d.current_url and "order_facts" in d.current_url, "a node opens its task")
    step("graph: left to right, states coloured, opens tasks; the run's lineage lists table versions read and the view written")

    # A task try: tries, log, mark failed, clear with downstream, mark success.
    open_page(f"/task/{DAG}/{run_id}/order_facts")
    until(lambda: d.find_element(By.ID, "log").text.strip() != "", "the try's log")
    assert "try 1" in main_text()
    shot("06-task")
    d.find_element(By.ID, "a-failed").click()
    assert confirm()[0] == "ok"
    until(lambda: db("SELECT state FROM flow_task_instances WHERE dag_id = ? AND run_id = ? AND task_id = 'order_facts'", DAG, run_id) == [("failed",)], "order_facts marked failed in the metadata DB")
    until(lambda: db("SELECT state FROM flow_dag_runs WHERE dag_id = ? AND run_id = ?", DAG, run_id) == [("failed",)], "the run settles as failed")
    open_page(f"/task/{DAG}/{run_id}/order_facts")
    until(lambda: d.find_element(By.CSS_SELECTOR, "h1 .badge").text == "failed", "the page shows failed")
    step("mark failed: task and run failed in the metadata DB and the page")
    d.find_element(By.ID, "a-clear").click()
    kind, text = confirm(lambda: (d.find_element(By.ID, "c-down").click(), d.find_element(By.ID, "c-failed").click()))
    assert kind == "ok" and "order_facts" in text, text
    until(lambda: db("SELECT state, try_number FROM flow_task_instances WHERE dag_id = ? AND run_id = ? AND task_id = 'order_facts'", DAG, run_id) == [("success", 2)], "the cleared task runs again (try 2)", timeout=90)
    open_page(f"/task/{DAG}/{run_id}/order_facts?try=2")
    until(lambda: "try 2" in main_text() and d.find_element(By.CSS_SELECTOR, "h1 .badge").text == "success", "try 2 shown")
    step("clear (failed only, with downstream): try 2 ran and succeeded")
    snapshot = lambda: db("SELECT state FROM flow_task_instances WHERE dag_id = ? AND run_id = ? AND task_id = 'snapshot_orders'", DAG, run_id)
    status, body = http("POST", f"/api/v1/dags/{DAG}/runs/{run_id}/tasks/snapshot_orders/state", OPERATE, {"state": "failed"})
    assert status == 200 and snapshot() == [("failed",)], (status, body, snapshot())
    open_page(f"/task/{DAG}/{run_id}/snapshot_orders")
    d.find_element(By.ID, "a-success").click()
    assert confirm()[0] == "ok"
    assert snapshot() == [("success",)], snapshot()
    status, body = http("POST", f"/api/v1/dags/{DAG}/runs/{run_id}/tasks/snapshot_orders/state", OPERATE, {"state": "running"})
    assert status == 400, (status, body)
    step("mark success; a state other than success/failed is refused (400)")

    # A running try: its log is followed as it grows (colours stripped); downstream says why it waits.
    slow_run = trigger("console_slow")
    until(lambda: db("SELECT state FROM flow_task_instances WHERE dag_id = 'console_slow' AND run_id = ? AND task_id = 'slow'", slow_run) == [("running",)], "the slow task runs")
    open_page(f"/task/console_slow/{slow_run}/after")
    until(lambda: "waiting on upstream: slow (running)" in d.find_element(By.ID, "why").text, "why the downstream task waits")
    open_page(f"/task/console_slow/{slow_run}/slow")
    log = d.find_element(By.ID, "log")
    seen = until(lambda: log.text.count("line ") >= 3 and log.text.count("line "), "the running try's first lines")
    until(lambda: log.text.count("line ") > seen + 4, "the log grows while the page stays open")
    assert "[32m" not in log.text and "\x1b" not in log.text, "ANSI codes shown"
    shot("06b-task-running")
    until(lambda: log.text.count("line ") == 40, "the whole log once the try ended", timeout=30)
    step("a running try's log streams into the page, colours stripped; downstream says it waits on upstream")

    # An approval task waits on its page; a non-approver is refused, an approver's decision lets the run go on.
    gate_run = trigger("console_gate")
    until(lambda: db("SELECT state FROM flow_task_instances WHERE dag_id = 'console_gate' AND run_id = ? AND task_id = 'gate'", gate_run) == [("running",)], "the approval task waits")
    open_page(f"/task/console_gate/{gate_run}/gate")
    box = until(lambda: d.find_element(By.ID, "approval"), "the approval box")
    assert "Ship the report?" in box.text and "carol" in box.text, box.text
    d.find_element(By.ID, "a-approve").click()
    kind, text = confirm(type_into("ap-by", "mallory"))
    assert kind == "error" and "may not decide" in text, (kind, text)
    until(lambda: d.find_element(By.ID, "a-approve"), "the page again after the refusal")
    d.find_element(By.ID, "a-approve").click()
    kind, text = confirm(lambda: (type_into("ap-by", "carol")(), type_into("ap-comment", "looks right")()))
    assert kind == "ok" and '"decision":"approve"' in text, (kind, text)
    until(lambda: db("SELECT state FROM flow_dag_runs WHERE dag_id = 'console_gate' AND run_id = ?", gate_run) == [("success",)], "the approved run succeeds")
    open_page(f"/task/console_gate/{gate_run}/gate")
    decided = until(lambda: d.find_element(By.ID, "ap-decision"), "the decision on the page")
    assert "approve" in decided.text and "carol" in decided.text and "looks right" in decided.text, decided.text
    shot("06c-approval")
    step("an approval task is decided from its page: a non-approver refused, the approver's decision shown and the run goes on")

    # A mapped task: its page lists its instances with their states; an instance's page shows its item.
    fan_run = trigger("console_fan")
    until(lambda: db("SELECT state FROM flow_dag_runs WHERE dag_id = 'console_fan' AND run_id = ?", fan_run) == [("success",)], "the mapped run succeeds")
    open_page(f"/task/console_fan/{fan_run}/each")
    mapped = until(lambda: d.find_element(By.ID, "mapped"), "the mapped instances")
    assert "Mapped instances (2)" in mapped.text and "each[0]" in mapped.text and "each[1]" in mapped.text, mapped.text
    assert mapped.text.count("success") == 2, mapped.text
    shot("06d-mapped")
    mapped.find_element(By.LINK_TEXT, "each[1]").click()
    item = until(lambda: d.find_element(By.ID, "map-item"), "the instance's item")
    assert "Mapped item 1" in item.text and '"south"' in item.text, item.text
    step("a mapped task's page lists its instances; an instance's page shows its item")

    # Backfill a date range.
    open_page(f"/dag/{DAG}/runs")
    d.find_element(By.ID, "a-backfill").click()
    kind, text = confirm(lambda: (d.find_element(By.ID, "b-from").send_keys("2026-11-10"), d.find_element(By.ID, "b-to").send_keys("2026-11-11")))
    assert kind == "ok" and "backfill__" in text, text
    got = db("SELECT run_id FROM flow_dag_runs WHERE dag_id = ? AND run_type = 'backfill' ORDER BY run_id", DAG)
    assert [r[0][:20] for r in got] == ["backfill__2026-11-10", "backfill__2026-11-11"], got
    open_page(f"/dag/{DAG}/runs")
    until(lambda: "backfill__2026-11-10" in main_text(), "the runs tab lists the backfill")
    shot("07-dag-runs")
    step("backfill 2026-11-10..11: two backfill runs in the metadata DB")

    # The DAG file of the version a run used, and a diff to the current one.
    with open(DAG_FILE, "a") as f:
        f.write("# edited for the console test\n")
    old_version = db("SELECT dag_hash FROM flow_dag_runs WHERE dag_id = ? AND run_id = ?", DAG, run_id)[0][0]
    until(lambda: db("SELECT hash FROM flow_dags WHERE dag_id = ?", DAG)[0][0] != old_version, "the scheduler sees the new version", timeout=60)
    open_page(f"/dag/{DAG}/code?version={old_version}")
    diff = until(lambda: d.find_element(By.ID, "diff"), "the diff")
    assert "+ # edited for the console test" in diff.text, diff.text
    shot("08-dag-code-diff")
    step("code: the run's version and its diff to the current file")

    # Lake: tables, schema, history, preview, time travel, freshness.
    open_page("/lake")
    until(lambda: "raw.food_delivery_orders" in main_text(), "the lake's tables")
    shot("09-lake")
    open_page("/lake/current.food_delivery_orders")
    until(lambda: d.find_element(By.ID, "freshness").text.startswith("Freshness"), "freshness of a current table")
    assert "order_id" in main_text()
    shot("10-lake-table")
    open_page("/lake/raw.food_delivery_orders?version=0")
    until(lambda: "version 0 (latest" in main_text(), "time travel to version 0")
    step("lake: tables, schema, history, preview, time travel, freshness")

    # Streams and alerts: charts, alert states, silence create and expire.
    open_page("/streams")
    until(lambda: d.find_elements(By.CSS_SELECTOR, "#lag-chart svg path"), "the lag chart")
    until(lambda: "PaymentFailureRateHigh" in main_text(), "the staged outage's alert", timeout=60)
    history = d.find_element(By.ID, "alert-history").text
    assert "PaymentFailureRateHigh" in history and ("pending" in history or "firing" in history), history
    shot("11-streams")
    d.find_element(By.ID, "new-silence").click()

    kind, text = confirm(type_into("s-m", "alertname=PaymentFailureRateHigh\nmethod=card"))
    assert kind == "ok" and "silenceID" in text, text
    sid = json.loads(text.split("done: ", 1)[1])["silenceID"]
    open_page("/streams")
    until(lambda: d.find_element(By.CSS_SELECTOR, f'button.expire[data-id="{sid}"]'), "the new silence listed")
    _, body = http("GET", "/api/v1/silences", READ)
    listed = [s for s in json.loads(body) if s["id"] == sid]
    assert listed and listed[0]["status"]["state"] == "active", listed
    d.find_element(By.CSS_SELECTOR, f'button.expire[data-id="{sid}"]').click()
    assert confirm()[0] == "ok"
    until(lambda: [s for s in json.loads(http("GET", "/api/v1/silences", READ)[1]) if s["id"] == sid][0]["status"]["state"] == "expired", "the silence expired")
    step("streams: lag chart, firing alert, silence created (active) and expired")

    # SQL: run, chart, history, CSV.
    open_page("/sql")
    box = d.find_element(By.ID, "sql")
    box.clear()
    box.send_keys("SELECT window_start, method, payments FROM serving.payment_failures ORDER BY window_start")
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    until(lambda: "row(s) in" in d.find_element(By.ID, "took").text, "the query's result")
    until(lambda: d.find_elements(By.CSS_SELECTOR, "#chart svg path"), "a line chart")
    Select(d.find_element(By.ID, "ch-kind")).select_by_visible_text("bar")
    until(lambda: d.find_elements(By.CSS_SELECTOR, "#chart svg rect"), "a bar chart")
    assert "q=" in d.current_url, "the URL does not say which query is shown"
    shot("12-sql")
    d.find_element(By.ID, "csv").click()
    csv = os.path.join(SHOTS, "weir-query.csv")
    until(lambda: os.path.exists(csv) and open(csv).read().startswith("window_start,method,payments"), "the CSV download")
    open_page("/sql")
    until(lambda: "serving.payment_failures" in d.find_element(By.ID, "history").text, "the query in the history")
    step("sql: result, line and bar chart, deep link, CSV, history")

    # Keyboard: single keys move between pages.
    d.find_element(By.TAG_NAME, "body").send_keys("d")
    until(lambda: d.current_url.endswith("#/dags"), "key d opens the DAG list")
    step("keyboard navigation")
finally:
    d.quit()
print("all console checks passed", flush=True)
