"""A temporary Hugging Face hub cache holding a tiny Llama (tests/unit/test_hub.py,
tests/integration/test_hub_cli.py); the fixture ``hf_home`` of tests/conftest.py makes one."""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub.file_download import repo_folder_name

from sd_lens.models.tiny import char_tokenizer, tiny_hf_config

REPO = "tiny-org/tiny-llama"


COMMIT = "0123456789abcdef0123456789abcdef01234567"


SRC = Path(__file__).resolve().parents[1] / "src"


def _write_hub_cache(hub_cache: Path, repo_id: str, *, seed: int = 0) -> Path:
    """A tiny Llama saved in huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/}."""
    from transformers import AutoModelForCausalLM

    repo = hub_cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = repo / "snapshots" / COMMIT
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_hf_config("llama"), attn_implementation="eager")
    hf.save_pretrained(snapshot)
    char_tokenizer().save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot
