"""The container deployment (issue 7): docker-compose.yml, .env.example, the Dockerfile and docker/.

There is no Docker engine here, so the compose file is checked as data (PyYAML) by `compose_problems`,
the Dockerfile as text by `dockerfile_problems`; each checker is also run on deliberately broken copies
to show that it catches what it claims to. The entrypoint's logic runs for real: the wait against a real
SQLite Optuna storage, the GPU claim with real flock()s. The only stand-in is the GPUs themselves: empty
files named nvidia0, nvidia1 in a temporary "/dev", as the NVIDIA toolkit would mount device nodes.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from file_modules import load_module

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker" / "compose.cpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INIT_SCRIPTS = ROOT / "docker" / "postgres-init"

UI_SERVICES = {"mlflow", "optuna-dashboard"}
TRAINERS = ("study", "worker")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/@\s:]+:([^/@\s]*)@")
NO_DEFAULT = re.compile(r"\$\{\w+(:?\?[^}]*)?\}")  # ${VAR} or ${VAR:?error}: a value must come from .env


entrypoint = load_module("adamtune_docker_entrypoint", ROOT / "docker" / "entrypoint.py")
requirements = load_module("adamtune_docker_requirements", ROOT / "docker" / "requirements.py")


# ---- helpers: Compose's interpolation, .env files, walking the compose data ----------------------------


def env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a Compose .env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def interpolations(text: str) -> list[re.Match[str]]:
    """The ``${...}`` of a string; ``$$`` is Compose's escape for a literal ``$``."""
    return list(INTERPOLATION.finditer(text.replace("$$", "")))


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation (the subset without nesting), as `docker compose config` would apply it."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value, is_set = env.get(name), name in env
        present = bool(value) if op and op.startswith(":") else is_set
        if op in (":-", "-"):
            return value if present else arg
        if op in (":?", "?"):
            if not present:
                raise ValueError(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return INTERPOLATION.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def url_passwords(text: str) -> list[str]:
    """The password parts of the URLs in ``text``, each ``${...}`` in them kept whole.

    Interpolations are masked first: a ``${POSTGRES_USER:-adamtune}`` user part holds a colon of its own.
    """
    masked: list[str] = []

    def mask(match: re.Match[str]) -> str:
        masked.append(match.group(0))
        return f"\0{len(masked) - 1}\0"

    found = URL_PASSWORD.findall(INTERPOLATION.sub(mask, text.replace("$$", "")))
    return [re.sub(r"\0(\d+)\0", lambda m: masked[int(m.group(1))], password) for password in found]


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string (keys' values and list items) in a YAML tree, with a dotted path to it."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def option(args: list[str], name: str) -> str | None:
    return entrypoint.option_value(args, name)


def healthy_dependency(service: dict[str, Any], dependency: str) -> bool:
    depends = service.get("depends_on") or {}
    return isinstance(depends, dict) and (depends.get(dependency) or {}).get("condition") == "service_healthy"


def named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume, for the service's named-volume mounts (not bind mounts)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target, kind = volume.get("source", ""), volume.get("target", ""), volume.get("type")
        else:
            source, _, rest = volume.partition(":")
            target, kind = rest.partition(":")[0], None
        if kind in (None, "volume") and source and not source.startswith(("/", ".", "~", "$")):
            mounts[target] = source
    return mounts


def gpu_reservation(service: dict[str, Any]) -> bool:
    deploy = service.get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    return any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices)


def host_ip(port: Any, env: dict[str, str]) -> str | None:
    """The host address a `ports:` entry binds to; None when it binds every interface."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = interpolate(str(port), env).split(":")
    return parts[0] if len(parts) == 3 else None


# ---- the compose checker ---------------------------------------------------------------------------


def compose_problems(compose: dict[str, Any], env: dict[str, str]) -> list[str]:
    """Everything wrong with a compose file for issue 7, given the variables .env.example defines."""
    problems: list[str] = []
    defined, env = env, {name: value or f"<{name}>" for name, value in env.items()}  # as if .env were filled in
    services: dict[str, Any] = compose.get("services") or {}
    for name in ("postgres", "mlflow", "study", "worker"):
        if name not in services:
            problems.append(f"no {name} service")
    if problems:
        return problems
    pg, mlflow = services["postgres"], services["mlflow"]

    # postgres: official image, pg_isready healthcheck, data in a named volume, unpublished
    if not str(pg.get("image", "")).startswith("postgres:"):
        problems.append("postgres: not the official postgres image")
    if "pg_isready" not in " ".join(as_list((pg.get("healthcheck") or {}).get("test"))):
        problems.append("postgres: no pg_isready healthcheck")
    if "/var/lib/postgresql/data" not in named_mounts(pg):
        problems.append("postgres: data not in a named volume")
    init = [v for v in pg.get("volumes") or [] if "/docker-entrypoint-initdb.d" in str(v)]
    if env.get("MLFLOW_DB", "mlflow") != env.get("POSTGRES_DB") and not init:
        problems.append("postgres: nothing creates MLflow's database (no /docker-entrypoint-initdb.d mount)")

    # mlflow: server on 0.0.0.0:5000, backend store in postgres, proxied artifacts in a volume
    command = [interpolate(a, env) for a in as_list(mlflow.get("command"))]
    ml_env = {k: interpolate(v, env) for k, v in environment(mlflow).items()}
    if as_list(mlflow.get("entrypoint"))[:1] != ["mlflow"] or command[:1] != ["server"]:
        problems.append("mlflow: does not run `mlflow server`")
    backend = option(command, "--backend-store-uri") or ml_env.get("MLFLOW_BACKEND_STORE_URI", "")
    if not re.match(r"postgresql(\+\w+)?://[^@]+@postgres:5432/\w+$", backend):
        problems.append(f"mlflow: backend store is not the postgres service: {backend!r}")
    if option(command, "--host") != "0.0.0.0" or option(command, "--port") not in (None, "5000"):
        problems.append("mlflow: not listening on 0.0.0.0:5000 in its container")
    destination = option(command, "--artifacts-destination")
    if "--serve-artifacts" not in command or destination not in named_mounts(mlflow):
        problems.append("mlflow: artifacts are not served from a named volume")
    if "/health" not in " ".join(as_list((mlflow.get("healthcheck") or {}).get("test"))):
        problems.append("mlflow: no /health healthcheck")
    if not healthy_dependency(mlflow, "postgres"):
        problems.append("mlflow: does not wait for postgres to be healthy")
    # MLflow 3 answers 403 to a Host header outside --allowed-hosts (default: localhost and private IPs);
    # the workers send "mlflow:5000". Matching as mlflow.server.security_utils.is_allowed_host_header does.
    allowed = (option(command, "--allowed-hosts") or "").split(",")
    for host in ("mlflow:5000", "localhost:5000", "127.0.0.1:5000"):
        if not any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed):
            problems.append(f"mlflow: --allowed-hosts rejects Host {host}")

    # study and worker: the adamtune image on a GPU, after postgres and mlflow, told where both are
    for name in TRAINERS:
        service = services[name]
        if not gpu_reservation(service):
            problems.append(f"{name}: no nvidia GPU reservation")
        for dependency in ("postgres", "mlflow"):
            if not healthy_dependency(service, dependency):
                problems.append(f"{name}: does not wait for {dependency} to be healthy")
        svc_env = environment(service)
        storage = interpolate(svc_env.get("ADAMTUNE_STORAGE", ""), env)
        if not storage.startswith("postgresql+psycopg://") or "@postgres:5432/" not in storage:
            problems.append(f"{name}: ADAMTUNE_STORAGE is not the postgres service")
        if svc_env.get("MLFLOW_TRACKING_URI") != "http://mlflow:5000":
            problems.append(f"{name}: MLFLOW_TRACKING_URI is not the mlflow service")
        if any("ADAMTUNE_STORAGE" in a or "://" in a for a in as_list(service.get("command"))):
            problems.append(f"{name}: a URL on the command line (ps would show the password)")
    if as_list(services["study"].get("command"))[:1] != ["search"]:
        problems.append("study: does not run `adamtune search`")
    if as_list(services["worker"].get("command"))[:1] != ["worker"]:
        problems.append("worker: does not run `adamtune worker`")
    if str(services["study"].get("restart", "no")) not in ("no", "False", "false"):
        problems.append("study: a one-shot service must not restart")

    # ports: only the UIs, only on the loopback interface
    for name, service in services.items():
        for port in service.get("ports") or []:
            if name not in UI_SERVICES:
                problems.append(f"{name}: publishes port {port}")
            elif host_ip(port, env) != "127.0.0.1":
                problems.append(f"{name}: port {port} is not bound to 127.0.0.1")
    for name in (UI_SERVICES - {"mlflow"}) & services.keys():
        if not services[name].get("profiles"):
            problems.append(f"{name}: optional UI without a profile")

    # credentials: interpolated from .env, never a literal, never a default
    for where, text in strings(compose):
        key = where.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key) and not NO_DEFAULT.fullmatch(text):
            problems.append(f"{where}: credential is not a ${{VAR}} from .env: {text!r}")
        for password in url_passwords(text):
            if not NO_DEFAULT.fullmatch(password):
                problems.append(f"{where}: literal password in URL {text!r}")
        for match in interpolations(text):
            name, op = match.group(1), match.group(2)
            if name not in defined:
                problems.append(f"{where}: ${{{name}}} is not defined in .env.example")
            if SECRET_NAME.search(name) and op in (":-", "-", ":+", "+"):
                problems.append(f"{where}: ${{{name}}} has a default value")

    # named volumes are declared
    declared = set((compose.get("volumes") or {}).keys())
    for name, service in services.items():
        for volume in named_mounts(service).values():
            if volume not in declared:
                problems.append(f"{name}: volume {volume} is not declared under volumes:")
    return problems


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return env_file(ENV_EXAMPLE)


def test_compose_file_meets_the_deployment_requirements(compose, env_example):
    assert compose_problems(compose, env_example) == []


def drop_allowed_hosts(services: dict[str, Any]) -> None:
    command = services["mlflow"]["command"]
    command[:] = [a for a in command if not a.startswith("--allowed-hosts")]


def broken(compose: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copied = copy.deepcopy(compose)
    change(copied["services"])
    return copied


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["worker"].pop("deploy"), "worker: no nvidia GPU reservation"),
        (lambda s: s["worker"]["depends_on"].pop("mlflow"), "worker: does not wait for mlflow"),
        (lambda s: s["postgres"].setdefault("ports", ["5432:5432"]), "postgres: publishes port 5432:5432"),
        (lambda s: s["mlflow"].update(ports=["5000:5000"]), "mlflow: port 5000:5000 is not bound to 127.0.0.1"),
        (lambda s: s["postgres"]["environment"].update(POSTGRES_PASSWORD="hunter2"), "credential is not a"),
        (
            lambda s: s["postgres"]["environment"].update(POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-hunter2}"),
            "has a default value",
        ),
        (
            lambda s: s["mlflow"]["environment"].update(
                MLFLOW_BACKEND_STORE_URI="postgresql://u:hunter2@postgres:5432/m"
            ),
            "literal password in URL",
        ),
        (
            lambda s: s["worker"]["environment"].update(
                ADAMTUNE_STORAGE="postgresql+psycopg://${POSTGRES_USER:-adamtune}:hunter2@postgres:5432/adamtune"
            ),
            "literal password in URL",
        ),
        (lambda s: s["worker"]["environment"].update(X="${NOT_IN_ENV_EXAMPLE}"), "is not defined in .env.example"),
        (lambda s: s["mlflow"]["command"].remove("--serve-artifacts"), "mlflow: artifacts are not served"),
        (drop_allowed_hosts, "--allowed-hosts rejects Host mlflow:5000"),
        (lambda s: s["postgres"].pop("healthcheck"), "postgres: no pg_isready healthcheck"),
        (lambda s: s["worker"]["volumes"].append("scratch:/scratch"), "volume scratch is not declared"),
        (lambda s: s["worker"]["command"].append("--storage=postgresql+psycopg://x"), "a URL on the command line"),
    ],
)
def test_compose_checker_rejects_a_broken_copy(compose, env_example, change, expected):
    problems = compose_problems(broken(compose, change), env_example)
    assert any(expected in p for p in problems), problems


def test_every_service_resolves_with_env_example_values_and_the_password_is_required(compose, env_example):
    assert env_example["POSTGRES_PASSWORD"] == "", "the committed .env.example must not carry a password"
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):  # Compose refuses to start without one
        interpolate(environment(compose["services"]["postgres"])["POSTGRES_PASSWORD"], env_example)
    env = {**env_example, "POSTGRES_PASSWORD": "s3cret"}
    resolved = {where: interpolate(text, env) for where, text in strings(compose)}
    assert resolved["services.worker.environment.ADAMTUNE_STORAGE"] == (
        "postgresql+psycopg://adamtune:s3cret@postgres:5432/adamtune"
    )
    assert resolved["services.mlflow.environment.MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert resolved["services.mlflow.ports[0]"] == "127.0.0.1:5000:5000"
    assert resolved["services.postgres.healthcheck.test[1]"] == 'pg_isready -U "$POSTGRES_USER" -d "$POSTGRES_DB"'


def test_every_env_example_variable_is_used(compose, env_example):
    used = {m.group(1) for _, text in strings(compose) for m in interpolations(text)}
    assert set(env_example) - used == set()


class ResetTag:
    """Compose's `!reset` tag (an override that removes a key)."""


def test_cpu_override_removes_the_gpu_reservations():
    loader = type("ComposeLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!reset", lambda _loader, _node: ResetTag())
    override = yaml.load(CPU_OVERRIDE.read_text(), Loader=loader)
    assert set(override["services"]) == set(TRAINERS)
    for name in TRAINERS:
        assert isinstance(override["services"][name]["deploy"], ResetTag)


def test_postgres_init_script_is_mounted_and_creates_the_mlflow_database(compose):
    mount = next(v for v in compose["services"]["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    assert (ROOT / mount.split(":")[0]).resolve() == INIT_SCRIPTS
    scripts = sorted(INIT_SCRIPTS.glob("*.sh"))
    assert scripts and all(os.access(s, os.X_OK) for s in scripts)
    text = scripts[0].read_text()
    assert 'CREATE DATABASE :"db" OWNER :"owner"' in text and "MLFLOW_DB" in text
    subprocess.run(["bash", "-n", str(scripts[0])], check=True)


# ---- Dockerfile and .dockerignore -------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(i.upper(), a.strip()) for i, _, a in (line.strip().partition(" ") for line in joined.splitlines()) if i]


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    steps = instructions(text)
    args = {a.split("=")[0] for i, a in steps if i == "ARG"}
    runs = " ".join(a for i, a in steps if i == "RUN")
    if "TORCH_VARIANT" not in args or "download.pytorch.org/whl/$TORCH_VARIANT" not in runs or "cpu" not in runs:
        problems.append("no TORCH_VARIANT build argument choosing the CPU or CUDA torch index")
    users = [a for i, a in steps if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("runs as root")
    entrypoints = [a for i, a in steps if i == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != ["adamtune"]:
        problems.append('ENTRYPOINT is not ["adamtune"]')
    if not re.search(r"pip install [^&]*--no-cache-dir [^&]*\[postgres\]", runs):
        problems.append("adamtune is not installed with its postgres extra (and --no-cache-dir)")
    order = [i for i, (inst, a) in enumerate(steps) if inst == "RUN" and "-r /tmp/requirements.txt" in a]
    source = [i for i, (inst, a) in enumerate(steps) if inst == "COPY" and a.split()[0] == "adamtune"]
    if not order or not source or order[0] > source[0]:
        problems.append("dependencies are not installed before the source is copied")
    return problems


def test_dockerfile_meets_the_image_requirements():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("USER adamtune:adamtune", "USER root", "runs as root"),
        ('ENTRYPOINT ["adamtune"]', 'ENTRYPOINT ["python"]', "ENTRYPOINT"),
        ("ARG TORCH_VARIANT=cuda", "ARG TORCH=cuda", "TORCH_VARIANT"),
    ],
)
def test_dockerfile_checker_rejects_a_broken_copy(old, new, expected):
    text = DOCKERFILE.read_text()
    assert old in text
    assert any(expected in p for p in dockerfile_problems(text.replace(old, new)))


def test_dockerfile_copies_only_what_dockerignore_keeps():
    patterns = [p for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    excluded = [p for p in patterns if not p.startswith("!")]
    for must in (".git", ".venv", ".env", "*.db", "mlruns", "**/__pycache__"):
        assert must in excluded
    copied = [a.split()[0] for i, a in instructions(DOCKERFILE.read_text()) if i == "COPY" and "--from" not in a]
    copied += [a.split()[1] for i, a in instructions(DOCKERFILE.read_text()) if i == "COPY" and "--chmod" in a]
    for source in (s for s in copied if not s.startswith("--")):
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, p) for p in excluded), f"{source} is in .dockerignore"


def test_requirements_come_from_pyproject_without_torch():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = requirements.requirements(pyproject, ["postgres"], ["torch"])
    names = [requirements.project_name(r) for r in found]
    assert "torch" not in names
    assert {"optuna", "mlflow", "sqlalchemy", "psycopg"} <= set(names)
    assert requirements.project_name("psycopg[binary]>=3.1") == "psycopg"
    assert requirements.project_name("Foo_Bar.baz ; python_version<'3.11'") == "foo-bar-baz"
    with pytest.raises(KeyError, match="no extra gpu"):
        requirements.requirements(pyproject, ["gpu"], [])


# ---- docker/entrypoint.py ---------------------------------------------------------------------------


@pytest.fixture
def fake_dev(tmp_path: Path) -> Callable[[int], Path]:
    """A stand-in for a container's /dev with ``n`` NVIDIA GPUs (no GPU here)."""

    def make(n: int) -> Path:
        dev = tmp_path / f"dev{n}"
        dev.mkdir()
        for name in ["nvidiactl", "nvidia-uvm", *(f"nvidia{i}" for i in range(n))]:
            (dev / name).touch()
        return dev

    return make


@pytest.fixture(autouse=True)
def release_claims() -> Iterator[None]:
    yield
    while entrypoint.held_locks:
        os.close(entrypoint.held_locks.pop())


def test_claims_spread_over_gpus_then_slots_and_free_when_released(tmp_path):
    locks = tmp_path / "locks"
    claims = [entrypoint.try_claim_gpu(locks, n_gpus=2, slots_per_gpu=2) for _ in range(4)]
    assert [gpu for gpu, _ in claims] == [0, 1, 0, 1]
    assert entrypoint.try_claim_gpu(locks, 2, 2) is None
    os.close(claims[1][1])  # the process holding GPU 1's first slot ends
    again = entrypoint.try_claim_gpu(locks, 2, 2)
    assert again is not None and again[0] == 1
    for _, fd in [*claims[:1], *claims[2:], again]:
        os.close(fd)


def test_prepare_claims_distinct_gpus_per_container(tmp_path, fake_dev):
    dev = fake_dev(2)
    envs = [{"ADAMTUNE_LOCK_DIR": str(tmp_path / "locks")} for _ in range(2)]
    assert entrypoint.prepare(["search", "--devices=auto"], envs[0], dev) is None
    assert entrypoint.prepare(["search", "--devices", "auto"], envs[1], dev) is None
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert envs[0]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


@pytest.mark.parametrize(
    ("args", "env", "gpus"),
    [
        (["search", "--devices", "cuda:1"], {}, 2),  # an explicit device is left alone
        (["search"], {"CUDA_VISIBLE_DEVICES": "1"}, 2),  # so is an explicit CUDA_VISIBLE_DEVICES
        (["search"], {"ADAMTUNE_GPU_CLAIM": "0"}, 2),
        (["report", "summary"], {}, 2),  # only commands that train claim
        (["search"], {}, 0),  # a CPU-only container
    ],
)
def test_prepare_claims_nothing_when_not_wanted(tmp_path, fake_dev, args, env, gpus):
    environ = {"ADAMTUNE_LOCK_DIR": str(tmp_path / "locks"), **env}
    assert entrypoint.prepare(args, environ, fake_dev(gpus)) is None
    assert environ.get("CUDA_VISIBLE_DEVICES") == env.get("CUDA_VISIBLE_DEVICES")
    assert entrypoint.held_locks == []


def test_a_container_waits_for_a_free_gpu(tmp_path, fake_dev):
    dev, locks = fake_dev(1), tmp_path / "locks"
    gpu, fd = entrypoint.try_claim_gpu(locks, 1, 1)
    naps = []

    def sleep(seconds: float) -> None:  # the other container ends while this one waits
        naps.append(seconds)
        os.close(fd)

    environ = {"ADAMTUNE_LOCK_DIR": str(locks), "ADAMTUNE_WAIT_POLL": "2"}
    assert entrypoint.prepare(["search"], environ, dev, sleep=sleep) is None
    assert (gpu, environ["CUDA_VISIBLE_DEVICES"], naps) == (0, "0", [2.0])


def test_the_claim_survives_exec_into_adamtune(tmp_path, fake_dev):
    """The flock is held by the exec'd adamtune itself, so it lasts exactly as long as that process."""
    bin_dir, locks = tmp_path / "bin", tmp_path / "locks"
    bin_dir.mkdir()
    fake = bin_dir / "adamtune"
    fake.write_text(
        textwrap.dedent(f"""\
            #!{sys.executable}
            import fcntl, json, os, sys
            fd = os.open({str(locks / "gpu1.slot0.lock")!r}, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
            print(json.dumps({{"argv": sys.argv[1:], "gpu": os.environ["CUDA_VISIBLE_DEVICES"], "held": held}}))
        """)
    )
    fake.chmod(0o755)
    dev = fake_dev(2)
    first = entrypoint.try_claim_gpu(locks, 2, 1)  # another container already has GPU 0
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'docker')!r}); import entrypoint, pathlib;"
        f"sys.exit(entrypoint.main(['search', '--task', 'cifar10'], pathlib.Path({str(dev)!r})))"
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ADAMTUNE_LOCK_DIR": str(locks)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    os.close(first[1])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"argv": ["search", "--task", "cifar10"], "gpu": "1", "held": True}
    assert "claimed GPU 1 of 2" in out.stderr
    # and once adamtune has exited, the slot is free again
    after = entrypoint.try_claim_gpu(locks, 2, 1)
    assert after is not None
    os.close(after[1])


