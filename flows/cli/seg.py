"""``pgl finetune``, ``pgl evaluate`` and ``pgl predict``: the segmentation side of the command line.
``finetune`` and ``evaluate`` run their stages' flows (key, skip, MLflow run, registration);
``predict`` applies a model to scans (one file, or folders of them)."""

from __future__ import annotations

import argparse

import json
import sys
from pathlib import Path

from flows.cli import (UsageError, add_config_args, add_device_args, add_stage_args, add_store_args, model_arg,
                       run_training_stage, uri_arg)
from pgl_core.exits import EXIT_OK, EXIT_PARTIAL


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="Fine-tune a segmentation U-Net on a labelled dataset.",
                       description=cmd_finetune.__doc__)
    add_store_args(p, "Labelled dataset name in the store.")
    p.add_argument("--init", default="random", type=model_arg, help="'random' (default), a pretraining output URI or a "
                   "registered encoder (models:/pgl-encoder@champion).")
    p.add_argument("--output", required=True, type=uri_arg, help="Run output folder or s3:// URI.")
    p.add_argument("--labelled", type=float, help="Labelled training cases: a count >= 1 or a fraction < 1.")
    p.add_argument("--steps", type=int, help="Optimisation steps (sets finetune.steps).")
    add_device_args(p, "Processes (torchrun) on this node (default 1).")
    p.add_argument("--no-eval", dest="evaluate", action="store_false",
                   help="Skip the test-split evaluation after training.")
    add_stage_args(p)
    add_config_args(p, preset=True)
    p.set_defaults(handler=cmd_finetune)

    p = sub.add_parser("evaluate", help="Evaluate a segmenter on a dataset split (Dice, HD95, NSD).",
                       description=cmd_evaluate.__doc__)
    p.add_argument("--model", required=True, type=model_arg, help="Model folder, a pgl finetune output folder "
                   "(its model/ is used), models:/NAME@ALIAS or runs:/RUN/model.")
    add_store_args(p, "Dataset name in the store.")
    p.add_argument("--output", required=True, type=uri_arg, help="Local folder for tables and overlays.")
    p.add_argument("--split", default="test", help="test (default), val, train or all.")
    p.add_argument("--overlays", type=int, default=3, help="Overlay PNGs for the first N cases (default 3).")
    add_device_args(p)
    p.add_argument("--force", action="store_true", help="Evaluate even when model and dataset are unchanged.")
    p.add_argument("--json", action="store_true", help="Print the result as JSON instead of a table.")
    p.add_argument("--workdir", default="pgl-work", help="Folder of the embedded MLflow store and model cache "
                   "(default pgl-work; MLFLOW_TRACKING_URI takes precedence).")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("predict", help="Segment CT files, DICOM series or folders of them.",
                       description=cmd_predict.__doc__)
    p.add_argument("--model", required=True, type=model_arg, help="Model folder, a pgl finetune output folder "
                   "(its model/ is used), models:/NAME@ALIAS or runs:/RUN/model.")
    p.add_argument("--input", required=True, nargs="+", type=uri_arg, metavar="FILE_OR_DIR",
                   help="One or more CT files (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd), DICOM series folders, "
                   "or folders of them (searched like pgl preprocess's input; path or s3://).")
    p.add_argument("--output", required=True, type=uri_arg, metavar="FILE_OR_DIR",
                   help="A label map file (.nii.gz, .nii, .nrrd or .mha) for one input case, or an output folder "
                   "(a name without a file suffix) that gets CASE.nii.gz and its label files per case.")
    p.add_argument("--force", action="store_true", help="Predict again cases whose outputs are complete for this "
                   "model (they are otherwise skipped and reported).")
    p.add_argument("--dicom-seg", action="store_true", help="Also write CASE.seg.dcm, a DICOM SEG referencing the "
                   "source series, for every DICOM input (other inputs get none and are reported).")
    add_device_args(p)
    p.set_defaults(handler=cmd_predict)


