"""The memory console in a real headless browser (Debian's Chromium through Selenium and
chromedriver; nothing is downloaded): sign in, find a user, search, edit a memory and see the
change and its history, delete one, Explain with the scores of the search API, and a proxy
key bound to one user that cannot see another. One browser and one proxy for the module."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HashingEmbedder
from fake_upstream import FakeUpstream
from pydantic import SecretStr
from servers import ThreadedServer

from proxy.app import create_app
from proxy.config_sources import load_settings
from proxy.gateway.keys import KeyStore
from proxy.state.sqlite import database_path

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ADMIN = "adm-browser"
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Chromium and chromedriver from Debian's packages (scripts/test-deps installs them)",
)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1200,900")


def start_browser(profile: str) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    return driver


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedServer, str]]:
    """Keys mode with an admin key; 'ann' and 'bob' in tenant default, 'cy' in acme.
    Yields the proxy and a proxy key bound to ann."""
    data = tmp_path_factory.mktemp("console-data")
    with FakeUpstream() as upstream:
        settings = load_settings(None, environ={}, overrides={
            "data_dir": str(data), "upstream.url": upstream.url, "extraction.mode": "raw",
            "store.shards": 4, "auth.mode": "keys", "upstream.api_key": "sk-upstream",
        })
        settings.admin_key = SecretStr(ADMIN)
        keys = KeyStore(database_path(data))
        _, ann_key = keys.create("default", user_id="ann")
        keys.close()
        with ThreadedServer(create_app(settings, embedder=HashingEmbedder())) as server:
            api = admin(server)
            for user, text, tenant in [
                ("ann", "Ann keeps bees in the garden", "default"),
                ("ann", "Ann drinks green tea", "default"),
                ("ann", "Ann is learning the cello", "default"),
                ("anna", "Anna rides a red bicycle", "default"),
                ("bob", "Bob's secret is the blue door", "default"),
                ("cy", "Cy works in Lisbon", "acme"),
            ]:
                made = api.post("/v1/memories", json={"user_id": user, "text": text,
                                                      "infer": False, "tenant": tenant})
                assert made.status_code == 201, made.text
            yield server, ann_key


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="memproxy-chromium-")
    driver = start_browser(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def admin(server: ThreadedServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=20,
                        headers={"authorization": f"Bearer {ADMIN}"})


def wait(driver: Any, condition: Any, timeout: float = 30) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def css(driver: Any, selector: str) -> Any:
    return wait(driver, EC.visibility_of_element_located((By.CSS_SELECTOR, selector)))


def sign_in(driver: Any, server: ThreadedServer, key: str) -> None:
    driver.get(server.base_url + "/console/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(server.base_url + "/console/#/users")
    field = css(driver, "#key")
    field.send_keys(key)
    field.submit()
    wait(driver, EC.text_to_be_present_in_element((By.ID, "who"), "Signed in"))


def rows(driver: Any, selector: str = "tbody tr") -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def test_sign_in_and_find_a_user(browser: Any, proxy: tuple[ThreadedServer, str]) -> None:
    server, _ = proxy
    browser.get(server.base_url + "/console")  # redirected to /console/
    css(browser, "#key").send_keys("wrong-key\n")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "status"), "admin key"))
    assert not css(browser, "#login").get_attribute("hidden")

    sign_in(browser, server, ADMIN)
    assert "admin" in css(browser, "#who").text
    wait(browser, lambda d: len(rows(d)) == 3)
    assert [r.get_attribute("data-user") for r in rows(browser)] == ["ann", "anna", "bob"]
    prefix = css(browser, "input[name=prefix]")
    prefix.send_keys("ann\n")
    wait(browser, lambda d: [r.get_attribute("data-user") for r in rows(d)] == ["ann", "anna"])
    ann = rows(browser)[0].find_elements(By.TAG_NAME, "td")
    assert ann[1].text == "3" and "UTC" in ann[3].text  # memories, last activity
    css(browser, "input[name=prefix]").clear()  # the tenant switch keeps the other fields
    Select(css(browser, "select[name=tenant]")).select_by_value("acme")
    wait(browser, lambda d: [r.get_attribute("data-user") for r in rows(d)] == ["cy"])
    # The key is in the tab's sessionStorage only: not in the URL, no cookie.
    assert ADMIN not in browser.current_url and browser.get_cookies() == []
    assert browser.execute_script("return document.cookie") == ""


def test_search_edit_history_and_delete(browser: Any, proxy: tuple[ThreadedServer, str]) -> None:
    server, _ = proxy
    api = admin(server)
    sign_in(browser, server, ADMIN)
    browser.get(server.base_url + "/console/#/user?id=ann")
    wait(browser, lambda d: len(rows(d, "tr[data-memory-id]")) == 3)

    search = css(browser, "input[name=q]")
    search.send_keys("bees garden\n")
    wait(browser, EC.text_to_be_present_in_element((By.TAG_NAME, "caption"), "ranked"))
    first = rows(browser, "tr[data-memory-id]")[0]
    assert "bees" in first.text
    expected = api.post("/v1/memories/search", json={"user_id": "ann", "query": "bees garden",
                                                     "limit": 100}).json()["data"]
    shown = [r.get_attribute("data-memory-id") for r in rows(browser, "tr[data-memory-id]")]
    assert shown == [hit["id"] for hit in expected]
    cells = first.find_elements(By.TAG_NAME, "td")
    assert (cells[3].text, cells[4].text) == (f"{expected[0]['score']:.6f}",
                                              f"{expected[0]['rank_score']:.6f}")

    memory_id = first.get_attribute("data-memory-id")
    first.find_element(By.CSS_SELECTOR, "button[aria-label='Edit memory']").click()
    text = css(browser, f"tr[data-memory-id='{memory_id}'] textarea[name=text]")
    text.clear()
    text.send_keys("Ann keeps three hives of bees")
    meta = browser.find_element(By.CSS_SELECTOR, f"tr[data-memory-id='{memory_id}'] "
                                                 "textarea[name=metadata]")
    meta.clear()
    meta.send_keys('{"topic": "hobby"}')
    browser.find_element(By.CSS_SELECTOR, f"tr[data-memory-id='{memory_id}'] "
                                          "button[type=submit]").click()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "status"), "Memory saved"))
    row = css(browser, f"tr[data-memory-id='{memory_id}']")
    assert "Ann keeps three hives of bees" in row.text and '{"topic":"hobby"}' in row.text
    stored = api.get(f"/v1/memories/{memory_id}").json()
    assert (stored["memory"], stored["metadata"]) == ("Ann keeps three hives of bees",
                                                      {"topic": "hobby"})

    row.find_element(By.CSS_SELECTOR, "button[aria-label='History of memory']").click()
    wait(browser, lambda d: len(rows(d, f"tr[data-memory-id='{memory_id}'] tr[data-event]")) == 2)
    events = rows(browser, f"tr[data-memory-id='{memory_id}'] tr[data-event]")
    assert [e.get_attribute("data-event") for e in events] == ["ADD", "UPDATE"]
    assert "Ann keeps bees in the garden" in events[1].text
    assert "Ann keeps three hives of bees" in events[1].text and "api" in events[1].text

    browser.get(server.base_url + "/console/#/user?id=ann")
    wait(browser, lambda d: len(rows(d, "tr[data-memory-id]")) == 3)
    victim = next(r for r in rows(browser, "tr[data-memory-id]") if "cello" in r.text)
    victim_id = victim.get_attribute("data-memory-id")
    victim.find_element(By.CSS_SELECTOR, "button[aria-label='Delete memory']").click()
    wait(browser, EC.alert_is_present()).accept()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "status"), "Memory deleted"))
    wait(browser, lambda d: len(rows(d, "tr[data-memory-id]")) == 2)
    assert api.get(f"/v1/memories/{victim_id}").status_code == 404


def test_explain_shows_the_search_scores(browser: Any, proxy: tuple[ThreadedServer, str]
                                         ) -> None:
    server, _ = proxy
    api = admin(server)
    sign_in(browser, server, ADMIN)
    browser.get(server.base_url + "/console/#/explain?user=ann")
    message = css(browser, "textarea[name=message]")
    message.send_keys("do I drink green tea or keep bees?")
    browser.find_element(By.CSS_SELECTOR, "#page form button[type=submit]").click()
    css(browser, "#block")
    shown = {
        r.get_attribute("data-memory-id"): (r.find_element(By.CSS_SELECTOR, ".score").text,
                                            r.find_element(By.CSS_SELECTOR, ".rank").text,
                                            r.get_attribute("data-outcome"))
        for r in rows(browser, "#explain-result tr[data-memory-id]")
    }
    searched = api.post("/v1/memories/search", json={
        "user_id": "ann", "query": "do I drink green tea or keep bees?", "limit": 100}).json()
    assert len(shown) == len(searched["data"]) == 2
    for hit in searched["data"]:
        assert shown[hit["id"]][:2] == (f"{hit['score']:.6f}", f"{hit['rank_score']:.6f}")
        assert shown[hit["id"]][2] == "injected"
    block = css(browser, "#block").text
    assert "<memories>" in block and "Ann drinks green tea" in block
    assert not browser.find_elements(By.CSS_SELECTOR, ".time-asked")

    # A question about a time says which days it read.
    message.clear()
    message.send_keys("What did I do yesterday?")
    browser.find_element(By.CSS_SELECTOR, "#page form button[type=submit]").click()
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
    wait(browser, EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".time-asked"),
                                                   f"“yesterday”: {yesterday}"))
    assert css(browser, ".time-asked").text.endswith("its memories first")

    # A chat request shows up under recent injections, ids and scores.
    chat = httpx.post(server.base_url + "/v1/chat/completions", headers={
        "authorization": f"Bearer {proxy[1]}"}, json={"model": "m", "messages": [
            {"role": "user", "content": "tell me about my tea"}]}, timeout=20)
    assert chat.status_code == 200 and chat.headers["x-memory-status"] == "injected"
    browser.find_element(By.CSS_SELECTOR, "#page form button[type=submit]").click()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "recent-injections"), "ann"))
    [record] = api.get("/v1/memories/injections").json()["data"]
    recent = css(browser, "#recent-injections").text
    assert all(m["id"][:8] in recent for m in record["injected"])


def test_a_key_bound_to_one_user_cannot_see_another(
    browser: Any, proxy: tuple[ThreadedServer, str]
) -> None:
    server, ann_key = proxy
    sign_in(browser, server, ann_key)
    assert "user ann" in css(browser, "#who").text
    heading = (By.CSS_SELECTOR, "#page h1")
    wait(browser, EC.text_to_be_present_in_element(heading, "Memories of ann"))
    browser.get(server.base_url + "/console/#/user?id=bob")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "status"), "another user"))
    assert "blue door" not in browser.find_element(By.TAG_NAME, "body").text
    browser.get(server.base_url + "/console/#/explain?user=bob")
    css(browser, "textarea[name=message]").send_keys("secret door")
    user = browser.find_element(By.CSS_SELECTOR, "input[name=user]")
    assert user.get_attribute("value") == "ann" and user.get_attribute("readonly") is not None
    browser.get(server.base_url + "/console/#/jobs")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "page"), "admin key"))
    with pytest.raises(TimeoutException):  # nothing of bob's ever shows up
        wait(browser, EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "blue door"), 1)


def test_jobs_page_for_the_admin(browser: Any, proxy: tuple[ThreadedServer, str]) -> None:
    server, _ = proxy
    sign_in(browser, server, ADMIN)
    browser.get(server.base_url + "/console/#/jobs")
    stat = css(browser, "li[data-stat=done]")
    assert stat.text.startswith("done: ")
    dead = browser.find_element(By.CSS_SELECTOR, "li[data-stat=dead]")
    assert dead.text == "dead: 0"
