"""deploy/: Kubernetes manifests and a SLURM batch script. No cluster or SLURM controller runs
here, so check them offline: the manifests against the Kubernetes API schemas
(kubernetes-validate), the commands they run with our own parser, the batch script's
directives, its syntax (`bash -n`) and its behaviour with stand-ins for `search` and
`scontrol`."""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_compose import MOST_WORKERS, connections_needed, open_to_clients

from search.cli.parser import build_parser
from search.worker.faults import EXIT_ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
SBATCH = ROOT / "deploy" / "slurm" / "search-worker.sbatch"
IMAGE = "lora-vit-search"  # the image's name in the manifests; kustomization.yaml replaces it
# Validated against: the oldest release with every Job field the worker Job uses GA
# (podFailurePolicy, backoffLimitPerIndex, podReplacementPolicy), and the newest that
# kubernetes-validate 1.37 bundles.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
WORKLOADS = ("Job", "Deployment", "StatefulSet")


def constant(path: Path, name: str) -> int:
    """A module-level constant read from source, so as not to import torch for it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(name)


EXIT_TRIALS_FAILED = constant(ROOT / "search" / "worker" / "claim_loop.py", "EXIT_TRIALS_FAILED")
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGINT = 128 + signal.SIGINT


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def load_documents() -> list[tuple[str, dict]]:
    documents = []
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


DOCUMENTS = load_documents()
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resource(kind: str, name: str) -> dict:
    found = [doc for _, doc in DOCUMENTS
             if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_templates() -> list[tuple[str, dict]]:
    return [(f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"])
            for _, doc in DOCUMENTS if doc["kind"] in WORKLOADS]


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def ours(container: dict) -> bool:
    return container["image"].rsplit(":", 1)[0] == IMAGE


def container_named(pod: dict, name: str) -> dict:
    return next(c for c in containers(pod) if c["name"] == name)


STUDY = resource("ConfigMap", "search-study")["data"]["STUDY"]
SECRET = resource("Secret", "search-storage")


def environment(container: dict) -> dict[str, str]:
    """What Kubernetes would put in $(VAR) / $VAR: ConfigMap values and resource fields."""
    values = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "search-study"
        values.update(resource("ConfigMap", "search-study")["data"])
    for variable in container.get("env", []):
        field = variable.get("valueFrom", {}).get("resourceFieldRef")
        if field:
            kind, what = field["resource"].split(".")
            values[variable["name"]] = str(container["resources"][kind][what])
        elif "value" in variable:
            values[variable["name"]] = variable["value"]
    return values


def expand(words: list[str], values: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) in command/args, and a shell's "$VAR" / "${VAR}" in a script."""
    def one(word: str) -> str:
        word = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], word)
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], word)
    return [one(word) for word in words]


def search_command_lines(container: dict) -> list[list[str]]:
    """Every `search ...` argument list (after `search`) that this container of our image runs:
    its args (the image's entrypoint is `search`), or the `search` commands of its shell
    script."""
    values = environment(container)
    if "command" not in container:
        return [expand(container["args"], values)]
    assert container["command"][:2] == ["sh", "-c"] and "args" not in container, container
    script = container["command"][2]
    lines = [shlex.split(part)[1:] for part in re.findall(r"\bsearch [^;&|<>\n]+", script)]
    assert lines, f"{container['name']} runs no search command"
    return [expand(line, values) for line in lines]


def parsed(container: dict):
    (line,) = search_command_lines(container)
    return build_parser().parse_args(line)


# -- the manifests as files ----------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_and_sets_the_image_once():
    assert KUSTOMIZATION["kind"] == "Kustomization"
    listed = KUSTOMIZATION["resources"]
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists missing {name}"
    # The Secret is applied on its own, from the user's copy with the real password.
    assert set(listed) == {p.name for p in manifest_files()} - {"secret.example.yaml"}
    assert "secret.yaml" in (K8S / ".gitignore").read_text().split()
    (image,) = KUSTOMIZATION["images"]
    assert image["name"] == IMAGE and image["newName"] and image["newTag"]
    for _, pod in pod_templates():
        for container in containers(pod["spec"]):
            if IMAGE in container["image"]:
                assert ours(container), container["image"]


@pytest.fixture(scope="module")
def kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install -e '.[test]'); "
               "the manifests' schema check needs it")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_pass_the_kubernetes_schema(kubernetes_validate, version):
    for name, doc in DOCUMENTS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is not a valid "
                        f"Kubernetes {version} object: {error.message}")


def test_the_schema_check_is_strict(kubernetes_validate):
    job = dict(resource("Job", "search-worker"))
    job["spec"] = {**job["spec"], "paralelism": 4}  # misspelt: strict mode must refuse it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[0], strict=True)


# -- the commands the containers run ----------------------------------------------------------


def test_every_container_of_our_image_runs_a_real_search_command():
    seen = 0
    for _, pod in pod_templates():
        for container in filter(ours, containers(pod["spec"])):
            for line in search_command_lines(container):
                build_parser().parse_args(line)  # exits 2 on a flag `search` does not have
                seen += 1
    assert seen == 4  # creator, worker's init container, worker, dashboard


def test_the_creator_job_queues_the_study_without_training():
    job = resource("Job", "search-create-study")
    pod = job["spec"]["template"]["spec"]
    args = parsed(container_named(pod, "create-study"))
    assert args.command in ("grid", "optuna")
    assert args.workers == 0  # queue only: the worker Job trains
    assert args.study == STUDY
    assert args.spec.startswith("/app/studies/")  # copied there by the Dockerfile
    assert (ROOT / "studies" / Path(args.spec).name).is_file()
    assert pod["restartPolicy"] == "OnFailure" and job["spec"]["backoffLimit"] >= 1


def test_the_workers_join_the_study_once_it_exists():
    pod = resource("Job", "search-worker")["spec"]["template"]["spec"]
    args = parsed(container_named(pod, "worker"))
    assert args.command == "worker" and args.study == STUDY
    assert args.threads == int(container_named(pod, "worker")["resources"]["requests"]["cpu"])
    wait = parsed(container_named(pod, "wait-for-study"))
    assert wait.command == "leaderboard" and wait.study == STUDY
    assert "until search leaderboard" in container_named(pod, "wait-for-study")["command"][2]


def test_the_dashboard_serves_on_the_port_its_probe_and_service_use():
    deployment = resource("Deployment", "search-dashboard")
    container = container_named(deployment["spec"]["template"]["spec"], "dashboard")
    args = parsed(container)
    assert args.command == "dashboard" and args.host == "0.0.0.0"
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    assert container["readinessProbe"]["httpGet"]["port"] in (port["name"], args.port)
    service = resource("Service", "search-dashboard")
    assert service["spec"]["type"] == "ClusterIP"  # cluster only: no login on the dashboard
    assert service["spec"]["selector"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], args.port)


def test_nothing_is_exposed_outside_the_cluster():
    for _, doc in DOCUMENTS:
        assert doc["kind"] != "Ingress"
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
            assert all("nodePort" not in port for port in doc["spec"]["ports"])
    for where, pod in pod_templates():
        assert not pod["spec"].get("hostNetwork"), where
        for container in containers(pod["spec"]):
            assert all("hostPort" not in port for port in container.get("ports", [])), where


# -- the password ------------------------------------------------------------------------------

URL_WITH_PASSWORD = re.compile(r"\w+(\+\w+)?://[^/\s@:]*:[^/\s@]*@")


def command_words(container: dict) -> list[str]:
    words = list(container.get("command", [])) + list(container.get("args", []))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        words += container.get(probe, {}).get("exec", {}).get("command", [])
    return words


def test_the_secret_is_a_template_whose_url_matches_the_database():
    assert SECRET["type"] == "Opaque" and "data" not in SECRET
    values = SECRET["stringData"]
    password = values["postgres-password"]
    assert password == "CHANGE-ME"  # a placeholder, never a real password
    url = values["search-storage"]
    match = re.fullmatch(r"postgresql://(\w+):([^@]+)@([\w.-]+):(\d+)/(\w+)", url)
    assert match, url
    user, url_password, host, port, database = match.groups()
    assert url_password == password
    postgres = resource("StatefulSet", "search-postgres")
    env = environment(container_named(postgres["spec"]["template"]["spec"], "postgres"))
    assert (user, database) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    service = resource("Service", "search-postgres")
    assert host == service["metadata"]["name"] and int(port) == service["spec"]["ports"][0]["port"]


