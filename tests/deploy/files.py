"""What the deploy tests read: the repository's deploy files, parsed, and compose's variable syntax."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "kubernetes"
SLURM = DEPLOY / "slurm"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal $
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# values for the variables .env must set (no real secret: throw-away strings)
DUMMY_ENV = {"MINIO_ROOT_USER": "dummy-root", "MINIO_ROOT_PASSWORD": "dummy-root-password",
             "PGL_S3_ACCESS_KEY": "dummy-key", "PGL_S3_SECRET_KEY": "dummy-secret-key",
             "POSTGRES_USER": "pgl", "POSTGRES_PASSWORD": "dummy-db-password"}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_variables(text: str) -> list[re.Match]:
    """Every ``${...}`` in ``text`` (a ``$$`` escape is not a variable)."""
    return [m for m in _VAR.finditer(text.replace("$$", ""))]


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ``text`` with ``env`` (raises KeyError for a required variable unset)."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        value = env.get(name)
        if op and op.endswith("?") and not value:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and not value:
            return arg
        return value or ""

    parts = text.split("$$")
    return "$".join(_VAR.sub(one, part) for part in parts)


def with_defaults(value: str) -> str:
    """``value`` with each ``${VAR:-default}`` replaced by its default (other variables kept)."""
    return _VAR.sub(lambda m: m.group("arg") if (m.group("op") or "").endswith("-") else m.group(0), value)


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes YAML file under deploy/kubernetes -> its documents."""
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
            for p in sorted(K8S.glob("*.yaml"))}


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None without one; a registry port is not a tag)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None
