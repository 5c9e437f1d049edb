// Router: top-k of each token's raw logits (ties: lower expert first), softmax over those k.
struct P {
    t: u32,
    n_exp: u32,
    k: u32,
    _a: u32,
}
@group(0) @binding(0) var<storage, read> L: array<f32>;
@group(0) @binding(1) var<storage, read_write> IDS: array<u32>;
@group(0) @binding(2) var<storage, read_write> WTS: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let tok = (wid.x + wid.y * nwg.x) * WG + li;
    if (tok >= p.t) { return; }
    let b = tok * p.n_exp;
    var taken: array<u32, 8>;  // bit set of chosen experts (n_exp <= 256)
    for (var i = 0u; i < 8u; i++) { taken[i] = 0u; }
    var m = 0.0;
    var sum = 0.0;
    for (var s = 0u; s < p.k; s++) {
        var best = 0xffffffffu;
        var bv = 0.0;
        for (var e = 0u; e < p.n_exp; e++) {
            if ((taken[e >> 5u] & (1u << (e & 31u))) != 0u) { continue; }
            let v = L[b + e];
            if (best == 0xffffffffu || v > bv) { best = e; bv = v; }
        }
        taken[best >> 5u] |= 1u << (best & 31u);
        if (s == 0u) { m = bv; }
        let w = exp(bv - m);
        sum += w;
        IDS[tok * p.k + s] = best;
        WTS[tok * p.k + s] = w;
    }
    for (var s = 0u; s < p.k; s++) { WTS[tok * p.k + s] /= sum; }
}
