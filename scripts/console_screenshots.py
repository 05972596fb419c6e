"""Screenshots of the memory console for the README (docs/console-*.png).

Starts the real app in this process on a temporary data dir (the bundled all-MiniLM-L6-v2
embedder, offline; raw extraction; the tests' fake upstream), fills it with a few users,
then drives Debian's Chromium (headless, through /usr/bin/chromedriver) over the pages:

    scripts/console-screenshots [--out docs]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeUpstream  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from servers import ThreadedServer  # noqa: E402

from proxy.app import create_app  # noqa: E402
from proxy.config_sources import load_settings  # noqa: E402

ADMIN = "adm-screenshots"
ALICE = [
    ("User is building a meal-planning app in Next.js with a Postgres backend", "s1",
     {"topic": "work"}),
    ("User has a border collie called Pixel", "s1", {"topic": "pets"}),
    ("User is vegetarian and does not eat mushrooms", "s2", {"topic": "food"}),
    ("User lives in Porto and cycles to work", "s2", {}),
    ("User's sister Inês is visiting in March", "s3", {"topic": "family"}),
    ("User is learning to play the cello on weekends", "s3", {"topic": "hobby"}),
    ("User prefers answers with code samples in TypeScript", "s4", {"topic": "work"}),
    ("User deploys the app on Fly.io, one region", "s4", {"topic": "work"}),
    ("The meal-planning app's beta opens on 1 June", "s5", {"topic": "work"}),
    ("User ran the Porto half marathon in 1:52", "s5", {"topic": "sport"}),
    ("Pixel is scared of thunderstorms", "s6", {"topic": "pets"}),
    ("User wants to read more science fiction this year", "s6", {}),
    ("User had a knee injury last autumn, so no long runs", "s7", {"topic": "sport"}),
    ("User drinks coffee black", "s7", {"topic": "food"}),
]
OTHERS = [("bob", "Bob works night shifts at the harbour"), ("bob", "Bob plays chess online"),
          ("carol", "Carol teaches maths"), ("team/dev-1", "Prefers tabs over spaces"),
          ("team/dev-2", "Maintains the billing service")]


def seed(base: str) -> None:
    api = httpx.Client(base_url=base, timeout=60, headers={"authorization": f"Bearer {ADMIN}"})
    day = 86_400
    start = time.time() - 40 * day
    for i, (text, session, metadata) in enumerate(ALICE):
        made = api.post("/v1/memories", json={
            "user_id": "alice", "text": text,
            "infer": False, "session_id": session, "agent_id": "chat", "metadata": metadata,
            "created_at": start + i * 2.5 * day})
        made.raise_for_status()
    for user, text in OTHERS:
        api.post("/v1/memories", json={"user_id": user, "text": text,
                                       "infer": False}).raise_for_status()
    api.post("/v1/memories", json={"user_id": "dana", "text": "Dana is a pilot", "infer": False,
                                   "tenant": "acme"}).raise_for_status()
    listed = api.get("/v1/memories", params={"user_id": "alice", "limit": 100}).json()["data"]
    coffee = next(m for m in listed if "coffee" in m["memory"])
    api.patch(f"/v1/memories/{coffee['id']}",
              json={"text": "User drinks coffee black, no sugar"}).raise_for_status()
    chat = {"model": "demo", "messages": [{"role": "user", "content": "What should I cook "
                                           "tonight?"}]}
    httpx.post(base + "/v1/chat/completions", json=chat, headers={"X-User-Id": "alice"},
               timeout=60).raise_for_status()


def browser(profile: str) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def shoot(driver: Any, path: Path, width: int, max_height: int = 1800) -> None:
    driver.set_window_size(width, 800)
    time.sleep(0.3)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 20, max_height))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    print("wrote", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="memproxy-shots-"))
    try:
        with FakeUpstream() as upstream:
            settings = load_settings(None, environ={}, overrides={
                "data_dir": str(work / "data"), "upstream.url": upstream.url,
                "extraction.mode": "raw", "store.shards": 4,
            })
            settings.admin_key = SecretStr(ADMIN)
            with ThreadedServer(create_app(settings)) as server:
                seed(server.base_url)
                take(server.base_url, args.out, str(work / "chromium"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def take(base: str, out: Path, profile: str) -> None:
    driver = browser(profile)
    wait = WebDriverWait(driver, 20)
    try:
        driver.set_window_size(1200, 800)
        driver.get(base + "/console/")
        wait.until(EC.visibility_of_element_located((By.ID, "key"))).send_keys(ADMIN + "\n")
        wait.until(EC.text_to_be_present_in_element((By.ID, "who"), "Signed in"))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-user]")))
        shoot(driver, out / "console-users.png", 1200)

        driver.get(base + "/console/#/user?id=alice&q=which+stack+is+my+app+built+on")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-memory-id]")))
        shoot(driver, out / "console-memories.png", 1200)

        driver.get(base + "/console/#/user?id=alice&q=coffee")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-memory-id]")))
        driver.find_element(By.CSS_SELECTOR, "button[aria-label='History of memory']").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-event]")))
        shoot(driver, out / "console-history.png", 1200)

        driver.get(base + "/console/#/explain?user=alice")
        message = wait.until(EC.visibility_of_element_located((By.NAME, "message")))
        message.send_keys("Can you suggest a dinner recipe? Something quick.")
        driver.find_element(By.CSS_SELECTOR, "#page form button[type=submit]").click()
        wait.until(EC.visibility_of_element_located((By.ID, "block")))
        shoot(driver, out / "console-explain.png", 1200, 2600)

        driver.get(base + "/console/#/jobs")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "li[data-stat]")))
        shoot(driver, out / "console-jobs.png", 1200)

        driver.get(base + "/console/#/user?id=alice")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-memory-id]")))
        shoot(driver, out / "console-phone.png", 390, 1600)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
