"""What sd_lens reports about a loaded model: its label (`model_name`) and the dtype its forward runs in.

Every analysis records these two in its result (the JSON's ``model`` and ``dtype``), whatever the model's
source; the float16 caveat that goes with the dtype is here too (`FLOAT16_WARNING`).
"""

from __future__ import annotations

from typing import Any


def model_name(model: Any) -> str:
    """The label sd_lens reports for a model."""
    return str(getattr(model, "sd_lens_name", None) or getattr(model.cfg, "model_name", "model"))


def model_dtype(model: Any) -> str:
    """The dtype the model's forward runs in (that of its first floating-point weight), e.g. ``"float32"``."""
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "float32"


#: what the float16 warning says (the forward itself runs in the model's dtype)
FLOAT16_WARNING = (
    "the model runs in float16: sd_lens computes its statistics in float32, but the forward's own activations "
    "are float16, whose range ends at 65 504 and whose precision is 3 digits — high norms can move by tens of "
    "percent, overflow to inf (then sd_lens stops with an error), or make a defect appear that float32 does not "
    "have. run_analysis checks its defects against a float32 forward (dtype_check) and says what differs; "
    "forward_dtype='float32' runs the whole analysis in float32 (weights restored afterwards)"
)
