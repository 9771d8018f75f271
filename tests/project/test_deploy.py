"""The launchers to copy (issue 28): deploy/kubernetes (kustomize) and deploy/slurm.

There is no cluster here, so the manifests are checked as data: against the Kubernetes JSON schemas
bundled with ``kubernetes-validate`` (offline, strict: unknown fields are errors), and for what the
schemas cannot say (the Indexed Job of GPU workers, the Secret and ConfigMap they read, selectors that
match, every file of the kustomization there). Every adamtune command line of both launchers is parsed
by the real CLI, after the substitutions Kubernetes (``$(VAR)`` from the ConfigMap) or the shell would
make. The Slurm scripts pass ``bash -n`` and run for real with stand-ins for ``srun`` and ``adamtune``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from file_modules import load_module

from adamtune.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SLURM = DEPLOY / "slurm"
WORKERS_SBATCH = SLURM / "adamtune-workers.sbatch"
CREATE_STUDY = SLURM / "create-study.sh"
# None: the newest schemas the validator bundles. Before 1.29 they wrongly require onPodConditions in every
# podFailurePolicy rule (the API accepts rules without it), so older versions are not checked.
SCHEMA_VERSIONS = ("1.29.0", None)
K8S_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")  # what the kubelet expands in command and args
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]*@")


entrypoint = load_module("adamtune_docker_entrypoint_deploy", ROOT / "docker" / "entrypoint.py")


# ---- the manifests ------------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def optional_resources() -> list[str]:
    """Resources listed in kustomization.yaml as a comment (``# - mlflow.yaml``), for users to enable."""
    return re.findall(r"^\s*#\s*-\s*([\w.-]+\.ya?ml)\s*$", (K8S / "kustomization.yaml").read_text(), re.MULTILINE)


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc is not None]


def all_documents() -> list[dict[str, Any]]:
    return [doc for name in [*kustomization()["resources"], *optional_resources()] for doc in documents(name)]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in all_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_data() -> dict[str, str]:
    return one("ConfigMap", "adamtune-config")["data"]


def adamtune_args(spec: dict[str, Any]) -> list[str]:
    """The adamtune arguments of a container, ``$(VAR)`` expanded as the kubelet does (from the ConfigMap)."""
    command = spec["command"]
    assert command in (["adamtune"], ["adamtune-entrypoint"]), command  # the entrypoint execs adamtune ARGS
    data = config_data()

    def expand(match: re.Match[str]) -> str:
        assert match.group(1) in data, f"$({match.group(1)}) is not in the ConfigMap"
        return data[match.group(1)]

    return [K8S_VAR.sub(expand, arg) for arg in spec["args"]]


def parse(args: list[str], where: str) -> Any:
    """Parse ``adamtune ARGS`` with the real CLI (click's usage errors fail the test)."""
    assert args and args[0] in cli.commands, f"{where}: unknown command in {args}"
    try:
        return cli.commands[args[0]].make_context(args[0], list(args[1:]))
    except Exception as exc:
        raise AssertionError(f"{where}: 'adamtune {shlex.join(args)}' does not parse: {exc}") from exc


def test_every_file_is_in_the_kustomization_and_parses() -> None:
    kust = kustomization()
    assert kust["apiVersion"].startswith("kustomize.config.k8s.io/") and kust["kind"] == "Kustomization"
    listed = [*kust["resources"], *optional_resources()]
    assert "mlflow.yaml" in optional_resources() and "mlflow.yaml" not in kust["resources"]
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which is missing"
        assert documents(name), f"{name} holds no manifest"
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert on_disk == set(listed), "every manifest is listed in kustomization.yaml (as a comment if optional)"
    kinds = sorted(d["kind"] for d in all_documents())
    assert kinds == sorted(
        ["Secret", "Secret", "ConfigMap", "Job", "Job", "Deployment", "Service", "PersistentVolumeClaim"]
    )
    for doc in all_documents():
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "adamtune"


