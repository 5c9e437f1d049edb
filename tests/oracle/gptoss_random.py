"""Oracle for gptoss-rs's end-to-end tests: write a random GPT-OSS GGUF of arbitrary dimensions
with gguf-py, and compute its forward pass independently in float64 numpy.

The forward pass follows the reference definition (transformers' GptOssForCausalLM /
openai/gpt-oss): RMSNorm, q/k/v with biases, NEOX RoPE with YaRN (unrounded ramp bounds,
cos/sin scaled by 0.1 ln(factor) + 1), GQA (query head h reads KV head h // (H / H_kv)),
attention sinks in the softmax denominator, sliding window on the layers the pattern marks,
router top-k on raw logits then softmax over the k, SwiGLU with the 7.0 clamps and (up + 1),
expert biases, untied output. Weights are read back through gguf-py's own dequantizers, so the
oracle computes with exactly the numbers stored in the file.

usage: gptoss_random.py OUT_DIR [--seed S] [--config JSON]
writes OUT_DIR/model.gguf and OUT_DIR/reference.safetensors
(ids i32 [T], logits [T, V], layerL.out [T, d], all f32 but ids).
"""
import argparse
import json
import math
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize, dequantize
from safetensors.numpy import save_file

DEFAULT = {
    "layers": 3, "d": 96, "heads": 6, "kv": 2, "head_dim": 24, "experts": 5, "topk": 3,
    "ff": 64, "vocab": 500, "window": 5, "ctx": 256, "theta": 10000.0, "factor": 8.0,
    "orig_ctx": 32, "eps": 1e-5, "tokens": 23, "write_betas": False,
    # "pattern": None -> no key (default period 2); an int -> u32 key; a list -> bool array key
    "pattern": None,
    # weight types of the non-expert matrices
    "types": {"token_embd": "Q8_0", "output": "BF16", "attn_q": "F16", "attn_k": "Q8_0",
              "attn_v": "BF16", "attn_output": "F32"},
}


def store(writer, name, arr, qtype):
    """Quantize `arr` (numpy shape = reversed ggml shape) to `qtype`, add it to the file, and
    return exactly the values the file holds (dequantized by gguf-py), in float64."""
    arr = arr.astype(np.float32)
    if qtype == Q.F32:
        writer.add_tensor(name, arr)
        return arr.astype(np.float64)
    q = quantize(arr, qtype)
    if qtype == Q.F16:
        writer.add_tensor(name, q)
    else:
        writer.add_tensor(name, q, raw_dtype=qtype)
    back = dequantize(q, qtype).reshape(arr.shape)
    return back.astype(np.float64)


def yarn(cfg):
    dim, base, factor, orig = cfg["head_dim"], cfg["theta"], cfg["factor"], cfg["orig_ctx"]
    beta_fast, beta_slow = 32.0, 1.0
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if factor <= 1.0:
        return 1.0 / pos_freqs, 1.0

    def corr(rot):
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(corr(beta_fast), 0.0)
    high = min(corr(beta_slow), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extra_factor = 1.0 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extra_factor) + (1.0 / pos_freqs) * extra_factor
    return inv, 0.1 * math.log(factor) + 1.0


def rope(x, pos, inv, af):
    # x: [T, H, D]; NEOX: first half against second half.
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang) * af, np.sin(ang) * af
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def forward(cfg, swa, embd, out_norm, out, layers, ids):
    """The reference forward pass over `ids` (one prefill); returns the tensors to save."""
    H, KV, D, K, W = cfg["heads"], cfg["kv"], cfg["head_dim"], cfg["topk"], cfg["window"]
    T = len(ids)
    inv, af = yarn(cfg)
    pos = np.arange(T, dtype=np.float64)
    x = embd[ids]
    ref = {"ids": np.asarray(ids).astype(np.int32)}
    n_rep = H // KV
    for il, ly in enumerate(layers):
        h = rms(x, ly["attn_norm"], cfg["eps"])
        q = (h @ ly["wq"].T + ly["bq"]).reshape(T, H, D)
        k = (h @ ly["wk"].T + ly["bk"]).reshape(T, KV, D)
        v = (h @ ly["wv"].T + ly["bv"]).reshape(T, KV, D)
        q, k = rope(q, pos, inv, af), rope(k, pos, inv, af)
        att = np.zeros((T, H, D))
        i = np.arange(T)[:, None]
        j = np.arange(T)[None, :]
        allowed = j <= i
        if swa[il]:
            allowed &= j > i - W
        for hh in range(H):
            kh = hh // n_rep
            s = (q[:, hh, :] @ k[:, kh, :].T) / math.sqrt(D)
            s = np.where(allowed, s, -np.inf)
            s = np.concatenate([s, np.full((T, 1), ly["sinks"][hh])], axis=1)
            s = s - s.max(axis=1, keepdims=True)
            pr = np.exp(s)
            pr = pr / pr.sum(axis=1, keepdims=True)
            att[:, hh, :] = pr[:, :T] @ v[:, kh, :]
        x = x + att.reshape(T, H * D) @ ly["wo"].T + ly["bo"]
        h = rms(x, ly["post_norm"], cfg["eps"])
        logits = h @ ly["wr"].T + ly["br"]
        moe = np.zeros_like(x)
        for t in range(T):
            top = np.argsort(-logits[t], kind="stable")[:K]
            wt = np.exp(logits[t, top] - logits[t, top].max())
            wt = wt / wt.sum()
            for e, we in zip(top, wt):
                g = ly["wg"][e] @ h[t] + ly["bg"][e]
                u = ly["wu"][e] @ h[t] + ly["bu"][e]
                g = np.minimum(g, 7.0)
                u = np.clip(u, -7.0, 7.0)
                act = g / (1 + np.exp(-1.702 * g)) * (u + 1)
                moe[t] += we * (ly["wd"][e] @ act + ly["bd"][e])
        x = x + moe
        ref[f"layer{il}.out"] = x.astype(np.float32)
    ref["logits"] = (rms(x, out_norm, cfg["eps"]) @ out.T).astype(np.float32)
    return ref


