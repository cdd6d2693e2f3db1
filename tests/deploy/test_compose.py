"""docker-compose.yml: the services of the production stack exist and are wired to each other, every
long-running one is health-checked and restarted, start order waits on health, nothing secret is in
the file, and every variable it reads is documented in .env.example. Also validated against the
Compose Specification's JSON schema (vendored) and, where a compose binary exists, by compose itself.
Nothing here starts a container."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.deploy.files import (COMPOSE, DUMMY_ENV, ENV_EXAMPLE, REPO, compose, compose_variables, image_tag,
                                interpolate, with_defaults)

SERVICES = {"minio", "minio-init", "postgres", "prefect-server", "pgl-serve", "mlflow", "dask-scheduler",
            "dask-worker", "trainer"}
ONE_SHOT = {"minio-init"}
# ports the images listen on without publishing them (PostgreSQL is reached inside the network only)
IMAGE_PORTS = {"postgres": {5432}}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CONNECTION_URL|STORE_URI", re.I)


def _services() -> dict:
    return compose()["services"]


def _container_ports(name: str, svc: dict) -> set[int]:
    ports = set(IMAGE_PORTS.get(name, set()))
    for spec in svc.get("ports", []):
        ports.add(int(str(spec).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _urls(svc: dict) -> list[str]:
    text = json.dumps({"environment": _env(svc), "command": svc.get("command"), "entrypoint": svc.get("entrypoint")})
    return re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"',]+", text)


def test_the_stack_has_every_service_and_no_version_key():
    data = compose()
    assert "version" not in data, "compose-spec format: no version key (Compose v2 warns, 1.29 needs none)"
    assert SERVICES <= set(data["services"]), f"missing: {SERVICES - set(data['services'])}"
    for name in ("pg-data", "minio-data", "pgl-data"):
        assert name in data["volumes"], f"named volume {name}"


def test_every_long_running_service_is_health_checked_and_restarted():
    for name, svc in _services().items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", f"{name} runs once"
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test and test not in (["NONE"], "NONE"), f"{name} has no health check"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: restart policy"


def test_health_checks_probe_the_port_the_service_listens_on():
    for name, svc in _services().items():
        for url in re.findall(r"http://localhost:(\d+)/", json.dumps(svc.get("healthcheck", {}))):
            port = int(url)
            listens = _container_ports(name, svc) | {8080, 8788}  # runner / worker health servers
            assert port in listens, f"{name} health check probes :{port}, it listens on {sorted(listens)}"
    assert "PREFECT_RUNNER_SERVER_ENABLE" in _env(_services()["pgl-serve"]), "the runner's /health needs its server"
    worker = _services()["dask-worker"]
    assert "--dashboard-address" in worker["command"] and ":8788" in worker["command"]


def test_dependencies_use_the_long_syntax_and_wait_for_health():
    services = _services()
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs the long syntax with a condition"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec.get("condition")
            if dep in ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert "healthcheck" in services[dep]
    # the order that matters
    assert set(services["mlflow"]["depends_on"]) >= {"postgres", "minio-init"}
    assert set(services["prefect-server"]["depends_on"]) >= {"postgres"}
    assert set(services["minio-init"]["depends_on"]) == {"minio"}
    assert set(services["pgl-serve"]["depends_on"]) >= {"prefect-server", "mlflow"}


def test_urls_between_services_name_a_service_and_a_port_it_listens_on():
    services = _services()
    checked = 0
    for name, svc in services.items():
        for url in _urls(svc):
            parts = urlsplit(url.replace("${", "").replace("}", ""))
            host = parts.hostname
            if host not in services or parts.scheme == "s3":  # s3://BUCKET: not a host
                continue
            port = parts.port or {"http": 80, "postgresql": 5432}.get(parts.scheme.split("+")[0])
            assert port in _container_ports(host, services[host]), f"{name}: {url} but {host} listens on " \
                                                                    f"{sorted(_container_ports(host, services[host]))}"
            checked += 1
    assert checked >= 8
    env = _env(services["pgl-serve"])
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PGL_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "--port=5000" in services["mlflow"]["command"]
    worker = services["dask-worker"]
    assert "tcp://dask-scheduler:8786" in worker["entrypoint"]


def test_mlflow_uses_postgresql_with_a_driver_and_s3_artifacts_served_through_it():
    services = _services()
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert "--serve-artifacts" in command
    destination = next(a.split("=", 1)[1] for a in command if a.startswith("--artifacts-destination="))
    bucket = urlsplit(destination).netloc
    init = "\n".join(services["minio-init"]["command"])
    assert f"mc mb --ignore-existing local/{bucket}" in init, "the artifact bucket is made before MLflow starts"
    store = _env(mlflow)["MLFLOW_BACKEND_STORE_URI"]
    scheme = urlsplit(store.replace("${", "").replace("}", "")).scheme
    assert scheme == "postgresql+psycopg", "a driver the image installs ([server] extra: psycopg)"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'server = \[\s*"psycopg\[binary\]==', pyproject)
    assert "--allowed-hosts=mlflow" in " ".join(command), "MLflow 3 refuses Host headers it does not know"
    # separate databases, both made by the init script, named in the two backends' URIs
    databases = _env(services["postgres"])["POSTGRES_MULTIPLE_DATABASES"].split(",")
    prefect_db = _env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"].rsplit("/", 1)[1]
    assert sorted(databases) == sorted([prefect_db, store.rsplit("/", 1)[1]]) == ["mlflow", "prefect"]


def test_the_trainer_reserves_nvidia_gpus_and_uses_the_cuda_image():
    trainer = _services()["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert trainer["profiles"] == ["gpu"], "only started with --profile gpu (a host without GPUs runs the rest)"
    index = with_defaults(trainer["build"]["args"]["TORCH_INDEX"])
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index)
    assert with_defaults(trainer["image"]) != with_defaults(_services()["mlflow"]["image"])


def test_images_are_pinned():
    for name, svc in _services().items():
        if "build" in svc:
            continue  # built here from deploy/Dockerfile (its base images: test_images)
        image = with_defaults(svc["image"])
        tag = image_tag(image)
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_no_secret_is_written_in_the_file():
    text = COMPOSE.read_text()
    for m in compose_variables(text):
        if SECRET_NAME.search(m.group("name")) or m.group("name").endswith("_USER"):
            assert m.group("op") == ":?", f"${{{m.group('name')}}} must be required (:?), never defaulted"
    for name, svc in _services().items():
        for key, value in _env(svc).items():
            if SECRET_NAME.search(key):
                assert "${" in value, f"{name}: {key} holds a literal"
                stripped = re.sub(r"\$\{[^}]*\}", "", value)
                assert not re.search(r"://[^/@]*:[^/@]+@", stripped), f"{name}: {key} has inline credentials"
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#") and SECRET_NAME.search(key):
            assert value == "", f".env.example sets {key}: leave secrets empty"
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


def test_every_variable_is_documented_in_env_example():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    used = {m.group("name") for m in compose_variables(COMPOSE.read_text())}
    assert used - documented == set(), f"not in .env.example: {sorted(used - documented)}"
    assert set(DUMMY_ENV) <= documented
    # the required ones are exactly the secrets .env must set
    required = {m.group("name") for m in compose_variables(COMPOSE.read_text()) if m.group("op") == ":?"}
    assert required == set(DUMMY_ENV)


def _schema_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((REPO / "tests/deploy/data/compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_the_file_matches_the_compose_specification_schema():
    validator = _schema_validator()
    for data in (compose(), yaml.safe_load(interpolate(COMPOSE.read_text(), DUMMY_ENV))):
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_interpolation_needs_every_secret():
    with pytest.raises(KeyError, match="set .* in .env"):
        interpolate(COMPOSE.read_text(), {})
    data = yaml.safe_load(interpolate(COMPOSE.read_text(), DUMMY_ENV))
    assert data["services"]["dask-worker"]["deploy"]["replicas"] == 2


def _write_env(tmp_path, env: dict[str, str]):
    path = tmp_path / "compose.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


def _compose_commands() -> list[list[str]]:
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            found.append(["docker", "compose"])
    return found


@pytest.mark.parametrize("missing", [False, True], ids=["dummy-env", "empty-env"])
def test_compose_itself_accepts_the_file(tmp_path, missing):
    commands = _compose_commands()
    if not commands:
        pytest.skip("no docker-compose or docker compose binary on PATH")
    env_file = _write_env(tmp_path, {} if missing else DUMMY_ENV)
    for cmd in commands:
        # config only: reads and checks the file, talks to no Docker engine
        proc = subprocess.run([*cmd, "--env-file", str(env_file), "-f", str(COMPOSE), "--profile", "gpu",
                               "config", "-q"], capture_output=True, text=True, timeout=60, cwd=REPO,
                              env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
        if missing:
            assert proc.returncode != 0 and "set MINIO_ROOT_USER in .env" in proc.stderr + proc.stdout, cmd
        else:
            assert proc.returncode == 0, f"{' '.join(cmd)} config: {proc.stderr}"
