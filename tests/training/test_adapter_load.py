"""A written version loads with PeftModel.from_pretrained in a fresh process, holds no pickle,
and serves generations through the AdapterServer cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage.artifacts import PICKLE_SUFFIXES, ArtifactError, verify_version, write_version
from storage.suite import Suite
from workers.training.base_model import ensure_base
from workers.training.data import assemble
from workers.training.generate import AdapterServer
from workers.training.sampler import default_ratios
from workers.training.trainer import train_adapter

REPO = Path(__file__).parent.parent.parent

LOADER = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
model = PeftModel.from_pretrained(model, adapter)
n = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
ids = tok("<task:apology>订单出了问题，帮我给王总写一句道歉<sep>", return_tensors="pt",
          add_special_tokens=False)
out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
print(json.dumps({"lora_params": n, "text": tok.decode(out[0], skip_special_tokens=True)}))
"""


@pytest.fixture()
def version(bundle: Any, suite: Suite, artifacts: Path, train_cfg: Any) -> Path:
    data = assemble(suite, sorted(suite.tasks))
    result = train_adapter(bundle, data, ratios=default_ratios(data.sizes()),
                           config=train_cfg(steps=6, affinity_measurements=0),
                           general_share=0.3)
    info = write_version(
        artifacts, "shared", 1,
        write_files=lambda tmp: result.model.save_pretrained(str(tmp)),
        meta={"tasks": sorted(suite.tasks), "base_model": suite.base_model},
    )
    return info.path


def test_loads_in_a_fresh_process_without_pickle(version: Path, suite: Suite,
                                                 base_root: Path) -> None:
    names = sorted(p.name for p in version.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "adaptd.json"} <= set(names)
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    base = ensure_base(suite, base_root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", LOADER, str(base), str(version)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["lora_params"] > 0 and result["text"]


def test_adapter_server_generates_and_refuses_corrupted(version: Path, suite: Suite,
                                                       artifacts: Path) -> None:
    server = AdapterServer(suite, artifacts, device="cpu", max_cached=1)
    prompts = ["订单出了问题，帮我给王总写一句道歉", "帮我跟小陈说声对不起，报告耽误了"]
    sha = verify_version(version)
    outs = server.generate("apology", prompts, adapter="shared", version=1, path=version,
                           sha256=sha, max_new_tokens=24, seed=0)
    assert len(outs) == 2 and all(outs)
    again = server.generate("apology", prompts, adapter="shared", version=1, path=version,
                            sha256=sha, max_new_tokens=24, seed=0)
    assert again == outs  # same seed, same sampled outputs
    base_outs = server.generate("apology", prompts, max_new_tokens=24, do_sample=False)
    assert len(base_outs) == 2
    weights = version / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ArtifactError):
        server.generate("apology", prompts, adapter="shared", version=2, path=version,
                        sha256=sha)