def check(gguf_path, ref_path):
    """Self-check of this oracle: run it on an existing GGUF (weights via gguf-py's reader and
    dequantizers) for every sequence of a transformers reference file; print the worst NMSE."""
    from safetensors.numpy import load_file
    r = gguf.GGUFReader(gguf_path)

    def kv(name):
        return r.fields["gpt-oss." + name].contents()

    t = {x.name: dequantize(x.data, x.tensor_type).astype(np.float64).reshape(
        [int(n) for n in reversed(x.shape)]) for x in r.tensors}
    L = kv("block_count")
    cfg = {"heads": kv("attention.head_count"), "kv": kv("attention.head_count_kv"),
           "head_dim": kv("attention.key_length"), "topk": kv("expert_used_count"),
           "window": kv("attention.sliding_window"), "eps": kv("attention.layer_norm_rms_epsilon"),
           "theta": kv("rope.freq_base"), "factor": kv("rope.scaling.factor"),
           "orig_ctx": kv("rope.scaling.original_context_length")}
    names = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "bq": "attn_q.bias",
             "wk": "attn_k.weight", "bk": "attn_k.bias", "wv": "attn_v.weight", "bv": "attn_v.bias",
             "wo": "attn_output.weight", "bo": "attn_output.bias", "sinks": "attn_sinks.weight",
             "post_norm": "post_attention_norm.weight", "wr": "ffn_gate_inp.weight",
             "br": "ffn_gate_inp.bias", "wg": "ffn_gate_exps.weight", "bg": "ffn_gate_exps.bias",
             "wu": "ffn_up_exps.weight", "bu": "ffn_up_exps.bias", "wd": "ffn_down_exps.weight",
             "bd": "ffn_down_exps.bias"}
    layers = [{k: t[f"blk.{il}.{v}"] for k, v in names.items()} for il in range(L)]
    swa = [il % 2 == 0 for il in range(L)]
    refd = load_file(ref_path)
    worst = 0.0
    for key in refd:
        if not key.endswith(".logits"):
            continue
        name = key[: -len(".logits")]
        ids = json.load(open(ref_path.replace(".safetensors", ".json")))["sequences"][name]["ids"]
        got = forward(cfg, swa, t["token_embd.weight"], t["output_norm.weight"], t["output.weight"], layers, np.array(ids))
        want = refd[key]
        nmse = float(((got["logits"] - want) ** 2).sum() / (want ** 2).sum())
        print(f"{name}: nmse {nmse:.3e} max {float(np.abs(got['logits'] - want).max()):.3e}")
        worst = max(worst, nmse)
    print("worst", worst)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--check", nargs=2, metavar=("GGUF", "REFERENCE_SAFETENSORS"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--config", default="{}")
    args = ap.parse_args()
    if args.check:
        return check(*args.check)
    cfg = dict(DEFAULT)
    cfg.update(json.loads(args.config))
    rng = np.random.default_rng(args.seed)
    L, d, H, KV, D = cfg["layers"], cfg["d"], cfg["heads"], cfg["kv"], cfg["head_dim"]
    E, K, F, V, W = cfg["experts"], cfg["topk"], cfg["ff"], cfg["vocab"], cfg["window"]
    T = cfg["tokens"]
    if cfg["pattern"] is None:
        swa = [il % 2 == 0 for il in range(L)]
    elif isinstance(cfg["pattern"], int):
        n = cfg["pattern"]
        swa = [il % n < n - 1 for il in range(L)]
    else:
        swa = [bool(b) for b in cfg["pattern"]]
    ty = {k: Q[v] for k, v in cfg["types"].items()}

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.gguf")
    w = gguf.GGUFWriter(path + ".tmp", "gpt-oss")
    a = "gpt-oss."
    w.add_uint32(a + "block_count", L)
    w.add_uint32(a + "context_length", cfg["ctx"])
    w.add_uint32(a + "embedding_length", d)
    w.add_uint32(a + "feed_forward_length", F)
    w.add_uint32(a + "expert_feed_forward_length", F)
    w.add_uint32(a + "expert_count", E)
    w.add_uint32(a + "expert_used_count", K)
    w.add_uint32(a + "attention.head_count", H)
    w.add_uint32(a + "attention.head_count_kv", KV)
    w.add_uint32(a + "attention.key_length", D)
    w.add_uint32(a + "attention.value_length", D)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", cfg["eps"])
    w.add_uint32(a + "attention.sliding_window", W)
    if isinstance(cfg["pattern"], int):
        w.add_uint32(a + "attention.sliding_window_pattern", cfg["pattern"])
    elif cfg["pattern"] is not None:
        w.add_array(a + "attention.sliding_window_pattern", swa)
    w.add_float32(a + "rope.freq_base", cfg["theta"])
    w.add_string(a + "rope.scaling.type", "yarn")
    w.add_float32(a + "rope.scaling.factor", cfg["factor"])
    w.add_uint32(a + "rope.scaling.original_context_length", cfg["orig_ctx"])
    if cfg["write_betas"]:
        w.add_float32(a + "rope.scaling.yarn_beta_fast", 32.0)
        w.add_float32(a + "rope.scaling.yarn_beta_slow", 1.0)

    def mat(n, k, scale=1.0):
        return rng.standard_normal((n, k)) * scale / math.sqrt(k)

    def vec(n, scale=0.1):
        return rng.standard_normal(n) * scale

    embd = store(w, "token_embd.weight", rng.standard_normal((V, d)), ty["token_embd"])
    out_norm = store(w, "output_norm.weight", 1 + vec(d), Q.F32)
    out = store(w, "output.weight", mat(V, d, 2.0), ty["output"])
    layers = []
    for il in range(L):
        p = f"blk.{il}."
        ly = {
            "attn_norm": store(w, p + "attn_norm.weight", 1 + vec(d), Q.F32),
            "wq": store(w, p + "attn_q.weight", mat(H * D, d), ty["attn_q"]),
            "bq": store(w, p + "attn_q.bias", vec(H * D), Q.F32),
            "wk": store(w, p + "attn_k.weight", mat(KV * D, d), ty["attn_k"]),
            "bk": store(w, p + "attn_k.bias", vec(KV * D), Q.F32),
            "wv": store(w, p + "attn_v.weight", mat(KV * D, d), ty["attn_v"]),
            "bv": store(w, p + "attn_v.bias", vec(KV * D), Q.F32),
            "wo": store(w, p + "attn_output.weight", mat(d, H * D, 0.5), ty["attn_output"]),
            "bo": store(w, p + "attn_output.bias", vec(d), Q.F32),
            "sinks": store(w, p + "attn_sinks.weight", rng.standard_normal(H), Q.F32),
            "post_norm": store(w, p + "post_attention_norm.weight", 1 + vec(d), Q.F32),
            "wr": store(w, p + "ffn_gate_inp.weight", mat(E, d, 2.0), Q.F32),
            "br": store(w, p + "ffn_gate_inp.bias", vec(E, 0.5), Q.F32),
            "wg": store(w, p + "ffn_gate_exps.weight", rng.standard_normal((E, F, d)) * 3 / math.sqrt(d), Q.MXFP4),
            "bg": store(w, p + "ffn_gate_exps.bias", rng.standard_normal((E, F)) * 0.5, Q.F32),
            "wu": store(w, p + "ffn_up_exps.weight", rng.standard_normal((E, F, d)) * 3 / math.sqrt(d), Q.MXFP4),
            "bu": store(w, p + "ffn_up_exps.bias", rng.standard_normal((E, F)) * 0.5, Q.F32),
            "wd": store(w, p + "ffn_down_exps.weight", rng.standard_normal((E, d, F)) * 0.5 / math.sqrt(F), Q.MXFP4),
            "bd": store(w, p + "ffn_down_exps.bias", rng.standard_normal((E, d)) * 0.1, Q.F32),
        }
        layers.append(ly)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(path + ".tmp", path)

    ids = rng.integers(0, V, T)
    ref = forward(cfg, swa, embd, out_norm, out, layers, ids)
    tmp = os.path.join(args.out, "reference.safetensors.tmp")
    save_file(ref, tmp)
    os.replace(tmp, os.path.join(args.out, "reference.safetensors"))


if __name__ == "__main__":
    main()