def test_wait_for_study_polls_until_it_exists_or_times_out():
    now = [0.0]
    answers = iter([False, False, True])
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        now[0] += seconds

    found = entrypoint.wait_for_study("url", "s", 60, 5, lambda *_: next(answers), sleep, lambda: now[0])
    assert (found, naps) == (True, [5, 5])
    now[0], naps[:] = 0.0, []
    assert not entrypoint.wait_for_study("url", "s", 12, 5, lambda *_: False, sleep, lambda: now[0])
    assert naps == [5, 5, 5]


def test_study_exists_reads_a_real_optuna_storage_without_creating_tables(tmp_path):
    import optuna
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert not entrypoint.study_exists(url, "cifar10")  # no tables yet: "not yet", and none created
    assert sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names() == []
    optuna.create_study(study_name="cifar10", storage=url)
    assert entrypoint.study_exists(url, "cifar10")
    assert not entrypoint.study_exists(url, "cifar100")


def test_study_exists_writes_nothing_while_the_study_service_sets_up_the_database(tmp_path):
    """Between creating Optuna's tables and stamping them, the study service must not be raced.

    Opening an ``RDBStorage`` there writes the version row and the alembic stamp; a worker doing so at
    the same moment made the study service fail on PostgreSQL. Optuna's own table creation (a private
    module) leaves the database in that state.
    """
    import optuna
    import sqlalchemy
    from optuna.storages._rdb import models

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    engine = sqlalchemy.create_engine(url)
    models.BaseModel.metadata.create_all(engine)  # what RDBStorage does first

    def contents() -> dict[str, int]:
        with engine.connect() as connection:
            names = sqlalchemy.inspect(connection).get_table_names()
            return {n: connection.execute(sqlalchemy.text(f"SELECT count(*) FROM {n}")).scalar_one() for n in names}

    before = contents()
    assert "alembic_version" not in before and before["version_info"] == 0
    assert not entrypoint.study_exists(url, "cifar10")
    assert contents() == before
    optuna.create_study(study_name="cifar10", storage=url)  # the study service finishes
    assert entrypoint.study_exists(url, "cifar10")
    engine.dispose()


def test_worker_without_a_study_gives_up_after_the_timeout(tmp_path):
    environ = {
        "ADAMTUNE_STORAGE": f"sqlite:///{tmp_path / 'empty.db'}",
        "ADAMTUNE_WAIT_TIMEOUT": "0.01",
        "ADAMTUNE_WAIT_POLL": "0.01",
    }
    assert entrypoint.prepare(["worker", "--study=cifar10"], environ, tmp_path) == entrypoint.EXIT_NO_STUDY
    assert entrypoint.prepare(["worker"], {}, tmp_path) == entrypoint.EXIT_USAGE
    with pytest.raises(SystemExit, match="ADAMTUNE_WAIT_TIMEOUT must be a number"):
        entrypoint.prepare(["worker", "--study=s"], {**environ, "ADAMTUNE_WAIT_TIMEOUT": "soon"}, tmp_path)


def test_option_value_reads_both_spellings_and_the_last_wins():
    args = ["worker", "--study", "a", "--device=cuda:1", "--study=b"]
    assert entrypoint.option_value(args, "--study") == "b"
    assert entrypoint.option_value(args, "--device", "--devices") == "cuda:1"
    assert entrypoint.option_value(["worker", "--study"], "--study") is None
