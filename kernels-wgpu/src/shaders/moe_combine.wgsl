// y[t, j] = sum over the token's slots s (in routing order) of w_s * ys[t * k + s, j].
struct P {
    t: u32,
    d: u32,
    top_k: u32,
    _a: u32,
}
@group(0) @binding(0) var<storage, read> YS: array<f32>;
@group(0) @binding(1) var<storage, read> WTS: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + li;
    if (i >= p.t * p.d) { return; }
    let tok = i / p.d;
    let j = i % p.d;
    var acc = 0.0;
    for (var s = 0u; s < p.top_k; s++) {
        let slot = tok * p.top_k + s;
        acc += WTS[slot] * YS[slot * p.d + j];
    }
    Y[i] = acc;
}
