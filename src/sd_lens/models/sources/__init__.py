"""Where models come from: the table of model sources (`SOURCES`) and the source a name belongs to.

Each source is one module with two functions: ``claims(name)``, whether a name is one of its models,
and ``locate(name)``, the local Hugging Face directory of that model and the label sd_lens reports
for it. `load_model` asks the sources in the table's order and boots the directory of the first
that claims the name (like SAELens's ``NAMED_PRETRAINED_SAE_LOADERS``, a table of loaders): a new
source is one module and one entry here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sd_lens.models.sources import bundled, directory, gguf_file, hub


@dataclass(frozen=True)
class ModelSource:
    """One place models come from: which names are its models, and where each one's directory is."""

    #: whether a name (a string or a path) is one of this source's models
    claims: Callable[[str | os.PathLike[str]], bool]
    #: ``(local Hugging Face model directory, label)`` of one of its models (converting or downloading it)
    locate: Callable[[str | os.PathLike[str]], tuple[Path, str]]


#: every model source by kind, in the order `source_of` asks them: the first that claims a name loads it
SOURCES: dict[str, ModelSource] = {
    "bundled": ModelSource(bundled.claims, bundled.locate),  # a built-in name
    "gguf": ModelSource(gguf_file.claims, gguf_file.locate),  # a .gguf file
    "directory": ModelSource(directory.claims, directory.locate),  # a local model directory
    "hub": ModelSource(hub.claims, hub.locate),  # a Hugging Face model id
}


def source_of(name: str | os.PathLike[str]) -> str | None:
    """The kind (a key of `SOURCES`) of the first source that claims ``name``, or None."""
    return next((kind for kind, source in SOURCES.items() if source.claims(name)), None)
