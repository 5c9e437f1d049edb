// Router: top-k of each token's raw logits (ties: lower expert first), softmax over those k.
// One workgroup per token: the logits are staged in workgroup memory, where one thread's
// k x n_exp scan costs little (in global memory it would be a chain of dependent loads).
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

const MAXE: u32 = 256u;
var<workgroup> lg: array<f32, MAXE>;
var<workgroup> taken: array<u32, MAXE>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let tok = wid.x + wid.y * nwg.x;
    if (tok >= p.t) { return; }
    let b = tok * p.n_exp;
    for (var e = li; e < p.n_exp; e += WG) {
        lg[e] = L[b + e];
        taken[e] = 0u;
    }
    workgroupBarrier();
    if (li != 0u) { return; }
    var m = 0.0;
    var sum = 0.0;
    for (var s = 0u; s < p.k; s++) {
        var best = 0xffffffffu;
        var bv = 0.0;
        for (var e = 0u; e < p.n_exp; e++) {
            if (taken[e] != 0u) { continue; }
            let v = lg[e];
            if (best == 0xffffffffu || v > bv) { best = e; bv = v; }
        }
        taken[best] = 1u;
        if (s == 0u) { m = bv; }
        let w = exp(bv - m);
        sum += w;
        IDS[tok * p.k + s] = best;
        WTS[tok * p.k + s] = w;
    }
    for (var s = 0u; s < p.k; s++) { WTS[tok * p.k + s] /= sum; }
}
