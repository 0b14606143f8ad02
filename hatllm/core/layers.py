"""Layer types and schedules: which mask (`masks`) each decoder layer uses.

A schedule is one layer type per layer, stored in a checkpoint's config as ``hat_layer_types``. Each type
also has an integer code: the one definition the C++ kernel is compiled with (`model_patch.kernels`).
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence


class LayerType(str, Enum):
    IN = "IN"
    OR = "OR"
    CR = "CR"

    @property
    def code(self) -> int:
        """The type's integer in the C++ kernel (compiled in as HAT_LAYER_<name>)."""
        return LAYER_CODES[self]


LAYER_CODES = {LayerType.IN: 0, LayerType.OR: 1, LayerType.CR: 2}


def hat_schedule(num_layers: int, num_in: int | None = None, num_cr: int | None = None) -> list[str]:
    """IN for the shallow third, CR for the deep third, OR between (counts overridable)."""
    num_in = num_layers // 3 if num_in is None else num_in
    num_cr = num_layers // 3 if num_cr is None else num_cr
    if num_in < 0 or num_cr < 0 or num_in + num_cr > num_layers:
        raise ValueError(f"cannot place {num_in} IN + {num_cr} CR layers in {num_layers} layers")
    return ["IN"] * num_in + ["OR"] * (num_layers - num_in - num_cr) + ["CR"] * num_cr


def parse_schedule(spec: str | Sequence[str], num_layers: int) -> list[str]:
    """'hat', 'causal', 'hat:IN,CR' (counts, e.g. 'hat:2,1'), or an explicit list / comma string."""
    if isinstance(spec, str):
        if spec == "hat":
            return hat_schedule(num_layers)
        if spec == "causal":
            return ["OR"] * num_layers
        if spec.startswith("hat:"):
            num_in, num_cr = (int(x) for x in spec[4:].split(","))
            return hat_schedule(num_layers, num_in, num_cr)
        spec = [s.strip() for s in spec.split(",")]
    return validate_schedule(list(spec), num_layers)


def validate_schedule(schedule: Sequence[str], num_layers: int) -> list[str]:
    if len(schedule) != num_layers:
        raise ValueError(f"hat_layer_types has {len(schedule)} entries for {num_layers} layers")
    bad = [t for t in schedule if t not in LayerType.__members__]
    if bad:
        raise ValueError(f"hat_layer_types has unknown layer types {bad}; allowed: IN, OR, CR")
    return [str(t) for t in schedule]
