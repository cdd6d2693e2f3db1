"""Ordinary mistakes end with one or two lines naming the culprit and exit 2, never a traceback;
data failures exit 1 with the per-case summary; the median-spacing default works for S3 inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.cli import main
from phantoms import write_dataset

pytestmark = [pytest.mark.flows]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mistakes")
    write_dataset(str(root), "kits", 3, seed=3, shape_zyx=(24, 32, 32))
    (root / "empty").mkdir()
    (root / "photos").mkdir()
    for i in range(2):
        (root / "photos" / f"p{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    bad = root / "badjson"
    shutil.copytree(root / "PhantomKiTS", bad)
    (bad / "dataset.json").write_text('{"labels": ')
    return root


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("store") / "store")
    assert main(["preprocess", "--input", str(raw / "PhantomKiTS"), "--dataset", "kits", "--store", out,
                 "--target-spacing", "6,6,6"]) == 0
    return out


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def _one_line_usage_error(args: list[str], capsys, *needles: str) -> None:
    code, err = _run(args, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("folder, needles", [
    ("missing", ["missing", "does not exist"]),
    ("empty", ["empty", "no CT volume"]),
    ("photos", ["photos", "p0.jpg", "no CT volume"]),
    ("badjson", ["dataset.json", "not a valid"]),
])
def test_preprocess_input_mistakes(raw, tmp_path, capsys, folder, needles):
    _one_line_usage_error(["preprocess", "--input", str(raw / folder), "--dataset", "d", "--store",
                           str(tmp_path / "s")], capsys, *needles)
    assert not (tmp_path / "s" / "d" / "cases").exists()


@pytest.mark.parametrize("args, needles", [
    (["--dataset", "../x"], ["invalid dataset name", "../x"]),
    (["--dataset", "d", "--store-typo"], []),
])
def test_preprocess_argument_mistakes(raw, tmp_path, capsys, args, needles):
    base = ["preprocess", "--input", str(raw / "PhantomKiTS"), "--store", str(tmp_path / "s")]
    if "--store-typo" in args:
        with pytest.raises(SystemExit) as info:
            main(base + ["--dataset", "d", "--store-typo"])
        assert info.value.code == 2
        return
    _one_line_usage_error(base + args, capsys, *needles)


@pytest.mark.parametrize("uri, needles", [
    ("foo://bucket/x", ["unknown scheme", "foo"]),
    ("htp:/data/x", ["malformed", "htp"]),
])
def test_unknown_and_malformed_schemes_are_refused_and_nothing_is_written(raw, tmp_path, monkeypatch, uri, needles):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["preprocess", "--input", str(raw / "PhantomKiTS"), "--dataset", "d", "--store", uri])
    assert info.value.code == 2
    assert not list(tmp_path.iterdir())  # no ./htp: folder


def test_missing_datasets_and_stores_name_what_the_store_holds(store, tmp_path, capsys):
    _one_line_usage_error(["pretrain", "--store", store, "--datasets", "nope", "--output", str(tmp_path / "o"),
                           "--preset", "tiny", "--workdir", str(tmp_path / "w")], capsys, "'nope'", "kits")
    _one_line_usage_error(["finetune", "--store", str(tmp_path / "nostore"), "--dataset", "kits", "--output",
                           str(tmp_path / "o2"), "--preset", "tiny", "--workdir", str(tmp_path / "w")], capsys,
                          "nostore", "does not exist")
    _one_line_usage_error(["evaluate", "--model", str(tmp_path), "--store", store, "--dataset", "kits", "--output",
                           str(tmp_path / "ev"), "--workdir", str(tmp_path / "w")], capsys, "contract.json")


def test_predict_names_a_broken_model_folder_or_input(store, raw, tmp_path, capsys):
    from pgl_core.contracts import SegmenterContract

    image = str(raw / "PhantomKiTS" / "imagesTr" / "kits_0000.nii.gz")
    model = tmp_path / "model"
    model.mkdir()
    _one_line_usage_error(["predict", "--model", str(model), "--input", image, "--output", str(tmp_path / "o.nii.gz")],
                          capsys, "contract.json")
    (model / "contract.json").write_text('{"kind": ')
    _one_line_usage_error(["predict", "--model", str(model), "--input", image, "--output", str(tmp_path / "o.nii.gz")],
                          capsys, "not valid JSON")
    assert SegmenterContract  # the reader the CLI checks with
    _one_line_usage_error(["predict", "--model", str(model), "--input", str(tmp_path / "none.nii.gz"), "--output",
                           str(tmp_path / "o.nii.gz")], capsys)
    _one_line_usage_error(["predict", "--model", str(model), "--input", image, "--output", str(tmp_path / "o.jpg")],
                          capsys, "o.jpg", ".nii.gz")


def test_files_that_are_not_cases_are_listed_and_odd_names_get_safe_ids(raw, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(raw / "PhantomKiTS" / "imagesTr", folder)
    (folder / "kits_0000.nii.gz").rename(folder / "odd name (1).nii.gz")
    (folder / "notes.txt").write_text("x")
    (folder / ".DS_Store").write_bytes(b"\0")
    code = main(["preprocess", "--input", str(folder), "--dataset", "mixed", "--store", str(tmp_path / "s"),
                 "--target-spacing", "6,6,6"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 done" in out and "ignored 2 file(s)" in out and "notes.txt" in out and ".DS_Store" in out
    manifest = json.loads((tmp_path / "s" / "mixed" / "manifest.json").read_text())
    odd = [c for c in manifest["cases"] if c.startswith("odd_name_")]
    assert len(odd) == 1, sorted(manifest["cases"])


@pytest.mark.s3
def test_s3_input_gets_the_median_spacing_and_a_wrong_bucket_is_one_line(raw, tmp_path, s3_server, s3_env, capsys):
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    for path in sorted((raw / "PhantomKiTS").rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket.removeprefix("s3://"),
                               f"raw/{path.relative_to(raw / 'PhantomKiTS')}")
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    assert main(["preprocess", "--input", str(raw / "PhantomKiTS"), "--dataset", "k", "--store", local]) == 0
    assert main(["preprocess", "--input", f"{bucket}/raw", "--dataset", "k", "--store", remote]) == 0, \
        capsys.readouterr().err
    plans = [json.loads((Path(s) / "k" / "manifest.json").read_text())["plan"]["target_spacing_mm"]
             for s in (local, remote)]
    assert plans[0] == plans[1]
    capsys.readouterr()
    code, err = _run(["preprocess", "--input", str(raw / "PhantomKiTS"), "--dataset", "k", "--store",
                      "s3://no-such-bucket-pgl/store", "--target-spacing", "6,6,6"], capsys)
    assert code in (1, 2) and "Traceback" not in err and len(err.splitlines()) <= 2, err
    assert "no-such-bucket-pgl" in err
