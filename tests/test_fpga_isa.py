"""fpga_model.isa: 64-bit words <-> instructions <-> assembly text, and clear errors for bad programs."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fpga_model.isa import (ADDR_MASK, EXTENSIONS, OPS, ISAError, Instruction, assemble, assemble_one, decode,
                            disassemble, encode, to_words)


@st.composite
def instructions(draw):
    """Any valid instruction: a mnemonic, registers 0..7, an address, the flags it allows."""
    name = draw(st.sampled_from(sorted(OPS)))
    syntax = OPS[name].syntax
    reg = st.integers(0, 7)
    f = {"vy": 0, "va": 0, "vb": 0, "ls": 0, "addr": 0}
    for c in syntax:
        if c in "Yy":
            f["vy"] = draw(reg)
        elif c in "Aa":
            f["va"] = draw(reg)
        elif c in "Bb":
            f["vb"] = draw(reg)
        elif c == "M":
            f["addr"] = draw(st.integers(0, ADDR_MASK))
        elif c == "N":
            f["addr"] = draw(st.integers(0, 4096))
        elif c == "X":
            f["va"] = f["vy"] = draw(reg)
    if name == "tmatmul":
        f["vb"], f["ls"] = draw(reg), draw(st.integers(0, 3))
    if name == "amax":
        f["ls"] = draw(st.integers(0, 1))
    return Instruction(name, **f)


@given(instructions())
def test_word_round_trip(ins):
    """decode(encode(i)) == i and encode(decode(w)) == w: the 64-bit word loses nothing."""
    w = encode(ins)
    assert 0 <= w < 1 << 64
    assert decode(w) == ins
    assert encode(decode(w)) == w


@given(st.lists(instructions(), min_size=1, max_size=20))
def test_text_round_trip(program):
    """assemble(disassemble(p)) == p, for programs given as instructions or as words."""
    text = disassemble(program)
    assert assemble(text) == program
    assert assemble(disassemble(to_words(program))) == program


def test_field_layout_matches_the_2024_rtl():
    """fu[3] | op[3] | v_a[3] | v_b[3] | v_y[3] | ls[2] | address: 2024 codes for fu, op and ls."""
    w = encode(assemble_one("sub v3, v1, v2"))
    assert w >> 61 == 2 and (w >> 58) & 7 == 1                       # ROWWISE_OPERATION, SUB
    assert ((w >> 55) & 7, (w >> 52) & 7, (w >> 49) & 7) == (1, 2, 3)
    w = encode(assemble_one("sv v5, 0x1234"))
    assert w >> 61 == 1 and (w >> 47) & 3 == 1 and (w >> 55) & 7 == 5 and w & ADDR_MASK == 0x1234
    assert encode(assemble_one("tmatmul v1, v0, 0x40")) >> 61 == 3
    assert encode(assemble_one("norm v4")) >> 61 == 4


def test_extensions_are_marked_and_2024_instructions_are_not():
    """The ten 2024 instructions are not extensions; silu, quant, scalar ops and tmatmul flags are."""
    for n in ("ldv", "sv", "add", "sub", "mul", "div", "exp", "sig", "norm", "tmatmul"):
        assert not OPS[n].extension
        assert n not in EXTENSIONS
    for n in ("silu", "mulsv", "quant", "sqacc", "rstd", "amax", "smul", "qscale", "lds", "sts"):
        assert n in EXTENSIONS
    assert not assemble_one("tmatmul v1, v0, 0x40").is_extension
    assert assemble_one("tmatmul v1, v0, 0x40, s2, acc").is_extension


@pytest.mark.parametrize("line, message", [
    ("frob v1, v2", "unknown instruction"),
    ("add v1, v2, v8", "out of range"),
    ("add v1, v2", "takes operands"),
    ("ldv v1, banana", "expected a number"),
    ("mulsv v1, v2, v3", "scalar register"),
    ("tmatmul v1, v0, 0x40, s1, fast", "flags"),
])
def test_bad_assembly_gives_a_clear_error(line, message):
    """Unknown mnemonics, registers out of range, missing or malformed operands name the problem."""
    with pytest.raises(ISAError, match=message):
        assemble(line)


def test_bad_words_give_a_clear_error():
    """Unknown opcodes and non-zero unused fields are rejected by the decoder."""
    with pytest.raises(ISAError, match="unknown opcode"):
        decode(7 << 61)
    with pytest.raises(ISAError, match="unknown opcode"):
        decode((3 << 61) | (5 << 58))                                # tmatmul with op 5
    with pytest.raises(ISAError, match="unused"):
        decode(encode(assemble_one("ldv v1, 0x40")) | (3 << 52))    # ldv with v_b set
    with pytest.raises(ISAError, match="out of range"):
        encode(Instruction("add", vy=9))