def test_manifests_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate  # the dev extra

    for version in SCHEMA_VERSIONS:
        for doc in all_documents():
            where = f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version or 'latest'})"
            try:
                kubernetes_validate.validate(doc, version or kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{where}: {exc.message} at {list(exc.path)}") from None


def test_the_validator_catches_a_broken_manifest() -> None:
    import kubernetes_validate  # the dev extra

    job = one("Job", "adamtune-workers")
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["parallelizm"] = 8  # a typo: an unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["completions"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_the_secret_holds_the_storage_url_and_the_configmap_the_study() -> None:
    secret = one("Secret", "adamtune-storage")
    assert secret["stringData"]["ADAMTUNE_STORAGE"].startswith("postgresql+psycopg://")
    assert "CHANGE-ME" in secret["stringData"]["ADAMTUNE_STORAGE"]
    data = config_data()
    assert {"ADAMTUNE_TASK", "ADAMTUNE_STUDY", "ADAMTUNE_N_TRIALS", "MLFLOW_TRACKING_URI"} <= set(data)
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values must be strings"
    assert not any(URL_WITH_PASSWORD.search(value) for value in data.values()), "passwords belong in the Secret"


@pytest.mark.parametrize(("job_name", "command"), [("adamtune-study", "search"), ("adamtune-workers", "worker")])
def test_jobs_run_on_one_gpu_with_the_storage_from_the_secret(job_name: str, command: str) -> None:
    job = one("Job", job_name)
    pod = job["spec"]["template"]["spec"]
    spec = container(job)
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["image"] == "adamtune:latest"
    # the storage URL: from the Secret, in the environment, never in the arguments
    storage = {e["name"]: e for e in spec["env"]}["ADAMTUNE_STORAGE"]["valueFrom"]["secretKeyRef"]
    assert storage["key"] in one("Secret", storage["name"])["stringData"]
    assert [ref["configMapRef"]["name"] for ref in spec["envFrom"]] == ["adamtune-config"]
    assert not any("--storage" in arg or "://" in arg for arg in spec["args"])
    # preemption: a new pod, nothing lost; SIGTERM gets time to record the running trial
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] >= 60
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    usage = [r for r in rules if r["action"] == "FailJob"]
    assert usage and usage[0]["onExitCodes"] == {"containerName": spec["name"], "operator": "In", "values": [2]}
    assert job["spec"]["backoffLimit"] >= 3
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    volumes = {v["name"] for v in pod["volumes"]}
    assert set(mounts) <= volumes and mounts["data"] == config_data()["ADAMTUNE_DATA_DIR"]
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's adamtune user
    assert 'ENTRYPOINT ["adamtune"]' in (ROOT / "Dockerfile").read_text()
    assert spec["args"][0] == command


def test_the_workers_are_an_indexed_job_of_adamtune_worker() -> None:
    job = one("Job", "adamtune-workers")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] >= 1
    spec = container(job)
    assert spec["command"] == ["adamtune-entrypoint"]  # waits for the study, then execs adamtune
    assert "adamtune-entrypoint" in (ROOT / "Dockerfile").read_text()
    args = adamtune_args(spec)
    ctx = parse(args, "workers-job.yaml")
    assert ctx.params["study_name"] == config_data()["ADAMTUNE_STUDY"]
    assert ctx.params["device"] == "cuda:0"
    # what adamtune-entrypoint makes of them: it waits for this study, and claims no GPU (Kubernetes gave one)
    assert entrypoint.option_value(args, "--study") == config_data()["ADAMTUNE_STUDY"]
    assert not entrypoint.wants_gpu_claim(args, {}, n_gpus=1)


