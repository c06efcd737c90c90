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


def test_postgres_accepts_the_connections_of_64_workers():
    command = COMPOSE["services"]["postgres"]["command"]
    limit = int(next(part.split("=")[1] for part in command
                     if part.startswith("max_connections=")))
    assert limit >= 2 * 64 + 10  # a trial and a heartbeat connection per worker, plus tools


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
