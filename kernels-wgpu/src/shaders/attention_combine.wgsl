// Merge the split-K partials (max, sum, acc) of each (row, head) with the head's sink.
struct P {
    rows_heads: u32,
    n_heads: u32,
    hd: u32,
    n_split: u32,
}
@group(0) @binding(0) var<storage, read> PART: array<f32>;
@group(0) @binding(1) var<storage, read> SINKS: array<f32>;
@group(0) @binding(2) var<storage, read_write> O: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let rh = wid.x + wid.y * nwg.x;
    if (rh >= p.rows_heads) { return; }
    let h = rh % p.n_heads;
    let w = p.hd + 2u;
    var m = SINKS[h];
    for (var s = 0u; s < p.n_split; s++) { m = max(m, PART[(rh * p.n_split + s) * w]); }
    var l = exp(SINKS[h] - m);
    for (var s = 0u; s < p.n_split; s++) {
        let b = (rh * p.n_split + s) * w;
        l += PART[b + 1u] * exp(PART[b] - m);
    }
    for (var d = li; d < p.hd; d += WG) {
        var a = 0.0;
        for (var s = 0u; s < p.n_split; s++) {
            let b = (rh * p.n_split + s) * w;
            a += PART[b + 2u + d] * exp(PART[b] - m);
        }
        O[rh * p.hd + d] = a / l;
    }
}
