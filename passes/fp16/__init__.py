"""fp16 / bf16 conversion that checks itself.

One module per step: :mod:`.blocklist` (what stays fp32), :mod:`.typecheck` (Cast repair and type
checks), :mod:`.verify` (the numeric self-check, emulated on CPU), and :mod:`.convert`, the pass.
"""

from graphopt.passes.fp16.convert import Fp16Options, Fp16Pass, pack_16bit_initializers

__all__ = ["Fp16Options", "Fp16Pass", "pack_16bit_initializers"]
