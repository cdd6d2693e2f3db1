"""The fine-tuning section of the configuration: everything a fine-tune reads lives here, so the
fine-tune stage's key (``intensity`` + ``model`` + ``finetune``) covers every field that changes
its result. Nothing is borrowed from the pretraining sections (``views``, ``optim``, ``train``).

Defaults follow nnU-Net's recipe where the paper is silent (SGD Nesterov momentum 0.99, weight
decay 3e-5, gradient clip 12, foreground oversampling 1/3, sliding-window overlap 0.5) and what
was measured on the phantoms (docs/study.md): no left-right flip (a flip turns kidney_left into
kidney_right), mild intensity augmentation expressed in HU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pgl_core.config_base import Section, Triple


class FinetuneAugConfig(Section):
    """Fine-tuning augmentation, applied on the training device to HU patches before normalisation.

    Spatial: per-axis flips (array axes z, y, x; x is the patient's left-right in the canonical
    LPS store), optional in-plane rotation and isotropic scaling (image trilinear, label nearest).
    Intensity, in HU so that its strength is independent of the normalisation: additive Gaussian
    noise, Gaussian blur, a brightness shift and a contrast factor about ``contrast_centre_hu``."""

    flip_p: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="Flip probability per array axis (z, y, x). x flips left-right: "
        "label pairs named *left*/*right* are swapped with it when swap_lateral_labels is on.")
    swap_lateral_labels: bool = Field(
        True, description="On a left-right (x) flip, swap label values whose names differ only by "
        "left/right (kidney_left <-> kidney_right), so that the labels stay anatomically true.")
    rotate_p: float = Field(0.0, ge=0, le=1, description="Probability of an in-plane (H, W) rotation.")
    rotate_deg: float = Field(15.0, ge=0, le=180, description="In-plane rotation angle drawn from U(-this, this).")
    scale_p: float = Field(0.0, ge=0, le=1, description="Probability of an isotropic zoom.")
    scale_range: tuple[float, float] = Field((0.85, 1.15), description="Zoom factor range.")
    noise_p: float = Field(0.15, ge=0, le=1, description="Gaussian noise probability.")
    noise_std_hu: tuple[float, float] = Field((0.0, 15.0), description="Noise std range in HU.")
    blur_p: float = Field(0.1, ge=0, le=1, description="Gaussian blur probability.")
    blur_sigma: tuple[float, float] = Field((0.5, 1.0), description="Blur sigma range in voxels.")
    brightness_p: float = Field(0.15, ge=0, le=1, description="Brightness shift probability.")
    brightness_hu: float = Field(15.0, ge=0, description="Additive shift drawn from U(-this, this) HU.")
    contrast_p: float = Field(0.15, ge=0, le=1, description="Contrast factor probability.")
    contrast_range: tuple[float, float] = Field((0.9, 1.1), description="Contrast factor range.")
    contrast_centre_hu: float = Field(40.0, description="HU value the contrast factor keeps fixed (soft tissue).")


class FinetuneConfig(Section):
    """Supervised fine-tuning of a segmentation U-Net (its own optimiser, schedule and augmentation)."""

    steps: int = Field(1000, ge=1, description="Optimisation steps.")
    batch_size: int = Field(2, ge=1, description="Global batch.")
    patch_vox: Triple = Field((48, 160, 160), description="Training patch (D, H, W).")
    lr: float = Field(1e-2, gt=0, description="Peak learning rate.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Optimiser.")
    momentum: float = Field(0.99, ge=0, lt=1, description="SGD (Nesterov) momentum (nnU-Net: 0.99).")
    weight_decay: float = Field(3e-5, ge=0, description="Weight decay (not on biases and norms).")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of the peak.")
    grad_clip: float = Field(12.0, ge=0, description="Max global grad norm (0 disables).")
    labelled: float | None = Field(
        None, gt=0, description="Labelled training cases used: a count (>= 1), a fraction (< 1), None = all."
    )
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of labelled cases for validation.")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="Fraction of labelled cases held out for test.")
    foreground_p: float = Field(0.33, ge=0, le=1, description="Probability a patch is centred on foreground "
                                "(nnU-Net: 1/3).")
    seed: int = Field(0, description="Seed for weights and sampling (and the split unless split_seed is set).")
    split_seed: int | None = Field(
        None, description="Seed of the train/val/test split and label budget; None = `seed`. Fix it to "
        "compare initialisations over seeds on the same cases."
    )
    eval_every: int = Field(100, ge=1, description="Steps between validation passes (the best one is kept).")
    early_eval_step: int | None = Field(
        None, ge=1, description="Also keep the weights of this step as <output>/model-early/ (the study's "
        "early evaluation, where initialisation matters most); None = none.")
    sw_overlap: float = Field(0.5, ge=0, lt=1, description="Sliding-window overlap at evaluation.")
    nsd_tolerance_mm: float = Field(2.0, gt=0, description="Normalised surface Dice tolerance in mm.")
    aug: FinetuneAugConfig = Field(default_factory=FinetuneAugConfig)
    amp: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto = bf16 on CUDA, fp32 on CPU.")
    tf32: bool = Field(True, description="Allow TF32 matmuls on CUDA.")
    loader_workers: int = Field(4, ge=0, description="Data-loader worker processes per rank.")
    crops_per_volume: int = Field(2, ge=1, description="Patches drawn per case visit.")
    log_every: int = Field(10, ge=1, description="Steps between metric records.")
    checkpoint_every_steps: int = Field(500, ge=1, description="Checkpoint interval in steps.")
    checkpoint_every_minutes: float = Field(30.0, gt=0, description="Checkpoint interval in minutes.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (older are deleted).")
    max_consecutive_nonfinite: int = Field(
        10, ge=1, description="Abort after this many consecutive steps with a non-finite loss.")
