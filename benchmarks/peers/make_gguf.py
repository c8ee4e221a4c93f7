"""Write a random-weight GGUF with MMfreeLM-370M's matrix sizes, for timing llama.cpp's decode (llama-bench).

    PYTHONPATH=$LLAMA_CPP_DIR/gguf-py python benchmarks/peers/make_gguf.py OUT.gguf [--type tq2_0|tq1_0]

A llama-architecture model whose layers hold exactly the matrices of an MMfreeLM-370M layer: four 1024 x 1024
projections (llama's q, k, v, o stand in for the MLGRU's f, i, g, o), gate and up 2816 x 1024, down
1024 x 2816, and a 32000 x 1024 output head, all with random ternary weights in the chosen type; a float16
embedding table and a placeholder vocabulary. Only the sizes matter for a speed test, so each distinct shape
is quantized once and its bytes are written for every layer. Uses the ``gguf`` package shipped in the
llama.cpp tree (not a minimmf dependency).
"""
import argparse
import sys

import numpy as np

H, L, I_FFN, V, HEADS = 1024, 24, 2816, 32000, 8


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--type", default="tq2_0", choices=["tq2_0", "tq1_0"])
    args = ap.parse_args(argv)
    try:
        import gguf
        from gguf import GGMLQuantizationType as T
        from gguf.quants import quantize
    except ImportError:
        sys.exit("make_gguf.py needs llama.cpp's gguf package: PYTHONPATH=$LLAMA_CPP_DIR/gguf-py")
    qtype = {"tq2_0": T.TQ2_0, "tq1_0": T.TQ1_0}[args.type]
    rng = np.random.default_rng(0)
    codes = {}

    def ternary(out_f, in_f):  # (out_f, in_f) quantized bytes, made once per shape
        if (out_f, in_f) not in codes:
            w = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.float32)
            codes[out_f, in_f] = quantize(w, qtype)
        return codes[out_f, in_f]

    wr = gguf.GGUFWriter(args.out, "llama")
    wr.add_context_length(2048)
    wr.add_embedding_length(H)
    wr.add_block_count(L)
    wr.add_feed_forward_length(I_FFN)
    wr.add_head_count(HEADS)
    wr.add_head_count_kv(HEADS)
    wr.add_rope_dimension_count(H // HEADS)
    wr.add_layer_norm_rms_eps(1e-6)
    wr.add_vocab_size(V)
    wr.add_file_type(37 if args.type == "tq2_0" else 36)  # LLAMA_FTYPE_MOSTLY_TQ2_0 / TQ1_0 (llama.h)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, V)])
    wr.add_token_scores([0.0] * V)
    wr.add_token_types([2, 3, 3] + [1] * (V - 3))
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_tensor("token_embd.weight", (rng.standard_normal((V, H)) * 0.02).astype(np.float16))
    wr.add_tensor("output_norm.weight", np.ones(H, np.float32))
    wr.add_tensor("output.weight", ternary(V, H), raw_dtype=qtype)
    for layer in range(L):
        p = f"blk.{layer}."
        wr.add_tensor(p + "attn_norm.weight", np.ones(H, np.float32))
        wr.add_tensor(p + "ffn_norm.weight", np.ones(H, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            wr.add_tensor(p + name + ".weight", ternary(H, H), raw_dtype=qtype)
        wr.add_tensor(p + "ffn_gate.weight", ternary(I_FFN, H), raw_dtype=qtype)
        wr.add_tensor(p + "ffn_up.weight", ternary(I_FFN, H), raw_dtype=qtype)
        wr.add_tensor(p + "ffn_down.weight", ternary(H, I_FFN), raw_dtype=qtype)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    print(args.out)


if __name__ == "__main__":
    main()