def test_the_study_job_creates_the_study_that_the_workers_join() -> None:
    spec = container(one("Job", "adamtune-study"))
    assert spec["command"] == ["adamtune"]
    ctx = parse(adamtune_args(spec), "study-job.yaml")
    data = config_data()
    assert ctx.params["task"] == data["ADAMTUNE_TASK"]
    assert ctx.params["study_name"] == data["ADAMTUNE_STUDY"]
    assert ctx.params["n_trials"] == int(data["ADAMTUNE_N_TRIALS"])
    assert ctx.params["workers"] == 1 and ctx.params["devices"] == "cuda:0"
    worker = parse(adamtune_args(container(one("Job", "adamtune-workers"))), "workers-job.yaml")
    assert worker.params["study_name"] == ctx.params["study_name"]


def test_mlflow_deployment_and_service_select_the_same_pods() -> None:
    deployment = one("Deployment", "mlflow")
    service = one("Service", "mlflow")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_labels.items()
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert service["spec"]["type"] == "ClusterIP"  # MLflow has no login
    spec = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports
    assert (
        config_data()["MLFLOW_TRACKING_URI"]
        == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )
    assert spec["command"] == ["mlflow"] and spec["args"][0] == "server"
    assert not any("://" in arg for arg in spec["args"]), "the backend store URL comes from the Secret"
    secret = one("Secret", spec["envFrom"][0]["secretRef"]["name"])
    assert "MLFLOW_BACKEND_STORE_URI" in secret["stringData"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]]
    assert claims == [one("PersistentVolumeClaim", "mlflow-artifacts")["metadata"]["name"]]


# ---- Slurm --------------------------------------------------------------------------------------------


def sbatch_options(path: Path) -> list[str]:
    return re.findall(r"^#SBATCH\s+(\S+)", path.read_text(), re.MULTILINE)


def adamtune_command_lines(path: Path) -> list[list[str]]:
    """The ``"${adamtune[@]}" COMMAND ...`` lines of a script (continuations joined), as argument lists."""
    text = path.read_text().replace("\\\n", " ")
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or '"${adamtune[@]}"' not in line:
            continue
        words = [w for w in shlex.split(line.split("|")[0]) if not re.match(r"\d*[<>]", w)]  # no redirections
        lines.append(words[words.index("${adamtune[@]}") + 1 :])
    return lines


def shell_values(words: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], word) for word in words]


@pytest.mark.parametrize("script", [WORKERS_SBATCH, CREATE_STUDY], ids=lambda p: p.name)
def test_slurm_scripts_are_valid_bash_on_one_gpu(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    options = sbatch_options(script)
    assert "--gres=gpu:1" in options
    assert any(o.startswith("--time=") for o in options) and any(o.startswith("--cpus-per-task=") for o in options)
    text = script.read_text()
    assert "--storage" not in text, "the storage URL comes from the environment, never a command line"
    assert re.search(r"^exec srun \"\$\{adamtune\[@\]\}\" ", text, re.MULTILINE), "exec srun: SIGTERM reaches adamtune"
    assert re.search(r"^adamtune=\(adamtune\)$", text, re.MULTILINE), "the venv line is the default"
    assert re.search(r"^# adamtune=\(apptainer exec --nv .* adamtune\)$", text, re.MULTILINE), (
        "the image line, commented"
    )
    assert script.stat().st_mode & stat.S_IXUSR


def test_slurm_worker_array_and_its_commands_parse() -> None:
    assert "--array=0-7" in sbatch_options(WORKERS_SBATCH)
    env = {"ADAMTUNE_STUDY": "cifar10", "ADAMTUNE_TASK": "cifar10", "ADAMTUNE_N_TRIALS": "100"}
    worker_lines = adamtune_command_lines(WORKERS_SBATCH)
    assert [line[0] for line in worker_lines] == ["studies", "worker"]
    for line in worker_lines:
        parse(shell_values(line, env), WORKERS_SBATCH.name)
    ctx = parse(shell_values(worker_lines[-1], env), WORKERS_SBATCH.name)
    assert ctx.params["device"] == "cuda:0" and ctx.params["study_name"] == "cifar10"
    (search,) = adamtune_command_lines(CREATE_STUDY)
    ctx = parse(shell_values(search, env), CREATE_STUDY.name)
    assert ctx.params["workers"] == 1 and ctx.params["devices"] == "cuda:0" and ctx.params["n_trials"] == 100
    assert "--dependency=after:" in CREATE_STUDY.read_text()


# The scripts, run: `srun` and `adamtune` are stand-ins on PATH that record their arguments; `adamtune
# studies --json` answers from a file. ADAMTUNE_VENV points at a venv whose activate adds them to PATH.

FAKE_ADAMTUNE = """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD/adamtune.args"
env > "$RECORD/adamtune.env"
if [ "$1" = studies ]; then cat "$RECORD/studies.json"; fi
"""


@pytest.fixture
def fake_cluster(tmp_path: Path) -> tuple[dict[str, str], Path]:
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
    for name, body in [("adamtune", FAKE_ADAMTUNE), ("srun", '#!/bin/sh\necho srun >> "$RECORD/srun"\nexec "$@"\n')]:
        (venv_bin / name).write_text(body)
        (venv_bin / name).chmod(0o755)
    record = tmp_path / "record"
    record.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "RECORD": str(record),
        "ADAMTUNE_VENV": str(tmp_path / "venv"),
        "ADAMTUNE_STORAGE": "postgresql+psycopg://adamtune:s3cret@db:5432/adamtune",
        "ADAMTUNE_STUDY": "cifar10",
        "SLURM_SUBMIT_DIR": str(tmp_path / "submit"),
    }
    return env, record


