// y = x W^T + bias for many tokens: 256 threads compute a 32-row x 32-token tile, staging
// 32-column slices of W (dequantized once per tile) and x in workgroup memory.
struct P {
    k: u32,
    n_rows: u32,
    row0: u32,
    n_out: u32,
    t: u32,        // tokens
    soff: u32,
    has_bias: u32,
    _pad: u32,
}
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> BIAS: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

const TR: u32 = 32u;
const TT: u32 = 32u;
var<workgroup> ws: array<vec4<f32>, 256>; // [32 rows][8 groups of 4 columns]
var<workgroup> xs: array<vec4<f32>, 256>; // [32 tokens][8 groups]

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

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r0 = wid.x * TR;   // local row of the tile
    let tk0 = wid.y * TT;  // first token of the tile
    let tx = li % 16u;
    let ty = li / 16u;
    let lr = li / 8u;      // loader: row/token within the tile
    let lc = li % 8u;      // loader: group within the slice
    var acc: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) { acc[i] = 0.0; }
    let nc = (p.k + 3u) / 4u;
    for (var c0 = 0u; c0 < nc; c0 += 8u) {
        let c = c0 + lc;
        var wv = vec4<f32>(0.0);
        if (r0 + lr < p.n_rows && c < nc) { wv = w4(r0 + lr, c, p.k, p.soff); }
        ws[li] = wv;
        var xv = vec4<f32>(0.0);
        if (tk0 + lr < p.t && c < nc) { xv = x4(tk0 + lr, c); }
        xs[li] = xv;
        workgroupBarrier();
        for (var g = 0u; g < 8u; g++) {
            let wa = ws[(tx * 2u) * 8u + g];
            let wb = ws[(tx * 2u + 1u) * 8u + g];
            let xa = xs[(ty * 2u) * 8u + g];
            let xb = xs[(ty * 2u + 1u) * 8u + g];
            acc[0] += dot(wa, xa);
            acc[1] += dot(wa, xb);
            acc[2] += dot(wb, xa);
            acc[3] += dot(wb, xb);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        let row = r0 + tx * 2u + i;
        if (row >= p.n_rows) { continue; }
        let g = p.row0 + row;
        var b = 0.0;
        if (p.has_bias != 0u) { b = BIAS[g]; }
        for (var j = 0u; j < 2u; j++) {
            let tk = tk0 + ty * 2u + j;
            if (tk < p.t) { Y[tk * p.n_out + g] = acc[i * 2u + j] + b; }
        }
    }
}
