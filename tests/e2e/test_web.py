"""`scripts/admin.sh web` against real clusters, read in Debian's headless Chromium (Selenium).

Screenshots go to <tmp_path>/screenshots (and to $KVS_WEB_SHOTS too, when set).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from kvs._gen import kvs_pb2 as pb
from kvs.clock import now_ms
from kvs.local.processes import Process, port_open, wait_for
from kvs.replication.codec import Codec
from tests.e2e.conftest import Certs, Processes, addressed, tls_server
from tests.e2e.harness import ROOT, KvsServer, mqtt_client, publish_all, run_client

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1200",
)

# Read the cards in one round trip: {id: {health, keys, agrees, text}}.
CARDS_JS = """
const out = {};
for (const c of document.querySelectorAll('.card')) {
  out[c.dataset.id] = {health: c.dataset.health, keys: c.dataset.keys, agrees: c.dataset.agrees,
                       text: c.innerText, batches: c.querySelector('.batches').innerText};
}
return out;
"""


class Page:
    """The live view open in a browser."""

    def __init__(self, driver: webdriver.Chrome, url: str, shots: Path) -> None:
        self.driver = driver
        self.url = url
        self.shots = shots

    def cards(self) -> dict[str, dict[str, str]]:
        result: dict[str, dict[str, str]] = self.driver.execute_script(CARDS_JS)
        return result

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def visible(self, element_id: str) -> bool:
        return bool(self.driver.find_element(By.ID, element_id).is_displayed())

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        if extra := os.environ.get("KVS_WEB_SHOTS"):
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    def wait_cards(self, what: str, probe: Any, timeout: float = 20.0) -> dict[str, dict[str, str]]:
        def check() -> dict[str, dict[str, str]] | None:
            cards = self.cards()
            return cards if probe(cards) else None

        return wait_for(what, check, timeout, every=0.05)


def start_web(processes: Processes, *addresses: str, flags: Sequence[str] = ()) -> str:
    port = processes.port()
    argv = [str(ROOT / "scripts" / "admin.sh"), "web", *addresses, "--port", str(port), *flags]
    web = Process("web", argv, processes.log_dir)
    processes.started.append(web)
    web.start()
    wait_for("the web view to listen", lambda: port_open(port) or not web.running())
    assert web.running(), web.log()
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium, "./compile.sh --dev installs Debian's chromium"
    assert driver, "./compile.sh --dev installs Debian's chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def open_page(browser: webdriver.Chrome, url: str, tmp_path: Path) -> Page:
    shots = tmp_path / "screenshots"
    shots.mkdir(exist_ok=True)
    browser.get(url)
    return Page(browser, url, shots)


def all_serving(names: list[str]) -> Any:
    return lambda cards: (
        sorted(cards) == sorted(names) and all(cards[n]["health"] == "SERVING" for n in names)
    )


def put_cli(server: KvsServer, key: str, value: str) -> None:
    run_client("--host", "127.0.0.1", "--porta", str(server.port), "put", "--chave", key, "--valor", value)


def test_a_put_through_the_cli_appears_on_every_card_within_a_second(
    processes: Processes, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    servers = addressed(processes, 3)
    s1, s2, s3 = servers
    names = [s.name for s in servers]
    page = open_page(browser, start_web(processes, s1.name), tmp_path)  # one address: finds the others
    page.wait_cards("three SERVING cards", all_serving(names))

    put_cli(s1, "fruta", "banana")
    written = time.monotonic()
    cards = page.wait_cards(
        "the write on every card",
        lambda c: (
            all(c[n]["keys"] == "1" for n in names) and all("fruta" in c[n]["batches"] for n in names[1:])
        ),
        timeout=5,
    )
    took = time.monotonic() - written
    assert took < 1.0, f"the write took {took:.2f} s to show on every card"
    assert all(cards[n]["agrees"] == "true" for n in names)
    assert f"← {s1.name}: fruta" in cards[s2.name]["batches"]
    page.shot("1-put-everywhere")

    # The form writes through the chosen server, and the others show the batch with its lag.
    Select(browser.find_element(By.ID, "kv-server")).select_by_value(s3.name)
    browser.find_element(By.ID, "kv-key").clear()
    browser.find_element(By.ID, "kv-key").send_keys("from the page")
    browser.find_element(By.ID, "kv-value").clear()
    browser.find_element(By.ID, "kv-value").send_keys("maçã")
    browser.find_element(By.ID, "kv-put").click()
    wait_for("the put's answer", lambda: "version" in page.text("kv-result"))
    assert page.text("kv-result").startswith(f"✔ put 'from the page' = 'maçã' on {s3.name}")
    cards = page.wait_cards(
        "the page's write on the others, timed",
        lambda c: all("from the page" in c[n]["batches"] and "ms, timed" in c[n]["text"] for n in names[:2]),
        timeout=5,
    )
    assert "lag" in cards[s1.name]["batches"]
    assert s1.stub.Get(pb.KeyRequest(key="from the page")).val == "maçã"
    browser.find_element(By.ID, "kv-get").click()
    wait_for("the get's answer", lambda: "has 'from the page'" in page.text("kv-result"))
    browser.find_element(By.ID, "kv-delete").click()
    wait_for("the delete's answer", lambda: "deleted 'from the page'" in page.text("kv-result"))
    page.wait_cards("the delete everywhere", lambda c: all(c[n]["keys"] == "1" for n in names))
    page.shot("2-form")


def test_a_server_stopped_with_sigterm_turns_not_serving_and_back_when_restarted(
    processes: Processes, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    servers = addressed(processes, 3)
    s1, s2, _ = servers
    names = [s.name for s in servers]
    page = open_page(browser, start_web(processes, *names), tmp_path)
    page.wait_cards("three SERVING cards", all_serving(names))

    s2.stop(signal.SIGTERM)
    cards = page.wait_cards("s2 not serving", lambda c: c[s2.name]["health"] != "SERVING", timeout=10)
    assert "NOT SERVING" in cards[s2.name]["text"]
    assert "3 servers · 2 serving" in page.text("summary")
    page.shot("3-stopped")
    put_cli(s1, "while-away", "x")

    processes.server(s2.name, port=s2.port)
    cards = page.wait_cards("s2 serving again", all_serving(names), timeout=30)
    page.wait_cards("s2 caught up with the write it missed", lambda c: c[s2.name]["keys"] == "1", timeout=15)
    events = page.text("events")
    assert f"{s2.name} stopped answering" in events
    assert f"{s2.name} answers" in events
    page.shot("4-restarted")


def test_a_server_started_late_shows_its_catch_up(
    processes: Processes, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    s1, s2 = addressed(processes, 2)
    rows = [pb.KeyValueRequest(key=f"bulk{i:05}", val="x" * 200) for i in range(5_000)]
    list(s1.stub.PutAll(iter(rows)))
    wait_for("s2 to hold the state", lambda: s2.status().keys == 5_000, timeout=60)
    late_port = processes.port()
    late_name = f"127.0.0.1:{late_port}"
    # Its address given from the start, as a class would: the page asks it before it answers.
    page = open_page(browser, start_web(processes, s1.name, late_name), tmp_path)
    page.wait_cards(
        "two SERVING cards", lambda c: all(c.get(n, {}).get("health") == "SERVING" for n in names2(s1, s2))
    )
    assert "NOT SERVING" in page.wait_cards("the late card", lambda c: late_name in c)[late_name]["text"]

    # A joiner waits for the state of every peer it sees: with a member that never answers (a
    # presence made with the cluster key, said again as a live server does), it stays joining until
    # that member leaves, whatever the speed of this machine. (s2 paused instead left joining within
    # 15 s of the pause, when the broker dropped s2: too soon on a loaded machine.)
    ghost = Codec(processes.cluster, "ghost", processes.cluster_key(), epoch=now_ms(), clock=now_ms)
    presence = f"{processes.cluster}/peers/ghost"
    leaving = threading.Event()

    def keep_present() -> None:  # silent for a sync interval, it would be let go (docs/replication.md)
        with mqtt_client(processes.broker) as client:
            while not leaving.wait(0.2):
                client.publish(presence, ghost.presence(), qos=1, retain=True)

    keeper = threading.Thread(target=keep_present)
    publish_all(processes.broker, [(presence, ghost.presence())], retain=True)
    keeper.start()
    try:
        late = processes.server(late_name, port=late_port, wait=False)
        wait_for("the late server to listen", lambda: port_open(late_port) or not late.running(), 60)
        cards = page.wait_cards(
            "the late server catching up", lambda c: "CATCHING UP" in c[late_name]["text"]
        )
        assert "catching up for" in cards[late_name]["text"]
        page.shot("5-late-joiner-catching-up")
    finally:
        leaving.set()
        keeper.join()
    publish_all(processes.broker, [(presence, ghost.presence(up=False))], retain=True)  # it leaves
    cards = page.wait_cards(
        "the late server caught up",
        lambda c: c[late_name]["health"] == "SERVING" and c[late_name]["keys"] == "5000",
        timeout=60,
    )
    events = page.text("events")
    assert f"{late_name} is catching up" in events, events
    assert f"{late_name} caught up: 5000 keys" in events, events
    assert "caught up within" in cards[late_name]["text"]
    page.shot("5-late-joiner")


def names2(*servers: KvsServer) -> list[str]:
    return [s.name for s in servers]


def test_a_forced_disagreement_shows_the_differing_keys_and_then_clears(
    processes: Processes, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    broker = processes.broker
    servers = addressed(processes, 3)
    s1, s2, s3 = servers
    names = [s.name for s in servers]
    page = open_page(browser, start_web(processes, s1.name), tmp_path)
    page.wait_cards("three SERVING cards", all_serving(names))
    assert not page.visible("diff")

    broker.stop()  # every server keeps serving, but nothing replicates
    wait_for("the servers to notice", lambda: not any(s.status().connected for s in servers))
    s1.stub.Put(pb.KeyValueRequest(key="only-on-s1", val="one"))
    s2.stub.Put(pb.KeyValueRequest(key="only-on-s2", val="two"))
    wait_for(
        "the differing keys", lambda: page.visible("diff") and "only-on-s2" in page.text("diff"), timeout=15
    )
    rows = {
        row.get_attribute("data-key"): row.text
        for row in browser.find_elements(By.CSS_SELECTOR, "#diff-rows tr")
    }
    assert set(rows) == {"only-on-s1", "only-on-s2"}
    assert rows["only-on-s1"].startswith("only-on-s1 ")
    assert rows["only-on-s1"].count("'one' @") == 1
    assert rows["only-on-s1"].count("absent") == 2
    assert "2 keys differ" in page.text("diff")
    cards = page.cards()
    assert all(cards[n]["agrees"] == "false" for n in names)
    assert "NOT connected" in cards[s3.name]["text"]
    assert "replicas differ" in page.text("summary")
    page.shot("6-disagreement")

    processes.new_broker(port=broker.port)
    wait_for("the box to clear", lambda: not page.visible("diff"), timeout=60)
    cards = page.wait_cards("agreement", lambda c: all(c[n]["agrees"] == "true" for n in names))
    assert all(cards[n]["keys"] == "2" for n in names)
    assert "all replicas that answer agree again" in page.text("events")
    page.shot("7-agree-again")


def test_the_view_speaks_mutual_tls_with_the_admin_tools_flags(
    processes: Processes, browser: webdriver.Chrome, tmp_path: Path, certs: Certs
) -> None:
    server = tls_server(processes, certs, mutual=True)
    address = f"127.0.0.1:{server.port}"
    flags = certs.client_flags()
    page = open_page(browser, start_web(processes, address, flags=flags), tmp_path)
    page.wait_cards("the SERVING card", lambda c: c.get("tls1", {}).get("health") == "SERVING")
    browser.find_element(By.ID, "kv-put").click()
    wait_for("the put's answer", lambda: "version" in page.text("kv-result"))
    assert page.text("kv-result").startswith("✔ put 'fruit' = 'banana' on tls1")
    page.wait_cards("the key counted", lambda c: c["tls1"]["keys"] == "1")
