"""A local Hugging Face model directory (``config.json``, weights, tokenizer) as a model, read where it is.

Nothing is converted or copied: the directory itself is what `load_model` boots, labelled by its name.
"""

from __future__ import annotations

import os
from pathlib import Path


def claims(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is an existing directory with a ``config.json``."""
    path = Path(str(name)).expanduser()
    return path.is_dir() and (path / "config.json").is_file()


def locate(name: str | os.PathLike[str]) -> tuple[Path, str]:
    """The directory ``name`` itself, labelled by its name."""
    path = Path(str(name)).expanduser()
    return path, path.name