def test_no_password_or_storage_url_on_any_command_line():
    password = SECRET["stringData"]["postgres-password"]
    for where, pod in pod_templates():
        for container in containers(pod["spec"]):
            for word in command_words(container):
                assert not URL_WITH_PASSWORD.search(word), (where, word)
                assert password not in word and "--storage" not in word, (where, word)
            for variable in container.get("env", []):
                if variable["name"] in ("SEARCH_STORAGE", "POSTGRES_PASSWORD", "PGPASSWORD"):
                    reference = variable["valueFrom"]["secretKeyRef"]
                    assert reference["name"] == "search-storage", where
                    assert reference["key"] in SECRET["stringData"], where
                else:
                    assert not URL_WITH_PASSWORD.search(variable.get("value", "")), where


def test_every_search_container_gets_the_storage_from_the_secret():
    for where, pod in pod_templates():
        for container in filter(ours, containers(pod["spec"])):
            names = [v["name"] for v in container.get("env", [])]
            assert "SEARCH_STORAGE" in names, (where, container["name"])


# -- the worker Job ------------------------------------------------------------------------------


def test_the_worker_job_is_indexed_with_one_gpu_per_worker():
    job = resource("Job", "search-worker")["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["parallelism"] == job["completions"] >= 1
    worker = container_named(job["template"]["spec"], "worker")
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert job["template"]["spec"]["terminationGracePeriodSeconds"] >= 60  # trial back in queue


def test_the_worker_job_retries_environment_faults_but_not_failed_trials():
    job = resource("Job", "search-worker")["spec"]
    pod = job["template"]["spec"]
    # Rules the API server enforces beyond the schema: podFailurePolicy needs restartPolicy
    # Never and podReplacementPolicy Failed; FailIndex needs backoffLimitPerIndex.
    assert pod["restartPolicy"] == "Never"
    assert job["podReplacementPolicy"] == "Failed"
    assert job["backoffLimitPerIndex"] >= 1
    actions = {}
    for rule in job["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["operator"] == "In"
            assert container_named(pod, codes["containerName"])
            actions.update(dict.fromkeys(codes["values"], rule["action"]))
        else:
            assert rule["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
            assert rule["action"] == "Ignore"
    assert actions[EXIT_SIGTERM] == actions[EXIT_SIGINT] == "Ignore"  # trial was put back
    assert actions[EXIT_TRIALS_FAILED] == "FailIndex"
    assert actions[EXIT_ENVIRONMENT] == "Count"  # a new pod, maybe on another node


# -- volumes and the database ------------------------------------------------------------------


def test_the_artifacts_volume_is_shared_and_mounted_where_artifacts_points():
    claim = resource("PersistentVolumeClaim", "search-artifacts")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    paths = set()
    for where, pod in pod_templates():
        spec = pod["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        for container in filter(ours, spec["containers"]):
            args = parsed(container)
            mounts = {m["mountPath"]: claims.get(m["name"])
                      for m in container.get("volumeMounts", [])}
            assert mounts.get(args.artifacts) == "search-artifacts", where
            paths.add(args.artifacts)
    assert len(paths) == 1  # the same path everywhere: the study records it


def test_postgres_keeps_its_data_and_is_what_the_others_wait_for(monkeypatch):
    postgres = resource("StatefulSet", "search-postgres")
    spec = postgres["spec"]
    service = resource("Service", "search-postgres")
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (template,) = spec["volumeClaimTemplates"]
    container = container_named(spec["template"]["spec"], "postgres")
    (mount,) = container["volumeMounts"]
    assert mount["name"] == template["metadata"]["name"]
    assert environment(container)["PGDATA"].startswith(mount["mountPath"] + "/")
    assert "command" not in container  # the image's entrypoint initialises the database
    workers = max(MOST_WORKERS, resource("Job", "search-worker")["spec"]["parallelism"])
    assert open_to_clients(container["args"]) >= connections_needed(
        SECRET["stringData"]["search-storage"], workers, monkeypatch)
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    for name in ("search-create-study",):
        wait = container_named(resource("Job", name)["spec"]["template"]["spec"],
                               "wait-for-database")
        assert f"pg_isready -h {service['metadata']['name']} -p 5432" in wait["command"][2]
    wait = container_named(resource("Deployment", "search-dashboard")["spec"]["template"]["spec"],
                           "wait-for-database")
    assert f"pg_isready -h {service['metadata']['name']}" in wait["command"][2]


def test_the_network_policy_lets_every_database_client_in():
    policy = resource("NetworkPolicy", "search-postgres")["spec"]
    postgres_labels = resource("StatefulSet", "search-postgres")["spec"]["template"]["metadata"]
    assert policy["podSelector"]["matchLabels"].items() <= postgres_labels["labels"].items()
    (allowed,) = policy["ingress"][0]["from"]
    for where, pod in pod_templates():  # every pod here talks to the database
        assert allowed["podSelector"]["matchLabels"].items() <= \
            pod["metadata"]["labels"].items(), where


# -- SLURM -----------------------------------------------------------------------------------

SCRIPT = SBATCH.read_text()


def sbatch_options() -> dict[str, str | None]:
    """The #SBATCH lines as sbatch reads them: only before the first command of the script."""
    options = {}
    for line in SCRIPT.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            match = re.fullmatch(r"#SBATCH --([a-z][a-z-]*)(?:=(\S+))?(\s+#.*)?", stripped)
            assert match, f"malformed directive: {line!r}"
            assert match.group(1) not in options, f"repeated: {line!r}"
            options[match.group(1)] = match.group(2)
    assert all("#SBATCH" not in line for line in SCRIPT.split("\nset -u", 1)[1].splitlines())
    return options


def test_sbatch_directives_are_well_formed():
    assert SCRIPT.startswith("#!/bin/bash\n")
    options = sbatch_options()
    assert re.fullmatch(r"0-\d+(%\d+)?", options["array"])
    assert options["gres"] == "gpu:1"
    assert int(options["cpus-per-task"]) >= 1
    assert re.fullmatch(r"\d+G", options["mem"])
    assert re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", options["time"])
    assert "%A" in options["output"] and "%a" in options["output"]  # one log per task
    assert options["open-mode"] == "append"
    assert "requeue" in options and options["requeue"] is None
    assert re.fullmatch(r"B:USR1@\d+", options["signal"])


def test_sbatch_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_search_command_in_the_script_parses():
    (line,) = [line for line in SCRIPT.splitlines() if line.startswith("search ")]
    words = shlex.split(line.rstrip("&"))
    assert words[0] == "search"
    values = {"STUDY": "cifar100-vit-s", "ARTIFACTS": "/shared/search-artifacts"}
    words = [re.sub(r"\$\{SLURM_CPUS_PER_TASK:-1\}", sbatch_options()["cpus-per-task"], w)
             for w in words[1:]]
    args = build_parser().parse_args(expand(words, values))
    assert args.command == "worker" and args.study == "cifar100-vit-s"
    assert args.artifacts == "/shared/search-artifacts" and args.threads == 8
    assert "--storage" not in line


# The script run for real, with stand-ins for `search` (records its arguments and storage,
# exits with STUB_EXIT or, with STUB_WAIT, waits for SIGTERM) and `scontrol` (records).
STUB_SEARCH = """#!/bin/bash
printf '%s\\n' "$@" > "$STUB_DIR/argv"
printf '%s' "$SEARCH_STORAGE" > "$STUB_DIR/storage"
if [[ -n ${STUB_WAIT:-} ]]; then
    trap 'echo TERM >> "$STUB_DIR/signals"; stop=1' TERM
    stop=0
    touch "$STUB_DIR/started"
    for _ in $(seq 200); do (( stop )) && exit 143; sleep 0.05; done
    exit 99
fi
exit "${STUB_EXIT:-0}"
"""
STUB_SCONTROL = """#!/bin/bash
echo "$*" >> "$STUB_DIR/scontrol"
"""
URL = "postgresql://search:s3cret-pw@db.example:5432/search"


@pytest.fixture
def slurm(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("search", STUB_SEARCH), ("scontrol", STUB_SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    home = tmp_path / "home"
    (home / ".config" / "search").mkdir(parents=True)
    storage = home / ".config" / "search" / "storage"
    storage.write_text(URL + "\n")
    storage.chmod(0o600)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home), "STUB_DIR": str(tmp_path),
           "SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2",
           "SLURM_CPUS_PER_TASK": "8", "SLURMD_NODENAME": "gpu07", "STUDY": "my-study",
           "ARTIFACTS": str(tmp_path / "artifacts")}
    return tmp_path, env


def run_script(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SBATCH)], env={**env, **extra}, capture_output=True,
                          text=True, timeout=60)


def requeues(folder: Path) -> list[str]:
    path = folder / "scontrol"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("code, requeued", [(0, False), (EXIT_TRIALS_FAILED, False),
                                             (EXIT_ENVIRONMENT, True), (2, False)])
def test_sbatch_exits_with_the_workers_code_and_requeues_environment_faults(slurm, code,
                                                                            requeued):
    folder, env = slurm
    result = run_script(env, STUB_EXIT=str(code))
    assert result.returncode == code, result.stderr
    assert requeues(folder) == (["requeue 4242"] if requeued else [])
    argv = (folder / "argv").read_text().splitlines()
    args = build_parser().parse_args(argv)
    assert args.command == "worker" and args.study == "my-study" and args.threads == 8
    assert args.artifacts == env["ARTIFACTS"]
    assert (folder / "storage").read_text() == URL  # in the environment ...
    assert not any("s3cret-pw" in word or "://" in word for word in argv)  # ... not in argv
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_sbatch_requeues_an_environment_fault_only_so_many_times(slurm):
    folder, env = slurm
    result = run_script(env, STUB_EXIT=str(EXIT_ENVIRONMENT), SLURM_RESTART_COUNT="3")
    assert result.returncode == EXIT_ENVIRONMENT
    assert requeues(folder) == [] and "not requeued" in result.stderr


def start_and_wait(env: dict[str, str], folder: Path) -> subprocess.Popen:
    process = subprocess.Popen(["bash", str(SBATCH)], env={**env, "STUB_WAIT": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 30
    while not (folder / "started").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(0.2)  # the script sets its traps right after starting the worker
    return process


def test_sbatch_stops_the_worker_before_the_time_limit_and_requeues(slurm):
    folder, env = slurm
    process = start_and_wait(env, folder)
    process.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends to the script only
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_SIGTERM, stderr
    assert (folder / "signals").read_text().splitlines() == ["TERM"]
    assert requeues(folder) == ["requeue 4242"]


def test_sbatch_after_scancel_waits_for_the_worker_and_does_not_requeue(slurm):
    folder, env = slurm
    process = start_and_wait(env, folder)
    os.killpg(process.pid, signal.SIGTERM)  # SLURM signals the script and the worker alike
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_SIGTERM, stderr
    # One SIGTERM only: a second would make the worker abort its step at once.
    assert (folder / "signals").read_text().splitlines() == ["TERM"]
    assert requeues(folder) == []


def test_sbatch_refuses_a_storage_file_others_can_read(slurm):
    folder, env = slurm
    (Path(env["HOME"]) / ".config" / "search" / "storage").chmod(0o644)
    result = run_script(env)
    assert result.returncode == 2 and "chmod 600" in result.stderr
    assert not (folder / "argv").exists()  # the worker never started


def test_sbatch_needs_a_storage(slurm):
    folder, env = slurm
    (Path(env["HOME"]) / ".config" / "search" / "storage").unlink()
    result = run_script(env)
    assert result.returncode == 2 and "SEARCH_STORAGE" in result.stderr
    assert not (folder / "argv").exists()
    # From the environment instead (a URL without password, with ~/.pgpass, say).
    result = run_script(env, SEARCH_STORAGE="postgresql://search@db.example:5432/search")
    assert result.returncode == 0, result.stderr
    assert (folder / "storage").read_text() == "postgresql://search@db.example:5432/search"
