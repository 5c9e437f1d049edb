import numpy as np, subprocess, sys, os
out = sys.argv[1]
rng = np.random.default_rng(20261126)
blocks = []
for b in range(32):
    k = b % 8
    s = np.float32(2.0 ** rng.uniform(-8, 8))
    if k == 0: v = rng.standard_normal(256) * s
    elif k == 1: v = rng.uniform(-1, 1, 256) * s
    elif k == 2: v = rng.standard_cauchy(256).clip(-1e3, 1e3) * s * 0.01
    elif k == 3: v = 0.1 + 2 * np.cos(np.arange(256) + b)
    elif k == 4:
        v = rng.standard_normal(256) * s; v[rng.uniform(size=256) < 0.7] = 0
    elif k == 5: v = np.abs(rng.standard_normal(256)) * s + s  # all positive, offset
    elif k == 6:
        v = rng.standard_normal(256) * s; v[:64] = 0; v[128:160] = s  # zero groups and constant groups
    else: v = np.round(rng.standard_normal(256) * 4) * s / 8  # many ties
    blocks.append(v.astype(np.float32))
x = np.concatenate(blocks).astype(np.float32)
open(os.path.join(out, "ggml_ref_input.f32"), "wb").write(x.tobytes())
for t in ["Q4_0","Q4_1","Q5_0","Q5_1","Q8_0","Q8_1","Q2_K","Q3_K","Q4_K","Q5_K","Q6_K","Q8_K","TQ1_0","TQ2_0","MXFP4","IQ4_NL","IQ4_XS"]:
    r = subprocess.run(["/tmp/gq/harness", t, os.path.join(out, "ggml_ref_input.f32")], capture_output=True, check=True)
    open(os.path.join(out, f"ggml_ref_{t}.bin"), "wb").write(r.stdout)
