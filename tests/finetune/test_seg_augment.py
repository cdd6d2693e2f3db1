"""Fine-tuning augmentation: flips that keep lateralised labels true, spatial ops that move image
and label together, intensity changes in HU that never touch the label."""

import torch

from pgl_core.finetune_config import FinetuneAugConfig
from pgl_core.seg_augment import apply_params, augment_segmentation, draw_params, lateral_swap_table

NAMES = {0: "background", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "Adrenal gland L",
         5: "Adrenal gland R", 6: "left_lung", 7: "liver"}
OFF = dict(noise_p=0.0, blur_p=0.0, brightness_p=0.0, contrast_p=0.0)


def test_swap_table_pairs_left_and_right_by_name():
    table = lateral_swap_table(NAMES).tolist()
    assert table == [0, 1, 3, 2, 5, 4, 6, 7]  # left_lung has no right twin: stays


def _lateral_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A patch whose x < 8 half holds kidney_right (2) and x >= 8 half kidney_left (3): in LPS, +x is
    the patient's left, so the label is anatomically true."""
    label = torch.zeros((1, 4, 6, 16), dtype=torch.long)
    label[..., 2:6] = 2
    label[..., 10:14] = 3
    return label[:, None].float() * 10.0, label


def test_left_right_flip_swaps_lateral_labels():
    image, label = _lateral_case()
    params = draw_params(FinetuneAugConfig(flip_p=(0.0, 0.0, 1.0), **OFF), 1, torch.Generator().manual_seed(0))
    out_image, out_label = apply_params(image, label, params, lateral_swap_table(NAMES))
    assert torch.equal(out_image, image.flip(-1))  # the image is mirrored
    # after mirroring, the structure on the x >= 8 side (patient's left) is called kidney_left again
    assert (out_label[..., 10:14] == 3).all() and (out_label[..., 2:6] == 2).all()
    _, unswapped = apply_params(image, label, params, None)
    assert (unswapped[..., 10:14] == 2).all()  # without the swap the label would lie


def test_default_recipe_never_flips_left_right():
    aug = FinetuneAugConfig()
    params = draw_params(aug, 256, torch.Generator().manual_seed(1))
    assert not params["flip"].any()


def test_rotation_and_zoom_move_image_and_label_together():
    label = torch.zeros((2, 4, 24, 24), dtype=torch.long)
    label[:, :, 4:10, 6:18] = 1
    image = label[:, None].float() * 100.0
    aug = FinetuneAugConfig(rotate_p=1.0, rotate_deg=40.0, scale_p=1.0, scale_range=(0.8, 1.2), **OFF)
    out_image, out_label = augment_segmentation(image, label, aug, torch.Generator().manual_seed(3))
    assert not torch.equal(out_label, label)
    inside = out_label == 1
    assert inside.any()
    # label voxels sit on bright image voxels (nearest vs linear differ only at the rim)
    assert (out_image[:, 0][inside] > 50).float().mean() > 0.9
    assert (out_image[:, 0][~inside] < 50).float().mean() > 0.95


def test_intensity_is_in_hu_and_leaves_labels():
    image = torch.full((64, 1, 4, 8, 8), 40.0)
    label = torch.ones((64, 4, 8, 8), dtype=torch.long)
    aug = FinetuneAugConfig(noise_p=0.0, blur_p=0.0, brightness_p=1.0, brightness_hu=15.0, contrast_p=0.0)
    out, out_label = augment_segmentation(image, label, aug, torch.Generator().manual_seed(4))
    shift = out.flatten(1)[:, 0] - 40.0
    assert torch.equal(out_label, label)
    assert shift.abs().max() <= 15.0 + 1e-4 and shift.abs().max() > 5.0
    noisy, _ = augment_segmentation(image, label, FinetuneAugConfig(noise_p=1.0, noise_std_hu=(10.0, 10.0),
                                                                     blur_p=0.0, brightness_p=0.0, contrast_p=0.0),
                                    torch.Generator().manual_seed(5))
    assert abs(float(noisy.std()) - 10.0) < 0.5  # std in HU, whatever the normalisation later
