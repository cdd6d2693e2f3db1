"""deploy/Dockerfile and .dockerignore: pinned base image, torch from the CPU wheel index by default
(a CUDA index by build argument), a non-root user, the working directory deploy/prefect.yaml pulls
from, a health check, and a build context without the virtual environment, work folders or
secrets. Read as text; nothing is built here."""

from __future__ import annotations

import fnmatch
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.deploy.files import COMPOSE, DEPLOY, DOCKERFILE, REPO, compose, dockerfile_instructions, image_tag

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _args() -> dict[str, str]:
    out = {}
    for word, rest in dockerfile_instructions():
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            out[key] = value.strip('"')
    return out


def _one(word: str) -> list[str]:
    return [rest for w, rest in dockerfile_instructions() if w == word]


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def test_base_image_is_pinned():
    args = _args()
    froms = _one("FROM")
    assert len(froms) == 1
    image = _expand(froms[0].split()[0], args)
    tag = image_tag(image)
    assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"base image {image} is not pinned"


def test_torch_comes_from_the_cpu_index_unless_asked_for_cuda():
    args = _args()
    assert args["TORCH_INDEX"] == CPU_INDEX
    runs = [r for r in _one("RUN") if "torch==" in r]
    assert len(runs) == 1 and '--index-url "${TORCH_INDEX}"' in runs[0]
    # the same torch as `make` installs, inside the package's range
    make_torch = re.search(r"TORCH_SPEC \?= torch==([\d.]+)", (REPO / "Makefile").read_text()).group(1)
    assert args["TORCH_VERSION"] == make_torch
    # the package install comes after torch (so it keeps the index's build) and the CUDA variant is a build arg
    order = [r for r in _one("RUN") if "pip install" in r]
    assert "torch==" in order[0] and 'pip install ".[${PGL_EXTRAS}]"' in order[1]
    trainer = compose()["services"]["trainer"]["build"]["args"]
    assert "TORCH_INDEX" in trainer


def test_runs_as_an_unprivileged_user():
    users = _one("USER")
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    words = [w for w, _ in dockerfile_instructions()]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "USER after the last RUN"


def test_workdir_is_where_prefect_yaml_pulls_from():
    workdir = _one("WORKDIR")
    assert len(workdir) == 1
    pull = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["pull"]
    directory = pull[0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert workdir[0] == directory
    # the entrypoints the deployments name are under it (copied there)
    copied = {rest.split()[0] for rest in _one("COPY")}
    for dep in yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["deployments"]:
        top = dep["entrypoint"].split("/", 1)[0]
        assert top in copied, f"{dep['entrypoint']}: {top} is not copied into {directory}"


def test_every_package_the_project_ships_is_copied():
    includes = re.search(r'include = \[([^\]]*)\]', (REPO / "pyproject.toml").read_text()).group(1)
    packages = {p.strip().strip('"').rstrip("*") for p in includes.split(",")}
    copied = {rest.split()[0] for rest in _one("COPY")}
    assert packages <= copied, f"not copied: {packages - copied}"
    for source in copied:
        assert (REPO / source).exists(), source


def test_health_check_probes_with_the_copied_script():
    checks = _one("HEALTHCHECK")
    assert len(checks) == 1
    workdir = _one("WORKDIR")[0]
    assert f"{workdir}/deploy/healthcheck.py" in checks[0]
    assert (DEPLOY / "healthcheck.py").is_file()
    # the compose health checks run the same script where the image has it
    for name, svc in compose()["services"].items():
        test = " ".join(svc.get("healthcheck", {}).get("test", []))
        if "healthcheck.py" in test:
            assert f"{workdir}/deploy/healthcheck.py" in test, name


def _ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.replace("**/", "")) \
                or fnmatch.fnmatch(path.split("/", 1)[0], pat):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", [".venv", ".git", ".env", "demo-work", "study-work", "pgl-work", "tests",
                                  "flows/__pycache__", ".pytest_cache", ".hypothesis"])
def test_dockerignore_keeps_out(path):
    assert _ignored(path, _ignore_patterns()), f"{path} would be sent to the Docker daemon"


def test_dockerignore_keeps_what_the_image_copies():
    patterns = _ignore_patterns()
    for rest in _one("COPY"):
        for source in rest.split()[:-1]:
            assert not _ignored(source, patterns), f"COPY {source} but .dockerignore drops it"
    assert not _ignored(".env.example", patterns)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_healthcheck_script_answers_like_docker_expects(health_server, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pgl_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("PGL_HEALTH_URL", raising=False)
    assert module.main(["healthcheck.py", f"{health_server}/health"]) == 0
    assert module.main(["healthcheck.py", f"{health_server}/broken"]) == 1
    assert module.main(["healthcheck.py", "http://127.0.0.1:1/health"]) == 1  # nothing listens
    assert module.main(["healthcheck.py"]) == 0  # no URL: nothing to probe
    monkeypatch.setenv("PGL_HEALTH_URL", f"{health_server}/broken")
    assert module.main(["healthcheck.py"]) == 1


def test_compose_builds_from_this_dockerfile():
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert svc["build"]["dockerfile"] == str(DOCKERFILE.relative_to(REPO)), name
            assert svc["build"]["context"] == "."
    assert COMPOSE.parent == REPO
