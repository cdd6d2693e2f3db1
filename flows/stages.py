"""The stage flows in one place: ``preprocess``, ``pretrain``, ``finetune``, ``evaluate``.

Each lives in its own module (``flows/preprocess.py``, ``flows/stage_pretrain.py``,
``flows/stage_finetune.py``); shared machinery (stage keys, ``stage.json`` markers, launching,
metrics forwarding) is in ``flows/stage_common.py``.
"""

from flows.preprocess import preprocess_flow
from flows.stage_finetune import evaluate_flow, finetune_flow
from flows.stage_pretrain import pretrain_flow

STAGE_FLOWS = {"preprocess": preprocess_flow, "pretrain": pretrain_flow, "finetune": finetune_flow,
               "evaluate": evaluate_flow}

__all__ = ["STAGE_FLOWS", "evaluate_flow", "finetune_flow", "preprocess_flow", "pretrain_flow"]
