"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed).

The Dockerfile is parsed by hand (comments dropped, backslash continuations
joined) and cross-checked against pyproject.toml and the files in the repo.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# --------------------------------------------------------------------------- parsing


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """Return [(INSTRUCTION, args)] with continuations joined and comments removed."""
    instructions: list[tuple[str, str]] = []
    buf: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        # Comment and blank lines are dropped, also inside a continuation.
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        line = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not buf, "Dockerfile ends inside a line continuation"
    return instructions


def exec_form(args: str) -> list[str] | None:
    """Parse a JSON (exec) form argument list, or None for shell form."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value
    return None


def words(args: str) -> list[str]:
    form = exec_form(args)
    return form if form is not None else shlex.split(args)


def strip_flags(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    rest: list[str] = []
    for tok in tokens:
        if tok.startswith("--") and not rest:
            key, _, val = tok[2:].partition("=")
            flags[key] = val
        else:
            rest.append(tok)
    return flags, rest


def parse_env(args: str) -> dict[str, str]:
    toks = shlex.split(args)
    if toks and "=" not in toks[0]:  # legacy "ENV KEY value with spaces"
        return {toks[0]: " ".join(toks[1:])}
    env = {}
    for tok in toks:
        key, sep, val = tok.partition("=")
        assert sep, f"malformed ENV token {tok!r}"
        env[key] = val
    return env


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Minimal .dockerignore matcher: last matching pattern wins, '!' re-includes."""
    path = path.strip("/")
    candidates = [path]
    parts = path.split("/")
    # A pattern matching a parent directory excludes everything below it.
    candidates += ["/".join(parts[:i]) for i in range(1, len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip().strip("/")
        if pat.startswith("./"):
            pat = pat[2:]
        alts = [pat]
        if pat.startswith("**/"):
            alts.append(pat[3:])
        if any(fnmatch.fnmatchcase(c, a) for c in candidates for a in alts):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "Dockerfile missing at repo root"
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def find(instructions, keyword: str) -> list[tuple[int, str]]:
    return [(i, args) for i, (kw, args) in enumerate(instructions) if kw == keyword]


def final_stage(instructions) -> list[tuple[str, str]]:
    froms = find(instructions, "FROM")
    assert froms, "no FROM instruction"
    return instructions[froms[-1][0] :]


# --------------------------------------------------------------------------- tests


def test_parser_joins_continuations_and_drops_comments():
    text = 'FROM a\n# c\nRUN echo 1 \\\n  # inner comment\n  && echo 2\nCMD ["x"]\n'
    assert parse_dockerfile(text) == [
        ("FROM", "a"),
        ("RUN", "echo 1 && echo 2"),
        ("CMD", '["x"]'),
    ]


def test_base_image_is_slim_python(instructions):
    froms = find(instructions, "FROM")
    assert froms, "no FROM instruction"
    stage_names = set()
    for _, args in froms:
        toks = args.split()
        image = toks[0]
        if image not in stage_names:
            assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim(-[a-z]+)?", image), (
                f"base image {image!r} is not a slim python image"
            )
        if len(toks) >= 3 and toks[1].upper() == "AS":
            stage_names.add(toks[2])


def _torch_pin_from_pyproject(pyproject) -> str:
    reqs = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    torch = [r for r in reqs if r.name.lower() == "torch"]
    assert len(torch) == 1, "pyproject must declare torch exactly once"
    pins = [s.version for s in torch[0].specifier if s.operator in ("==", "===", "<=")]
    assert len(pins) == 1, f"torch needs one pin/upper bound in pyproject, got {torch[0]}"
    return pins[0]


def test_torch_from_cpu_index_pinned_to_pyproject(instructions, pyproject):
    expected = _torch_pin_from_pyproject(pyproject)
    torch_runs = [
        args
        for _, args in find(final_stage(instructions), "RUN")
        if "pip install" in args and re.search(r"(?<![\w-])torch(?![\w-])", args)
    ]
    assert torch_runs, "no RUN pip install of torch in the final stage"
    found = False
    for cmd in torch_runs:
        toks = shlex.split(cmd)
        index_ok = any(
            (t in ("--index-url", "-i") and i + 1 < len(toks) and toks[i + 1] == TORCH_CPU_INDEX)
            or t == f"--index-url={TORCH_CPU_INDEX}"
            for i, t in enumerate(toks)
        )
        pins = [t.split("==", 1)[1] for t in toks if t.startswith("torch==")]
        if index_ok and pins:
            assert pins == [expected], f"Dockerfile pins torch {pins}, pyproject says {expected}"
            found = True
    assert found, "torch is not installed pinned (torch==X) from the CPU index"


def test_torch_installed_before_project(instructions):
    stage = final_stage(instructions)
    runs = [(i, a) for i, a in find(stage, "RUN") if "pip install" in a]
    torch_idx = [i for i, a in runs if "torch==" in a]
    project_install = re.compile(r"""(?<!\S)["']?\.(\[[\w,-]+\])?["']?(?!\S)""")
    project_idx = [i for i, a in runs if project_install.search(a)]
    assert torch_idx and project_idx, "expected a torch install and a project install"
    assert min(torch_idx) < min(project_idx), "torch must be installed before the project"


def test_non_root_user_before_cmd(instructions):
    stage = final_stage(instructions)
    cmds = find(stage, "CMD")
    assert cmds, "no CMD instruction"
    cmd_idx = cmds[-1][0]
    users = [(i, args) for i, args in find(stage, "USER") if i < cmd_idx]
    assert users, "no USER instruction before CMD"
    user = users[-1][1].strip()
    name, _, group = user.partition(":")
    assert name not in ("root", "0", ""), f"runs as root: USER {user}"
    assert group not in ("root", "0"), f"runs with root group: USER {user}"


def test_volume_and_expose(instructions):
    stage = final_stage(instructions)
    volumes = [v for _, args in find(stage, "VOLUME") for v in words(args)]
    assert volumes, "no VOLUME instruction"
    exposes = [p.split("/")[0] for _, args in find(stage, "EXPOSE") for p in args.split()]
    assert exposes, "no EXPOSE instruction"

    env: dict[str, str] = {}
    for _, args in find(stage, "ENV"):
        env.update(parse_env(args))
    assert env.get("MEMPROXY_DATA_DIR") in volumes, "MEMPROXY_DATA_DIR is not a VOLUME"

    cmd = exec_form(find(stage, "CMD")[-1][1])
    assert cmd and "--port" in cmd, "CMD must be exec form with --port"
    assert cmd[cmd.index("--port") + 1] in exposes, "CMD --port is not EXPOSEd"


def test_healthcheck_hits_readyz(instructions):
    stage = final_stage(instructions)
    checks = find(stage, "HEALTHCHECK")
    assert checks, "no HEALTHCHECK instruction"
    args = checks[-1][1]
    assert args.upper() != "NONE", "HEALTHCHECK NONE disables the check"
    assert "CMD" in args.split(), "HEALTHCHECK has no CMD"
    assert not re.search(r"(?<![\w-])(curl|wget)(?![\w-])", args), "slim has no curl/wget"
    urls = re.findall(r"https?://[^\s'\"\])]+", args)
    assert len(urls) == 1, f"expected one URL in HEALTHCHECK, got {urls}"
    parsed = urlparse(urls[0])
    # Healthy means ready: the memory layer answers (chats are forwarded either way).
    assert parsed.path == "/readyz", f"HEALTHCHECK hits {parsed.path!r}, not /readyz"
    exposes = [p.split("/")[0] for _, a in find(stage, "EXPOSE") for p in a.split()]
    assert str(parsed.port) in exposes, "HEALTHCHECK port is not the EXPOSEd port"


def test_copied_sources_exist_and_are_not_dockerignored(instructions):
    copies = find(instructions, "COPY") + find(instructions, "ADD")
    assert copies, "no COPY instruction"
    patterns = dockerignore_patterns() if DOCKERIGNORE.is_file() else []
    missing, ignored = [], []
    for _, args in copies:
        flags, toks = strip_flags(words(args))
        if "from" in flags:  # copies from another stage/image, not the context
            continue
        assert len(toks) >= 2, f"COPY needs source and destination: {args}"
        for src in toks[:-1]:
            rel = src.strip("/") or "."
            if not (ROOT / rel).exists():
                missing.append(src)
            elif rel != "." and is_ignored(rel, patterns):
                ignored.append(src)
    assert not missing, f"COPY sources missing from the repo: {missing}"
    assert not ignored, f"COPY sources excluded by .dockerignore: {ignored}"


def test_cmd_is_declared_memproxy_serve(instructions, pyproject):
    stage = final_stage(instructions)
    cmds = find(stage, "CMD")
    assert cmds, "no CMD instruction"
    cmd = exec_form(cmds[-1][1])
    assert cmd, "CMD must use exec (JSON) form"
    scripts = pyproject["project"].get("scripts", {})
    assert cmd[0] in scripts, f"CMD executable {cmd[0]!r} not in [project.scripts]"
    assert cmd[1:2] == ["serve"], f"CMD subcommand is {cmd[1:2]}, expected serve"
    assert "--host" in cmd and cmd[cmd.index("--host") + 1] == "0.0.0.0", (
        "server must listen on 0.0.0.0 inside the container"
    )


def test_cli_module_defines_serve(pyproject):
    target = pyproject["project"]["scripts"]["memproxy"]
    module, _, func = target.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"console script target module {path} is missing"
    src = path.read_text()
    assert re.search(rf"def {re.escape(func)}\b", src), f"{func}() not defined in {path}"
    assert re.search(r"""["']serve["']""", src), f"no 'serve' subcommand in {path}"


def test_config_env_points_at_copied_file(instructions):
    stage = final_stage(instructions)
    env: dict[str, str] = {}
    for _, args in find(stage, "ENV"):
        env.update(parse_env(args))
    assert env.get("HF_HUB_OFFLINE") == "1", "HF_HUB_OFFLINE=1 not set"
    config = env.get("MEMPROXY_CONFIG")
    assert config, "MEMPROXY_CONFIG not set"
    workdir = "/"
    dests = set()
    for kw, args in stage:
        if kw == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif kw == "COPY":
            _, toks = strip_flags(words(args))
            srcs, dest = toks[:-1], posixpath.join(workdir, toks[-1])
            into_dir = toks[-1].endswith("/") or len(srcs) > 1
            for src in srcs:
                name = posixpath.basename(src.rstrip("/"))
                dests.add(posixpath.normpath(posixpath.join(dest, name) if into_dir else dest))
    assert config in dests, f"MEMPROXY_CONFIG={config} is not a COPY destination"


def test_dockerignore_excludes_venv_and_data():
    assert DOCKERIGNORE.is_file(), ".dockerignore missing"
    patterns = dockerignore_patterns()
    for path in (".venv", "data", ".git"):
        assert is_ignored(path, patterns), f".dockerignore does not exclude {path}"
    for path in ("proxy", "pyproject.toml"):
        assert not is_ignored(path, patterns), f".dockerignore wrongly excludes {path}"


def test_model_is_exported_at_build_time_outside_the_volume(instructions):
    stage = final_stage(instructions)
    runs = [(i, a) for i, a in find(stage, "RUN")]
    exports = [i for i, a in runs if "memproxy export-model" in a]
    project = [i for i, a in runs if "pip install" in a and "torch==" not in a]
    assert exports and project and min(exports) > max(project), "export after the install"
    env: dict[str, str] = {}
    for i, args in find(stage, "ENV"):
        if i < min(exports):
            env.update(parse_env(args))
    models = env.get("MEMPROXY_EMBEDDING__MODELS_DIR", "")
    volumes = [v for _, args in find(stage, "VOLUME") for v in words(args)]
    assert models.startswith("/") and not any(
        posixpath.commonpath([models, v]) == v for v in volumes
    ), f"models dir {models!r} must be set before the export and lie outside {volumes}"
    users = [args for i, args in find(stage, "USER") if i < min(exports)]
    assert users and users[-1] not in ("root", "0"), "export as the user that runs the proxy"
