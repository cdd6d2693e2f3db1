"""The MLflow model registry adapter: registering encoders and segmenters, aliases, and turning a
model reference into a local model directory (one of the three tracking adapter modules allowed
to import mlflow; see ``flows/tracking/mlflow_run.py``).

Registered models: ``pgl-encoder`` (pretraining outputs: ``encoder.pt`` + ``contract.json``) and
``pgl-seg-<dataset>`` (fine-tuned segmenters: ``model.pt`` + ``contract.json``), logged as pyfunc
models (:class:`flows.tracking.pyfunc_model.PGLSegmenterModel`) whose one artifact is the model
directory. The contract and lineage travel as model metadata and as version tags.

Aliases (not stages): every new version gets ``candidate``. ``champion`` moves to the new version
only when its evaluation metric (``mean_dice`` by default) is strictly greater than the current
champion's, or when there is no champion yet; a champion without a recorded metric loses to any
version with one. The decision and the rule are set as version tags and returned. (Two
registrations of the same model racing each other may both compare against the old champion.)

``resolve_model(uri)`` accepts a local directory, ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``
or ``runs:/RUN_ID/PATH`` and returns a local directory holding the contract; downloads are cached
(model versions are immutable). ``pin_model`` turns an alias into the version it names now (and the
run that logged it): what lineage records, never the local cache path.

Every version gets a description (:mod:`flows.tracking.descriptions`: what it is, its datasets with
manifest hash prefixes, its init, steps, test mean Dice and how to use it).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from flows.tracking.descriptions import version_description
from flows.tracking.mlflow_run import tracking_uri as default_tracking_uri
from flows.tracking.pyfunc_model import ARTIFACT_KEY, SIGNATURE, code_paths, pip_requirements
from pgl_core.contracts import ENCODER_KIND, SEGMENTER_KIND, read_contract

ENCODER_MODEL = "pgl-encoder"
SEGMENTER_PREFIX = "pgl-seg-"
CANDIDATE = "candidate"
CHAMPION = "champion"
METRIC_KEY = "mean_dice"
_TAG_MAX = 5000


@dataclass(frozen=True)
class ModelPin:
    """A model reference pinned to what it names now: ``uri`` is ``models:/NAME/N`` (an alias resolved
    to its version) or the ``runs:/`` URI as given; ``run_id`` the run that logged the model."""

    uri: str
    run_id: str | None
    name: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Registration:
    """What :func:`register_segmenter` / :func:`register_encoder` did."""

    name: str
    version: str
    model_uri: str
    run_id: str | None
    metric: float | None
    previous_champion: str | None
    previous_metric: float | None
    champion_moved: bool
    decision: str
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def segmenter_model_name(dataset: str) -> str:
    """``pgl-seg-<dataset>``."""
    if not dataset or "/" in dataset or "@" in dataset:
        raise ValueError(f"dataset name {dataset!r} cannot name a registered model")
    return SEGMENTER_PREFIX + dataset


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _client(uri: str | None) -> tuple[Any, str]:
    uri = uri or default_tracking_uri(None)
    # MLflow's setters also export the URI to the environment (for subprocesses); ours choose it
    # themselves, and a leftover MLFLOW_TRACKING_URI would pass for the user's choice in every later
    # stage of this process (one with another work folder included): keep the environment as it was.
    before = {k: os.environ.get(k) for k in _URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _localise(model_uri: str, workdir: str, storage_options: dict | None) -> str:
    """A local copy of a model folder given as a local path or an object-store URI."""
    from storage.uri import is_local, local_path

    if is_local(model_uri):
        path = Path(local_path(model_uri))
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {model_uri} does not exist")
        return str(path)
    from storage import blobs

    dest = Path(workdir) / Path(model_uri.rstrip("/")).name
    prefix = model_uri.rstrip("/") + "/"
    for uri in blobs.list_uris(prefix, storage_options=storage_options):
        rel = uri[len(prefix):] if uri.startswith(prefix) else uri.rsplit("/", 1)[-1]
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blobs.get_bytes(uri, storage_options=storage_options))
    if not (dest / "contract.json").is_file():
        raise FileNotFoundError(f"{model_uri} holds no contract.json")
    return str(dest)


def _tag(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_TAG_MAX]


def _version_tags(contract: dict[str, Any], metrics: dict[str, float], extra: dict[str, Any]) -> dict[str, str]:
    tags = {"pgl.kind": _tag(contract.get("kind", "unknown"))}
    for key in ("label_names", "spacing_mm", "hu_window", "normalisation", "patch_vox", "orientation",
                "architecture", "mode", "steps", "format_version"):
        if key in contract:
            tags[f"pgl.contract.{key}"] = _tag(contract[key])
    for key, value in (contract.get("lineage") or {}).items():
        tags[f"pgl.lineage.{key}"] = _tag(value)
    pretraining = (contract.get("lineage") or {}).get("pretraining")
    if isinstance(pretraining, dict):  # the init, searchable on its own
        tags["pgl.lineage.init"] = _tag(pretraining.get("uri") or contract.get("init") or "")
        if pretraining.get("run_id"):
            tags["pgl.lineage.init_run"] = _tag(pretraining["run_id"])
    for name, digest in (contract.get("datasets") or {}).items():
        tags[f"pgl.dataset.{name}.manifest_hash"] = _tag(digest)
    tags.update({f"pgl.metric.{k}": repr(float(v)) for k, v in metrics.items()})
    tags.update({k: _tag(v) for k, v in extra.items()})
    return tags


def _metric_of(version: Any, key: str) -> float | None:
    raw = (version.tags or {}).get(f"pgl.metric.{key}")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _champion_rule(key: str) -> str:
    return (f"'{CHAMPION}' moves to a new version only if its {key} is strictly greater than the "
            f"current champion's (a champion without {key} loses to any version with one), or if "
            "there is no champion yet")


def _decide(client: Any, name: str, version: str, metric: float | None, key: str) -> tuple[bool, str, Any]:
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is None:
        return True, f"version {version} is champion: there was none", None
    if str(current.version) == str(version):
        return True, f"version {version} is already champion", current
    best = _metric_of(current, key)
    if metric is None:
        return False, f"version {version} has no {key}; champion stays version {current.version}", current
    if best is None or metric > best:
        return True, f"version {version} {key}={metric:.6g} beats champion version {current.version} " \
                     f"({key}={best if best is None else format(best, '.6g')})", current
    return False, f"version {version} {key}={metric:.6g} does not beat champion version " \
                  f"{current.version} ({key}={best:.6g})", current


_MODEL_CODE = """# The pyfunc model of a PGL model directory (MLflow models-from-code; no pickled objects).
import mlflow.models
from flows.tracking.pyfunc_model import PGLSegmenterModel
mlflow.models.set_model(PGLSegmenterModel())
"""


def _log_pyfunc(local_dir: str, run_id: str | None, contract: dict[str, Any], client: Any) -> Any:
    """Log the pyfunc model (under ``run_id`` when given, without ending that run)."""
    status = client.get_run(run_id).info.status if run_id else None
    with tempfile.TemporaryDirectory(prefix="pgl-pyfunc-") as tmp, warnings.catch_warnings():
        # No input example on purpose: MLflow would run a prediction on it at logging time.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        code = Path(tmp) / "pgl_pyfunc_model.py"
        code.write_text(_MODEL_CODE)
        kwargs = dict(name="model", python_model=str(code), artifacts={ARTIFACT_KEY: local_dir},
                      code_paths=code_paths(tmp), pip_requirements=pip_requirements(), signature=SIGNATURE,
                      metadata={"pgl_contract": contract, "pgl_lineage": contract.get("lineage") or {}})
        if run_id is None:
            return mlflow.pyfunc.log_model(**kwargs)
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pyfunc.log_model(**kwargs)
    if status == "RUNNING":  # leaving the context ended a run its owner still holds open
        client.update_run(run_id, status="RUNNING")
    return info


@contextlib.contextmanager
def _quiet_registration() -> Any:
    """MLflow prints "Successfully registered model ..." / "Created version ..." for every version
    on its own stream; the pipeline reports registrations itself (results, summary lines)."""
    from mlflow.utils import logging_utils

    stream = getattr(logging_utils, "MLFLOW_LOGGING_STREAM", None)
    logging_utils.MLFLOW_LOGGING_STREAM = io.StringIO()
    try:
        yield
    finally:
        logging_utils.MLFLOW_LOGGING_STREAM = stream


def _register(name: str, local_dir: str, run_id: str | None, metrics: dict[str, float], key: str,
              client: Any, extra_tags: dict[str, Any]) -> Registration:
    contract = read_contract(local_dir)
    info = _log_pyfunc(local_dir, run_id, contract, client)
    tags = _version_tags(contract, metrics, extra_tags)
    with _quiet_registration():
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
    version = str(mv.version)
    client.update_model_version(name, version, description=version_description(name, version, contract, metrics))
    client.set_registered_model_alias(name, CANDIDATE, version)
    metric = metrics.get(key)
    metric = float(metric) if metric is not None and math.isfinite(float(metric)) else None
    moved, decision, current = _decide(client, name, version, metric, key)
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version)
    rule = _champion_rule(key)
    client.set_model_version_tag(name, version, "pgl.champion_decision", decision)
    client.set_model_version_tag(name, version, "pgl.champion_rule", rule)
    prev = None if current is None else str(current.version)
    return Registration(name=name, version=version, model_uri=f"models:/{name}/{version}", run_id=run_id,
                        metric=metric, previous_champion=prev,
                        previous_metric=None if current is None else _metric_of(current, key),
                        champion_moved=moved, decision=decision, rule=rule)


def register_segmenter(model_dir: str, dataset: str, run_id: str | None, metrics: dict[str, float], *,
                       tracking_uri: str | None = None, metric_key: str = METRIC_KEY,
                       storage_options: dict | None = None) -> Registration:
    """Register a fine-tuned segmenter directory as a new version of ``pgl-seg-<dataset>``."""
    name = segmenter_model_name(dataset)
    client, _ = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="pgl-register-") as tmp:
        local = _localise(model_dir, tmp, storage_options)
        read_contract(model_dir, storage_options, kinds=(SEGMENTER_KIND,))
        return _register(name, local, run_id, metrics, metric_key, client, {"pgl.dataset": dataset})


def register_encoder(output_uri: str, run_id: str | None, metrics: dict[str, float] | None = None, *,
                     tracking_uri: str | None = None, metric_key: str = METRIC_KEY,
                     storage_options: dict | None = None) -> Registration:
    """Register a pretraining output (``encoder.pt`` + ``contract.json``) as ``pgl-encoder``.

    Without ``metric_key`` in ``metrics`` (e.g. no downstream evaluation yet) the version is a
    candidate only, unless there is no champion at all.
    """
    client, _ = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="pgl-register-") as tmp:
        local = _localise(output_uri, tmp, storage_options)
        read_contract(output_uri, storage_options, kinds=(ENCODER_KIND,))
        extra = {"pgl.lineage.pretrain_run": run_id or "", "pgl.lineage.output_uri": output_uri}
        return _register(ENCODER_MODEL, local, run_id, metrics or {}, metric_key, client, extra)


def registered_models(tracking_uri: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """(name, {alias: version}) of every registered model, sorted by name."""
    client, _ = _client(tracking_uri)
    return [(m.name, {a: str(v) for a, v in sorted(m.aliases.items())})
            for m in sorted(client.search_registered_models(), key=lambda m: m.name)]


def default_cache_dir() -> Path:
    """``$PGL_MODEL_CACHE``, else ``$XDG_CACHE_HOME/pgl/models`` (``~/.cache/pgl/models``)."""
    if os.environ.get("PGL_MODEL_CACHE"):
        return Path(os.environ["PGL_MODEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgl" / "models"


def _model_dir_in(root: Path, uri: str) -> str:
    """The model directory inside a downloaded pyfunc model (or ``root`` itself)."""
    if (root / "contract.json").is_file():
        return str(root)
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        import yaml

        flavor = (yaml.safe_load(mlmodel.read_text()).get("flavors") or {}).get("python_function") or {}
        entry = (flavor.get("artifacts") or {}).get(ARTIFACT_KEY) or {}
        path = root / entry.get("path", "")
        if entry and (path / "contract.json").is_file():
            return str(path)
    found = sorted(root.rglob("contract.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"{uri}: expected one contract.json in the model, found {len(found)}")
    return str(found[0].parent)


def _download(uri: str, dest: Path, tracking: str) -> Path:
    """Download ``uri`` into ``dest`` (atomically: a temp folder renamed into place)."""
    if (dest / ".complete").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp), tracking_uri=tracking)
        (tmp / ".complete").write_text(uri)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first
            if not (dest / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    body = uri[len("models:/"):].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    name, _, version = body.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"model URI {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, version, None


def pin_model(uri: str, tracking_uri: str | None = None) -> ModelPin:
    """``models:/NAME@ALIAS`` -> the version the alias names now (``models:/NAME/N``) with the run
    that logged it; ``models:/NAME/N`` and ``runs:/RUN_ID/PATH`` keep their URI."""
    if uri.startswith("runs:/"):
        return ModelPin(uri=uri, run_id=uri[len("runs:/"):].strip("/").split("/", 1)[0] or None)
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a registry reference (models:/... or runs:/...)")
    name, version, alias = _parse_models_uri(uri)
    client, _ = _client(tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias is not None else \
            client.get_model_version(name, version)
    except MlflowException as err:
        missing = f"no version of {name!r} has alias {alias!r}" if alias is not None else \
            f"model {name!r} has no version {version}"
        raise LookupError(f"{uri}: {missing}") from err
    version = str(found.version)
    return ModelPin(uri=f"models:/{name}/{version}", run_id=found.run_id or None, name=name, version=version)


def resolve_pinned(uri: str, cache_dir: str | Path | None = None,
                   tracking_uri: str | None = None) -> tuple[str, ModelPin | None]:
    """(local model directory, the pinned reference or None for a local dir): :func:`resolve_model`
    that also says which version an alias named."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if uri.startswith("models:/"):
        pin = pin_model(uri, tracking_uri)
        _, tracking = _client(tracking_uri)
        root = _download(pin.uri, cache / str(pin.name) / str(pin.version), tracking)
        return _model_dir_in(root, uri), pin
    if uri.startswith("runs:/"):
        _, tracking = _client(tracking_uri)
        key = uri[len("runs:/"):].strip("/").replace("/", "__")
        return _model_dir_in(_download(uri, cache / "runs" / key, tracking), uri), pin_model(uri)
    return resolve_model(uri), None


def resolve_model(uri: str, cache_dir: str | Path | None = None, tracking_uri: str | None = None) -> str:
    """A local model directory (with ``contract.json``) for a local dir or an MLflow model URI."""
    if uri.startswith(("models:/", "runs:/")):
        return resolve_pinned(uri, cache_dir, tracking_uri)[0]
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"model reference {uri!r}: use a local directory, models:/... or runs:/...")
    path = Path(uri.removeprefix("file://"))
    if not (path / "contract.json").is_file():
        raise FileNotFoundError(f"model directory {uri} has no contract.json")
    return str(path.resolve())