def test_slurm_worker_waits_for_the_study_then_execs_adamtune_worker(fake_cluster: tuple[dict[str, str], Path]) -> None:
    env, record = fake_cluster
    (record / "studies.json").write_text(json.dumps([{"study": "cifar10", "adamtune": True}]))
    done = subprocess.run(["bash", str(WORKERS_SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    args = (record / "adamtune.args").read_text().split()
    assert args == ["worker", "--study", "cifar10", "--device", "cuda:0"]
    parse(args, "adamtune-workers.sbatch, run")
    assert (record / "srun").read_text() == "srun\n"
    seen = (record / "adamtune.env").read_text()
    assert "ADAMTUNE_STORAGE=postgresql+psycopg://adamtune:s3cret@db:5432/adamtune" in seen
    assert f"ADAMTUNE_CHECKPOINT_STORE={env['SLURM_SUBMIT_DIR']}/adamtune-checkpoints" in seen


def test_slurm_worker_gives_up_when_no_study_appears(fake_cluster: tuple[dict[str, str], Path]) -> None:
    env, record = fake_cluster
    (record / "studies.json").write_text(json.dumps([{"study": "other", "adamtune": True}]))
    env["ADAMTUNE_WAIT_TIMEOUT"] = "0"
    done = subprocess.run(["bash", str(WORKERS_SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "did not appear" in done.stderr
    assert not (record / "srun").exists()
    del env["ADAMTUNE_STORAGE"]
    done = subprocess.run(["bash", str(WORKERS_SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ADAMTUNE_STORAGE" in done.stderr


def test_slurm_create_study_runs_adamtune_search(fake_cluster: tuple[dict[str, str], Path]) -> None:
    env, record = fake_cluster
    env |= {"ADAMTUNE_TASK": "digits", "ADAMTUNE_N_TRIALS": "30"}
    del env["ADAMTUNE_STUDY"]
    done = subprocess.run(["bash", str(CREATE_STUDY)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    args = (record / "adamtune.args").read_text().split()
    ctx = parse(args, "create-study.sh, run")
    assert args[0] == "search"
    assert (ctx.params["task"], ctx.params["study_name"], ctx.params["n_trials"]) == ("digits", "digits", 30)
    assert "s3cret" not in " ".join(args)


def test_readme_is_short_and_names_every_file() -> None:
    text = (DEPLOY / "README.md").read_text()
    assert len(text.splitlines()) < 80
    for path in [*K8S.iterdir(), *SLURM.iterdir()]:
        assert f"`{path.name}`" in text, f"deploy/README.md does not describe {path.name}"
