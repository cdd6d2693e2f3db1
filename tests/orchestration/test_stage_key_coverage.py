"""Each stage's skip key covers every configuration field the stage reads.

Two halves: (1) the training code of a stage reads the configuration only through the sections
its key hashes (checked on the source: every ``cfg.<section>`` access); (2) changing any single
leaf field of those sections changes the key (every field, generated from the schema)."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from flows.stages.keys import resolve_config
from flows.stages.finetune import FINETUNE_SECTIONS, finetune_key
from flows.stages.pretrain import PRETRAIN_SECTIONS, pretrain_key
from pgl_core.config import PGLConfig, config_to_dict

ROOT = Path(__file__).resolve().parents[2]
FINETUNE_MODULES = ["pgl_core/finetune.py", "pgl_core/seg_data.py", "pgl_core/seg_augment.py"]
PRETRAIN_MODULES = ["pgl_core/pretrain.py", "pgl_core/levels.py"]
SECTIONS = set(PGLConfig.model_fields)


def _sections_read(path: str) -> set[str]:
    """Config sections reached as ``cfg.<section>`` (or ``config.<section>``) in a module."""
    tree = ast.parse((ROOT / path).read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("cfg", "config") and node.attr in SECTIONS}


@pytest.mark.parametrize("modules,sections", [(FINETUNE_MODULES, FINETUNE_SECTIONS),
                                              (PRETRAIN_MODULES, PRETRAIN_SECTIONS)])
def test_stage_code_reads_only_the_sections_its_key_hashes(modules, sections):
    read = set().union(*(_sections_read(m) for m in modules))
    assert read, "no config access found: the check is not looking at the right code"
    assert read <= set(sections), f"{modules} read {sorted(read - set(sections))} outside the stage key"


def _candidates(value, annotation):
    """Values that differ from ``value`` and may validate for ``annotation``."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, (int, float)):
        return [value + 1, value * 0.5 if value else 0.5, value * 2 if value else 0.25, value - 1]
    if isinstance(value, str):
        return [a for a in _literals(annotation) if a != value] + [value + "x"]
    if isinstance(value, list):
        inner = [c for c in _candidates(value[0], None)] if value else []
        return [[c, *value[1:]] for c in inner] + [list(reversed(value))]
    if value is None:
        return [1, 0.5, 2, [1.0, 1.0], "x"]
    return []


def _literals(annotation):
    if annotation is None:
        return []
    args = typing.get_args(annotation)
    return [a for a in args if isinstance(a, str)] + [x for a in args for x in _literals(a)]


def _leaves(section: dict, prefix: tuple = ()):
    for key, value in section.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _mutations(cfg: PGLConfig, sections):
    data = config_to_dict(cfg)
    for section in sections:
        for path, value in _leaves(data[section], (section,)):
            model = PGLConfig
            for part in path[:-1]:
                model = model.model_fields[part].annotation
            annotation = model.model_fields[path[-1]].annotation
            made = None
            for cand in _candidates(value, annotation):
                new = config_to_dict(cfg)
                cur = new
                for part in path[:-1]:
                    cur = cur[part]
                cur[path[-1]] = cand
                try:
                    made = PGLConfig.model_validate(new)
                except Exception:  # noqa: BLE001 - try the next candidate value
                    continue
                if config_to_dict(made) != data:
                    break
                made = None
            yield ".".join(path), made


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_changing_any_field_a_stage_reads_changes_its_key(stage):
    cfg = resolve_config("tiny")
    sections = PRETRAIN_SECTIONS if stage == "pretrain" else FINETUNE_SECTIONS

    def key(c):
        if stage == "pretrain":
            return pretrain_key(c, {"ds": "m"})
        return finetune_key(c, {"ds": "m"}, "init", None, True, "test")

    base = key(cfg)
    untested, same = [], []
    for name, changed in _mutations(cfg, sections):
        if changed is None:
            untested.append(name)
        elif key(changed) == base:
            same.append(name)
    assert not same, f"{stage} key ignores {same}"
    assert not untested, f"no valid changed value found for {untested}"
    assert len(list(_mutations(cfg, sections))) > 20
