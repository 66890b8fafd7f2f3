"""A `train` worker preloads the modelling module of the configured base's architecture (and
only that one), so that the jobs it forks do not import it each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from storage.suite import BUILTIN_BASES
from tests.training.conftest import REPO
from workers.training.base_model import base_model_type


def test_the_architecture_of_a_base_is_known_without_loading_it(tmp_path: Path) -> None:
    assert {ref: base_model_type(ref) for ref in BUILTIN_BASES} == {
        "builtin:tiny": "llama", "builtin:tiny-qwen2": "qwen2", "builtin:tiny-gemma": "gemma",
        "builtin:tiny-mistral": "mistral", "builtin:tiny-phi3": "phi3",
        "builtin:tiny-gpt2": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert base_model_type(str(tmp_path)) == "qwen3"  # a local directory: its config.json
    assert base_model_type(str(tmp_path / "absent")) is None
    assert base_model_type("nobody/not-in-the-cache") is None  # offline, not cached


def test_preload_imports_the_configured_architecture_only() -> None:
    """In a fresh interpreter, as a worker starts."""
    script = (
        "import json, sys\n"
        "from workers.training.job import preload\n"
        "def loaded():\n"
        "    return {m.split('.')[2] for m in sys.modules if m.startswith('transformers.models.')"
        " and m.endswith('.modeling_' + m.split('.')[2]) and m.split('.')[2] != 'auto'}\n"
        "before = loaded()\n"
        "names = preload('builtin:tiny-phi3')\n"
        "print(json.dumps([sorted(before), sorted(loaded()), names]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert (before, after) == ([], ["phi3"])  # not Llama's nor any other
    assert names[-2:] == ["Phi3Config", "Phi3ForCausalLM"]
