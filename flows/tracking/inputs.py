"""Store datasets as MLflow run inputs (the run's "Datasets" in the UI), one per dataset a stage read.

Each input is an MLflow dataset that holds metadata only (no data is copied):

- ``name``: the dataset name in the store;
- ``digest``: the dataset's manifest hash (:func:`storage.manifest.manifest_hash`), its first 32
  hex digits (MLflow caps digests at 36 characters); the full hash is the input tag
  ``pgl.manifest_hash`` and in the profile;
- ``source``: where the dataset lives, ``<store URI>/<dataset>`` (a local store as an absolute
  path) with any credentials redacted (:func:`storage.uri.redact_uri`); source type ``local``,
  ``s3``, ... as MLflow resolves the URI, else ``pgl-store``;
- ``profile``: JSON with the full manifest hash, the plan hash and the case counts;
- input tag ``mlflow.data.context``: ``training`` (pretraining, fine-tuning) or ``evaluation``.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source, resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from storage.manifest import current_done, manifest_hash
from storage.uri import is_local, join_uri, local_path, redact_uri

DIGEST_CHARS = 32
MANIFEST_HASH_TAG = "pgl.manifest_hash"


class StoreSource(DatasetSource):
    """A dataset in a store whose URI scheme MLflow has no source type for (e.g. ``memory://``)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "pgl-store"

    def load(self, dst_path: str | None = None) -> str:
        """Stores are read through :mod:`storage`, not downloaded by MLflow."""
        raise NotImplementedError(f"read {self.uri} with storage.store.DatasetStore")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # only ever built explicitly

    @classmethod
    def _resolve(cls, raw_source: Any) -> "StoreSource":
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> "StoreSource":
        return cls(str(source_dict["uri"]))


register_dataset_source(StoreSource)


class StoreDataset(MetaDataset):
    """A store dataset as metadata: name, digest, source and a profile (no schema)."""

    def __init__(self, source: DatasetSource, name: str, digest: str, profile: dict[str, Any]) -> None:
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> Any | None:
        """The full manifest hash, the plan hash and the case counts."""
        return self._profile

    def to_dict(self) -> dict[str, str]:
        """MetaDataset's fields plus the profile (JSON)."""
        return {**super().to_dict(), "profile": json.dumps(self._profile, sort_keys=True)}


def source_uri(store: str, dataset: str) -> str:
    """``<store>/<dataset>``, a local store as an absolute path, credentials redacted."""
    root = os.path.abspath(local_path(store)) if is_local(store) else store
    return redact_uri(join_uri(root, dataset))


def _source(uri: str) -> DatasetSource:
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": local paths, twice
        warnings.simplefilter("ignore")
        try:
            return resolve_dataset_source(uri)
        except MlflowException:
            return StoreSource(uri)


def _profile(manifest: dict[str, Any], digest: str) -> dict[str, Any]:
    cases = manifest.get("cases") or {}
    done = current_done(manifest)
    return {"manifest_hash": digest, "plan_hash": manifest.get("plan_hash"), "cases_done": len(done),
            "cases_labelled": sum(1 for c in done if (cases.get(c) or {}).get("labelled"))}


def dataset_input(store: str, dataset: str, manifest: dict[str, Any], context: str) -> DatasetInput:
    """The MLflow input of ``dataset`` of ``store`` (its ``manifest``) used in ``context``."""
    digest = manifest_hash(manifest)
    data = StoreDataset(_source(source_uri(store, dataset)), dataset, digest[:DIGEST_CHARS],
                        _profile(manifest, digest))
    tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context), InputTag(key=MANIFEST_HASH_TAG, value=digest)]
    return DatasetInput(dataset=data._to_mlflow_entity(), tags=tags)


def profile_of(dataset_input_entity: Any) -> dict[str, Any]:
    """The profile of a logged input (``run.inputs.dataset_inputs[i]``), decoded."""
    return json.loads(dataset_input_entity.dataset.profile or "{}")
