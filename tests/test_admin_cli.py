"""``memproxy memories|users|keys`` in process, against a real proxy on a loopback port."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import ThreadedServer

from proxy.cli.main import main
from proxy.gateway.keys import KeyStore
from proxy.state.sqlite import database_path


def test_memories_and_users_commands(
    start_proxy: Callable[..., ThreadedServer], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    url = start_proxy().base_url

    def run(*args: str, code: int = 0) -> str:
        result = main([*args, "--url", url])
        out = capsys.readouterr()
        assert result == code, out.err
        return out.out if code == 0 else out.err

    run("memories", "add", "--user", "ann", "Ann keeps bees", "--metadata", '{"topic": "hobby"}')
    run("memories", "add", "--user", "ann", "Ann lives in Oslo", "--agent", "a1")
    run("memories", "add", "--user", "ann", "Ann works nights")
    table = run("memories", "list", "--user", "ann").splitlines()
    assert table[0].split() == ["created", "(UTC)", "source", "id", "metadata", "memory"]
    assert any(line.endswith("Ann keeps bees") and '{"topic": "hobby"}' in line
               for line in table)
    listed = json.loads(run("memories", "list", "--user", "ann", "--json", "--limit", "1",
                            "--all"))
    assert len(listed) == 3
    filtered = json.loads(run("memories", "list", "--user", "ann", "--json",
                              "--filter", '{"topic": "hobby"}'))
    [bees] = filtered
    assert "Ann lives in Oslo" in run("memories", "search", "--user", "ann", "Oslo")
    run("memories", "edit", bees["id"], "--text", "Ann keeps two hives")
    history = run("memories", "history", bees["id"])
    assert "UPDATE" in history and "Ann keeps two hives" in history
    assert "404" in run("memories", "edit", "nope", "--text", "x", code=1)

    exported = tmp_path / "ann.jsonl"
    run("users", "export", "--user", "ann", "-o", str(exported))
    assert len(exported.read_text().splitlines()) == 3
    assert "embedding" not in exported.read_text()
    run("users", "export", "--user", "ann", "--vectors", "-o", str(exported))
    assert all("embedding" in json.loads(line) for line in exported.read_text().splitlines())
    assert "3 memories" in run("users", "forget", "--user", "ann", "--yes")
    assert "no memories for user ann" in run("memories", "list", "--user", "ann")
    assert "imported 3 memories" in run("users", "import", str(exported), "--batch", "2")
    again = json.loads(run("memories", "list", "--user", "ann", "--json"))
    assert sorted(m["memory"] for m in again) == [
        "Ann keeps two hives", "Ann lives in Oslo", "Ann works nights"]
    run("memories", "delete", bees["id"])
    assert len(json.loads(run("memories", "list", "--user", "ann", "--json"))) == 2


def test_keys_commands_work_on_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEMPROXY_DATA_DIR", str(tmp_path / "data"))
    assert main(["keys", "create", "--tenant", "acme", "--user", "u1", "--name", "bot"]) == 0
    created = capsys.readouterr().out
    token = created.split("store it now): ")[1].strip()
    assert token.startswith("mp-")
    assert main(["keys", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["tenant"] == "acme" and listed["user_id"] == "u1" and "key" not in listed
    assert token not in (tmp_path / "data" / "memproxy.sqlite").read_bytes().decode("latin-1")
    keys = KeyStore(database_path(tmp_path / "data"))
    assert keys.lookup(token) is not None
    assert main(["keys", "revoke", listed["id"]]) == 0
    assert keys.lookup(token) is None
    assert main(["keys", "revoke", listed["id"]]) == 1
    capsys.readouterr()
    assert main(["keys", "list"]) == 0 and "no keys" in capsys.readouterr().out
    assert main(["keys", "list", "--all"]) == 0 and listed["id"] in capsys.readouterr().out
    keys.close()
