"""On a GPU: a user's models built for CUDA (every target x fp32/fp16/bf16 behind the parity gates)
and answered by their real handlers on the GPU, in-process. Where torch sees no CUDA device (CI,
these 2-core VMs) it is skipped and says so; the device tool runs it where one is."""

from __future__ import annotations

import pytest
import torch

import models
from serving.build import scaffold
from serving.build.pipeline import build
from serving.run.inprocess import LoadedModel
from tests import user_models



@pytest.mark.parametrize("name, make, file", [
    ("gpu_cnn", user_models.save_exported, "cnn.pt2"),
    ("gpu_bert", user_models.save_tiny_bert_classifier, "bert"),
])
def test_a_user_model_built_for_cuda_answers_on_the_gpu(cuda_device, tmp_path, name, make, file):
    folder, _ = scaffold.create(name, make(tmp_path / file), models_dir=tmp_path / "models")
    # Not inductor: loading an AOTInductor CUDA package killed the process (segmentation fault)
    # with torch 2.11 on the lent H200, which no gate can answer (left open in the notes).
    model_yaml = folder / "model.yaml"
    model_yaml.write_text(model_yaml.read_text() + "build: {targets: [eager, torchscript]}\n")
    spec = models.ModelSpec.from_folder(folder)
    info = build(name, model_store=tmp_path / "store", work_root=tmp_path / "work",
                 device="cuda", spec=spec)
    print(f"\n{name} on {torch.cuda.get_device_name()}: eager {info['eager_batch_ms']} ms per "
          f"batch of {info['timing_batch']}")
    for c in info["candidates"]:
        print(f"  {c['target']}/{c['precision']}: {c['status']} "
              f"{c.get('batch_ms', '')} ms {c.get('speedup', '')}x {c.get('reason', '')[:120]}")
    assert info["device"] == "cuda"
    assert {c["precision"] for c in info["candidates"]} == {"fp32", "fp16", "bf16"}

    model = LoadedModel(name, tmp_path / "serve", model_store=tmp_path / "store", gpu=0)
    assert model.handler.device.type == "cuda", model.handler.device
    body = (folder / spec.example_request[0]).read_bytes()
    answers = model.handle([(body, spec.example_request[1])] * model.batch_size +
                           [(b"{not json", "application/json")])
    assert [a.status for a in answers] == [200] * model.batch_size + [400]
    assert spec.answer_field in answers[0].body
