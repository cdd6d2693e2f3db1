"""The contracts between pretraining, fine-tuning and prediction: what travels with the weights.

Two kinds of ``contract.json`` (format version 1), read, checked and written here only:

- :class:`PretrainContract` (kind ``pgl-encoder``), beside ``encoder.pt`` (the online backbone's
  state dict, ``PGLModel.encoder_state_dict()``) under a pretraining run's ``output_uri``: the
  preprocessing the weights expect (spacing, orientation, HU window, normalisation, patch), the
  architecture, the datasets with their manifest hashes, the step count and the full config.
- :class:`SegmenterContract` (kind ``pgl-segmenter``) in a fine-tuned model directory
  (``<run output>/model/``: ``model.pt``, the SegmentationUNet state dict; ``contract.json``;
  ``split.json``, the train / val / test case ids): ``predictor`` ("module:function" that turns an
  input file into a label map), ``architecture`` (model config + ``num_classes``),
  ``in_channels``, ``label_names`` {str(value): name}, ``spacing_mm``, ``orientation``,
  ``hu_window``, ``normalisation`` {kind, mean_hu, std_hu}, ``patch_vox``, ``sw_overlap``,
  ``init`` ("random", the pretraining URI or the registered encoder version it was resolved from,
  ``models:/pgl-encoder/N``), ``pretrain_mode``, ``lineage`` (``dataset``, ``manifest_hash``,
  ``pretraining``: the init's ``uri``, ``mode``, ``steps``, ``datasets`` and, when known, the
  ``run_id`` of the run that produced it), ``split``,
  ``metrics``, the full ``config`` and ``plan``, the training dataset's plan (its reader settings,
  e.g. the plausible spacing range, also apply to prediction; ``{}`` in older contracts: defaults).

Spacings are (x, y, z) mm, patches (z, y, x) voxels. Each class (``common``: the shared base;
``encoder``, ``segmenter``) has one checked read (``read``: kind, version, required fields and
their types; errors name the file and the field), one atomic write (``write``), the intensity
mapping it implies (``norm_from``) and its check against a store dataset's plan (``check_plan``,
``plan_problems``: a :class:`ContractMismatch` naming field, both values and the fix).
:func:`read_contract` is the untyped reader under both (the model registry and the pyfunc wrapper
use it). Loading pretrained weights into a segmenter, and the checks of a pretraining contract
against a fine-tuning config, are :mod:`pgl_core.adapt`.
"""

from __future__ import annotations

from pgl_core.contracts.common import (CONTRACT_FILE, ENCODER_FILE, ENCODER_KIND, FORMAT_VERSION, MODEL_FILE,
                                       PREDICTOR, SEGMENTER_KIND, SPACING_RTOL, SPLIT_FILE, ContractMismatch,
                                       Problem, read_contract, spacing_matches)
from pgl_core.contracts.encoder import PretrainContract, load_encoder_state
from pgl_core.contracts.segmenter import SegmenterContract, load_segmenter, read_split

__all__ = [
    "CONTRACT_FILE", "ENCODER_FILE", "ENCODER_KIND", "FORMAT_VERSION", "MODEL_FILE", "PREDICTOR", "SEGMENTER_KIND",
    "SPACING_RTOL", "SPLIT_FILE", "ContractMismatch", "PretrainContract", "Problem", "SegmenterContract",
    "load_encoder_state", "load_segmenter", "read_contract", "read_split", "spacing_matches",
]
