"""docker-compose.yml: no Docker engine runs here, so check its structure and the commands."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import yaml

from search.cli.parser import build_parser
from search.worker.signals import SIGNALS as STOP_SIGNALS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_postgres_has_a_volume_and_a_health_check_the_others_wait_for():
    services = COMPOSE["services"]
    assert services["postgres"]["healthcheck"]["test"][-1].startswith("pg_isready")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    for name in ("dashboard", "worker", "search"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["environment"]["SEARCH_STORAGE"].startswith("postgresql://")


def test_workers_reserve_a_gpu_and_run_search_worker():
    worker = COMPOSE["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    command = [part.replace("${STUDY:-cifar100-vit-s}", "cifar100-vit-s")
               for part in worker["command"]]
    args = build_parser().parse_args(command)  # the image's entrypoint is `search`
    assert args.command == "worker" and args.study == "cifar100-vit-s"


def test_the_image_entrypoint_is_the_search_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["search"]' in dockerfile
    assert "pip install --no-cache-dir -e ." in dockerfile  # studies/ beside the package
    assert "COPY studies studies" in dockerfile


def test_the_dashboard_listens_on_localhost_only():
    dashboard = COMPOSE["services"]["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    args = build_parser().parse_args(dashboard["command"])
    assert args.command == "dashboard" and args.port == 8080
    assert args.artifacts == "/app/search-artifacts"


# The most workers one study is documented to carry (docs/explanation/faults.md, "Several hosts
# at once: queueing and connections"; BENCHMARKS.md's storage load runs); each is one process
# with one storage engine.
MOST_WORKERS = 64


def pool_of_open_storage(url: str, monkeypatch, **options) -> int:
    """The most connections one process's storage engine opens for `url`: pool_size +
    max_overflow of the engine_kwargs `open_storage` passes (SQLAlchemy's QueuePool defaults
    where it passes none), read by catching the storage it builds, no server needed."""
    import inspect

    import optuna
    from sqlalchemy.pool import QueuePool

    from search.study import storage as storage_module

    seen: list[dict] = []

    def catch(_url, engine_kwargs, **_):
        seen.append(engine_kwargs)
        return object()

    monkeypatch.setattr(optuna.storages, "RDBStorage", catch)
    monkeypatch.setattr(storage_module, "PatientRDBStorage", catch)
    storage_module.open_storage(url, **options)
    (kwargs,) = seen
    defaults = inspect.signature(QueuePool).parameters
    size = kwargs.get("pool_size", defaults["pool_size"].default)
    overflow = kwargs.get("max_overflow", defaults["max_overflow"].default)
    assert kwargs.get("poolclass", QueuePool) is QueuePool and overflow >= 0, kwargs
    return size + overflow


def connections_needed(url: str, workers: int, monkeypatch) -> int:
    """Connections a server needs for `workers` workers plus the dashboard and one command
    at a time (`search grid`, `leaderboard`...) beside them, each one process with the pool
    `open_storage` gives it: as a worker opens it (heartbeats, waiting out outages), and as
    the dashboard and commands do."""
    from search.study.heartbeat_settings import HeartbeatSettings

    worker = pool_of_open_storage(url, monkeypatch, must_exist=True,
                                  heartbeat=HeartbeatSettings(), outage_timeout=600)
    other = pool_of_open_storage(url, monkeypatch, must_exist=True)
    return workers * worker + 2 * other


def open_to_clients(command: list[str]) -> int:
    """The connections a PostgreSQL server started with `command` (`-c name=value` words)
    takes from ordinary users: max_connections less those kept for superusers (3 unless
    set)."""
    settings = dict(part.split("=", 1) for part in command if "=" in part)
    return int(settings["max_connections"]) - int(settings.get("superuser_reserved_connections",
                                                               3))


def test_postgres_accepts_the_connections_of_the_most_workers_and_the_dashboard(monkeypatch):
    services = COMPOSE["services"]
    url = services["worker"]["environment"]["SEARCH_STORAGE"].replace(
        "${POSTGRES_PASSWORD:-search}", "search")
    assert open_to_clients(services["postgres"]["command"]) >= \
        connections_needed(url, MOST_WORKERS, monkeypatch)


def stop_signal(service: dict) -> signal.Signals:
    """What `docker compose stop` sends: the service's stop_signal, else the image's
    STOPSIGNAL, else SIGTERM."""
    name = service.get("stop_signal")
    if name is None:
        found = re.search(r"^STOPSIGNAL\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
        name = found.group(1) if found else "SIGTERM"
    return signal.Signals(int(name)) if str(name).isdigit() else signal.Signals[str(name)]


def test_stopped_workers_get_a_signal_they_handle_and_time_to_put_their_trial_back():
    worker = COMPOSE["services"]["worker"]
    # The worker catches it and re-queues its trial (search/worker/signals.py) only if the
    # signal Docker sends is one it handles; SIGKILL, say, would leave the trial to go stale.
    assert stop_signal(worker) in STOP_SIGNALS
    assert int(worker["stop_grace_period"].rstrip("s")) >= 30
