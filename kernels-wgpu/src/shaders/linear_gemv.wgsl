// y[t, n] = x[t, :] . W[n, :] + bias[n] for a few tokens (T, a compile-time constant <= 8):
// one workgroup per weight row, the row read once for all T tokens. Constants WG and T come
// from the header the host prepends; w4 from the weight snippet.
struct P {
    k: u32,        // row length
    n_rows: u32,   // rows in this part of the weight
    row0: u32,     // global index of the part's first row
    n_out: u32,    // y's row stride (all rows of the weight)
    t0: u32,       // first token of this chunk
    soff: u32,     // scale offset of a quantized part, in words
    has_bias: u32,
    _pad: u32,
}
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> BIAS: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

var<workgroup> red: array<f32, T * WG>;

fn x4(t: u32, c: u32) -> vec4<f32> {
    let b = t * p.k + 4u * c;
    if (4u * c + 4u <= p.k) {
        return vec4<f32>(X[b], X[b + 1u], X[b + 2u], X[b + 3u]);
    }
    var r = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (4u * c + j < p.k) { r[j] = X[b + j]; }
    }
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.n_rows) { return; }
    var acc: array<f32, T>;
    for (var t = 0u; t < T; t++) { acc[t] = 0.0; }
    // Neighbouring threads read neighbouring words (coalesced); two independent steps per
    // iteration keep more loads in flight.
    let nc = (p.k + 3u) / 4u;
    var c = li;
    for (; c + WG < nc; c += 2u * WG) {
        let wa = w4(row, c, p.k, p.soff);
        let wb = w4(row, c + WG, p.k, p.soff);
        for (var t = 0u; t < T; t++) {
            acc[t] += dot(wa, x4(p.t0 + t, c)) + dot(wb, x4(p.t0 + t, c + WG));
        }
    }
    if (c < nc) {
        let w = w4(row, c, p.k, p.soff);
        for (var t = 0u; t < T; t++) {
            acc[t] += dot(w, x4(p.t0 + t, c));
        }
    }
    for (var t = 0u; t < T; t++) { red[t * WG + li] = acc[t]; }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            for (var t = 0u; t < T; t++) { red[t * WG + li] += red[t * WG + li + s]; }
        }
        workgroupBarrier();
    }
    if (li < T) {
        let g = p.row0 + row;
        var v = red[li * WG];
        if (p.has_bias != 0u) { v += BIAS[g]; }
        Y[(p.t0 + li) * p.n_out + g] = v;
    }
}
