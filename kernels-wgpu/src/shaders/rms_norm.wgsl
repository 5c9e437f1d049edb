// y = w * (x / sqrt(mean(x^2) + eps)), one workgroup per row.
struct P {
    d: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> WT: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.rows) { return; }
    let base = r * p.d;
    var ss = 0.0;
    for (var i = li; i < p.d; i += WG) {
        let v = X[base + i];
        ss += v * v;
    }
    // wg_sum (reduce.wgsl): subgroup shuffles where the adapter has them.
    let inv = 1.0 / sqrt(wg_sum(ss, li) / f32(p.d) + p.eps);
    for (var i = li; i < p.d; i += WG) {
        Y[base + i] = WT[i] * (X[base + i] * inv);
    }
}
