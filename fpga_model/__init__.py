"""fpga_model: a cycle-level simulator of the paper's FPGA token-generation core, running minimmf's model.

    from fpga_model import FPGASim
    sim = FPGASim(model, "rtl2024", number_format="faithful", D=64)   # a trained minimmf model
    logits = sim.step(token)                                          # equals model.step's logits
    print(fpga_model.report.text(sim.last_stats, sim.config))

Modules, in dependency order: isa (instructions, assembler) -> config (the parameter table) -> formats
(Q4.3 and model-faithful arithmetic) -> memory (DDR, stream timing) -> packing (2-bit weights) ->
functional (the reference) -> core (the cycle-level core) -> regalloc, compiler (minimmf -> program) ->
host (tokens) -> report, gantt, programs, figures -> __main__ (CLI). ``fpga_model`` imports ``minimmf``;
never the reverse.
"""
from .config import CONFIGS, CoreConfig, get_config
from .core import Core
from .functional import MachineState, run_functional
from .host import FPGASim
from .isa import Instruction, assemble, decode, disassemble, encode
from .memory import DDR, SimError

__all__ = ["CONFIGS", "Core", "CoreConfig", "DDR", "FPGASim", "Instruction", "MachineState", "SimError",
           "assemble", "decode", "disassemble", "encode", "get_config", "run_functional"]
