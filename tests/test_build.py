"""The build pipeline: the parity gate, skipping unchanged builds, and what an archive holds."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

import serving.build
from models import Tolerance
from serving.build import ParityError, build, check_parity


def linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(16, 10).eval()


def test_parity_passes_for_an_identical_export():
    model = linear(0)
    exported = torch.jit.freeze(torch.jit.trace(model, torch.randn(2, 16)).eval())
    result = check_parity("m", model, exported, [(torch.randn(32, 16),)],
                          Tolerance(max_abs_diff=1e-5, min_top1_agreement=1.0))
    assert result["top1_agreement"] == 1.0 and result["max_abs_diff"] <= 1e-5


def test_parity_fails_past_the_tolerance():
    drifted = linear(0)
    with torch.no_grad():
        drifted.weight.add_(1e-2)
    with pytest.raises(ParityError, match="max \\|diff\\|"):
        check_parity("m", linear(0), drifted, [(torch.randn(32, 16),)], Tolerance(max_abs_diff=1e-4))


def test_parity_fails_on_top1_disagreement():
    with pytest.raises(ParityError, match="top-1 agreement"):
        check_parity("m", linear(0), linear(1), [(torch.randn(64, 16),)],
                     Tolerance(max_abs_diff=100.0, min_top1_agreement=0.99))


def test_an_unchanged_build_is_skipped_and_a_changed_one_rebuilds(tmp_path, monkeypatch):
    store, work = tmp_path / "store", tmp_path / "work"
    first = build("digits", model_store=store, work_root=work)
    mar = store / "digits.mar"
    built_at = mar.stat().st_mtime_ns
    assert first["evaluation"]["held_out_accuracy"] >= 0.95

    again = build("digits", model_store=store, work_root=work)
    assert mar.stat().st_mtime_ns == built_at and again == first

    # An input file of the build changes. The file list is widened here (instead of editing a file
    # of the repository under test) with a scratch file that stands for any source file.
    scratch = tmp_path / "scratch.py"
    scratch.write_text("A = 1\n")
    files = serving.build.source_files
    monkeypatch.setattr(serving.build, "source_files", lambda spec: files(spec) + [scratch])
    build("digits", model_store=store, work_root=work)
    rebuilt_at = mar.stat().st_mtime_ns
    assert rebuilt_at != built_at
    build("digits", model_store=store, work_root=work)
    assert mar.stat().st_mtime_ns == rebuilt_at
    scratch.write_text("A = 2\n")
    build("digits", model_store=store, work_root=work)
    assert mar.stat().st_mtime_ns != rebuilt_at


@pytest.mark.parametrize("name, files", [
    ("efficientnet_lite0", {"labels.txt"}),
    ("minilm", {"tokenizer.json"}),
    ("digits", set()),
])
def test_an_archive_holds_everything_its_handler_needs(build_info, name, files):
    with zipfile.ZipFile(f"model_store/{name}.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        info = json.loads(mar.read("build-info.json"))
    handler = manifest["model"]["handler"]
    assert {"model.pt", "model-config.yaml", "build-info.json", handler, "handlers/base.py",
            "handlers/__init__.py", *files} <= names
    assert info["target"] == "torchscript" and info["torch"] == torch.__version__
    assert info["parity"]["max_abs_diff"] <= info["parity"]["tolerance_max_abs_diff"]
    assert info["inputs_sha256"] == build_info[name]["inputs_sha256"]
