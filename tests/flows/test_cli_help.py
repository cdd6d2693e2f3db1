"""The README and the CLI agree: every command of the README's table has --help, and every flag
the README shows for it exists; defaults and choices are part of the help; ``pgl --version``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.cli import build_parser, main

README = Path(__file__).resolve().parents[2] / "README.md"


def _documented() -> dict[str, set[str]]:
    """command -> flags, from the README's command table and its ``pgl ...`` code lines."""
    out: dict[str, set[str]] = {}
    text = README.read_text()
    for line in text.splitlines():
        for usage in re.findall(r"`(pgl [a-z]+[^`]*)`", line):
            command = usage.split()[1]
            out.setdefault(command, set()).update(re.findall(r"(--[a-z][a-z0-9-]*)", usage))
    return out


def _parsers() -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return dict(sub.choices)


def test_every_documented_command_and_flag_exists():
    parsers = _parsers()
    documented = _documented()
    assert {"demo", "phantoms", "preprocess", "pretrain", "finetune", "evaluate", "predict", "pipeline",
            "serve", "study"} <= set(documented)
    missing = []
    for command, flags in documented.items():
        assert command in parsers, f"README shows `pgl {command}`, which the CLI does not have"
        known = {opt for action in parsers[command]._actions for opt in action.option_strings}
        missing += [f"pgl {command} {flag}" for flag in sorted(flags - known)]
    assert not missing, "README documents flags the CLI rejects: " + ", ".join(missing)


@pytest.mark.parametrize("command", sorted(_documented()))
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: pgl {command}" in capsys.readouterr().out


def test_defaults_choices_and_version_are_shown(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{cpu,cuda,auto}" in text and "{paper,tiny}" in text and "(default: ['pgl'])" in text
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--store", "s", "--dataset", "d", "--output", "o", "--device", "gpu"])
    assert info.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and re.match(r"pgl \d+\.\d+", capsys.readouterr().out)


def test_phantoms_prints_a_table_and_json_on_request(tmp_path, capsys):
    import json

    assert main(["phantoms", "--out", str(tmp_path), "--kinds", "spleen,pool", "--cases", "1",
                 "--shape", "8,16,16"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("PhantomSpleen") and "1 case(s) 8x16x16" in table[0] and "spleen" in table[0]
    assert "unlabelled" in table[1]
    assert main(["phantoms", "--out", str(tmp_path / "j"), "--kinds", "spleen", "--cases", "1", "--shape", "8,16,16",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n_cases"] == 1