def model_dir_of(uri: str) -> str:
    """A checked model directory (a readable segmenter contract and its weights) for a folder or a
    ``models:/`` / ``runs:/`` reference; UsageError naming what is wrong otherwise."""
    from pgl_core.contracts import MODEL_FILE, SegmenterContract
    from storage import blobs
    from storage.uri import join_uri

    from flows.stages.evaluate import model_folder

    try:
        if uri.startswith(("models:/", "runs:/")):
            from flows.tracking.registry import resolve_model

            local = resolve_model(uri)
        else:
            local = model_folder(uri)
        SegmenterContract.read(local)
    except (FileNotFoundError, LookupError, ValueError) as err:
        raise UsageError(f"model {uri} is not a usable segmenter: {err}") from None
    if not blobs.exists(join_uri(local, MODEL_FILE)):
        raise UsageError(f"model {uri} has a contract but no weights ({MODEL_FILE}); copy the whole model "
                         "folder")
    return local


def cmd_finetune(args: argparse.Namespace) -> int:
    """Supervised fine-tuning through the finetune stage (the same key, skip, MLflow run and
    registration as the pipeline and the Prefect UI), from random init, a pretraining output or a
    registered encoder (its preprocessing contract is checked first). Writes checkpoints, split.json
    and the best-on-validation model directory OUTPUT/model, evaluates it on the test split and
    registers it as pgl-seg-DATASET."""
    from flows.stages.finetune import finetune_flow
    from pgl_core.config import load_config

    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides + ([f"finetune.steps={args.steps}"] if args.steps else []),
                      preset=args.preset)  # config errors exit 2 here, before any work
    result = run_training_stage("finetune", lambda: finetune_flow(
        store=args.store, dataset=args.dataset, output=args.output, init=args.init, preset=args.preset,
        config=args.config, overrides=overrides, labelled=args.labelled, steps=args.steps, nproc=args.nproc,
        device=args.device, evaluate=args.evaluate, register_model=args.register, force=args.force,
        max_steps=args.max_steps))
    if isinstance(result, int):
        return result
    if result["status"] == "stopped":
        print(f"fine-tuning stopped after --max-steps {args.max_steps} of {cfg.finetune.steps}; rerun to resume")
        return EXIT_OK
    dice = result.get("mean_dice")
    print(f"fine-tuning {args.dataset}: {result['status']}; test mean Dice "
          f"{'n/a' if dice is None else format(dice, '.4f')}")
    print(f"model: {result['model_dir']}")
    registration = result.get("registration") or {}
    if registration.get("model_uri"):
        print(f"registered: {registration['model_uri']}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Sliding-window prediction of the split's cases, per-case and summary metrics (metrics.csv,
    metrics.json) and overlay PNGs under OUTPUT."""
    from flows.stages.evaluate import evaluate_flow

    if not args.model.startswith(("models:/", "runs:/")):
        model_dir_of(args.model)  # a wrong folder is a usage error, before any work
    try:
        result = evaluate_flow(model=args.model, store=args.store, dataset=args.dataset, output=args.output,
                               split=args.split, overlays=args.overlays, device=args.device, force=args.force)
    except (LookupError, FileNotFoundError) as err:
        raise UsageError(f"model {args.model}: {err}") from err
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return EXIT_OK
    overall = {m: (result.get("overall") or {}).get(m, {}).get("mean") for m in ("dice", "hd95", "nsd")}
    print(f"{args.split} split of {args.dataset} ({result['status']}):")
    print(f"  {'class':<24} {'Dice':>6}")
    for name, dice in (result.get("per_class") or {}).items():
        print(f"  {name:<24} {dice:>6.3f}")
    print("  mean over classes: " + ", ".join(f"{label} {_rounded(overall[m])}" for m, label in
                                              (("dice", "Dice"), ("hd95", "HD95 mm"), ("nsd", "NSD"))))
    print(f"tables: {Path(args.output) / 'metrics.csv'}, {Path(args.output) / 'metrics.json'}")
    return EXIT_OK


def _rounded(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def cmd_predict(args: argparse.Namespace) -> int:
    """Apply a segmenter (with its preprocessing contract) to CT volumes (NIfTI / NRRD / MHA) and
    DICOM series. Each case gets CASE.nii.gz, a label map in its input's geometry, with the model's
    class names and colours beside it as an ITK-SNAP label description file
    (CASE.label_descriptions.txt) and a 3D Slicer colour table (CASE.ctbl); with --dicom-seg, a DICOM
    SEG (CASE.seg.dcm) for DICOM inputs; and a completion record (CASE.prediction.json, written last).
    --output FILE: one case (a file or a folder holding one series), CASE is FILE without its suffix;
    --output FOLDER: every case found in the inputs, as FOLDER/CASE.*, where CASE is a volume's file
    stem or dcm-<hash> for a DICOM series. Complete cases are skipped (--force redoes them); a case
    that fails is reported with its reason, the others are predicted, and the exit status is 1."""
    from storage import blobs
    from storage.writers import WRITABLE_SUFFIXES

    for uri in args.input:
        if not blobs.exists(uri):
            raise UsageError(f"--input {uri} does not exist")
    name = args.output.rstrip("/").rsplit("/", 1)[-1]
    if args.output.lower().endswith(WRITABLE_SUFFIXES):
        if len(args.input) > 1:
            raise UsageError(f"--output {args.output} is one label map, but {len(args.input)} inputs were given: "
                             "name an output folder instead")
        return _predict_one(args)
    if "." in name and not Path(args.output).is_dir():
        raise UsageError(f"--output {args.output}: name a label map file ending with one of "
                         + ", ".join(WRITABLE_SUFFIXES) + ", or an output folder (a name without a file suffix)")
    for uri in args.input:
        if "://" not in uri and Path(uri).is_dir() and Path(args.output).resolve().is_relative_to(Path(uri).resolve()):
            raise UsageError(f"--output {args.output} lies inside --input {uri}: its label maps and SEGs would be "
                             "read as inputs next time; choose an output folder outside the inputs")
    return _predict_folder(args)


def _predict_one(args: argparse.Namespace) -> int:
    """Single-file mode: one case, errors in one line on stderr."""
    from pgl_core.predict_cases import predict_one
    from storage.errors import StorageError

    model_dir = model_dir_of(args.model)
    try:
        summary = predict_one(model_dir, args.input[0], args.output, force=args.force, dicom_seg=args.dicom_seg,
                              device=args.device)
    except StorageError as err:
        print(f"pgl predict: {err}", file=sys.stderr)
        return EXIT_PARTIAL
    if summary.failed:
        _, where, reason = summary.failed[0]
        print(f"pgl predict: {where}: {reason}", file=sys.stderr)
        return EXIT_PARTIAL
    if summary.skipped:
        print(f"skipped {args.output}: already predicted by this model (--force redoes it)")
        return EXIT_OK
    extra = " and a DICOM SEG" if summary.dicom_seg else ""
    print(f"wrote {args.output} with its ITK-SNAP label descriptions and Slicer colour table{extra}")
    if summary.not_dicom:
        print("no DICOM SEG: the input is not a DICOM series")
    return EXIT_OK


def _predict_folder(args: argparse.Namespace) -> int:
    """Folder mode: every case of the inputs, a progress bar, a summary naming each failure."""
    import os

    from tqdm import tqdm

    from pgl_core.predict_cases import gather_cases, predict_cases

    cases, problems, ignored = gather_cases(args.input)
    if not cases and not problems:
        raise UsageError("no CT volume (.nii, .nii.gz, .nrrd, .mha, .mhd) or DICOM series found in "
                         + ", ".join(args.input))
    model_dir = model_dir_of(args.model)
    with tqdm(total=len(cases), desc="predict", unit="case", disable=os.environ.get("PGL_PROGRESS", "1") == "0") as bar:
        def advance(case_id: str, status: str) -> None:
            bar.set_postfix_str(f"{case_id} {status}")
            bar.update(1)

        summary = predict_cases(model_dir, args.input, args.output, force=args.force, dicom_seg=args.dicom_seg,
                                device=args.device, progress=advance, cases=cases)
    summary.failed[:0] = [("(input)", where, why) for where, why in problems]
    summary.ignored += ignored
    for line in summary_lines(summary, args.output):
        print(line)
    return EXIT_OK if summary.ok else EXIT_PARTIAL


def summary_lines(summary, output: str) -> list[str]:
    """What a folder-mode prediction prints: counts, then one line per failure."""
    lines = [f"predict -> {output}: {len(summary.done)} done, {len(summary.skipped)} skipped (already predicted "
             f"by this model; --force redoes them), {len(summary.failed)} failed"]
    if summary.dicom_seg or summary.not_dicom:
        lines.append(f"  DICOM SEG: {len(summary.dicom_seg)} written, none for {len(summary.not_dicom)} "
                     "non-DICOM case(s)")
    lines += [f"  FAILED {case}: {reason} [{where}]" for case, where, reason in summary.failed]
    if summary.ignored:
        lines.append(f"  ignored {len(summary.ignored)} DICOM object(s) without pixel data: "
                     + ", ".join(where for where, _ in summary.ignored[:5]))
    return lines
