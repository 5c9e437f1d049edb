// y[t, j] += sum over the token's chosen experts s of w_s * (down_e[j] . h[slot] + bd[e, j]):
// one workgroup per (row j, token). y starts at zero; each part of a split stack adds the
// slots whose rows it holds.
struct P {
    k: u32,        // dff (the row length of down)
    d: u32,        // d_model (rows per expert)
    t: u32,
    top_k: u32,
    row0: u32,
    n_rows: u32,
    soff: u32,
    _a: u32,
}
@group(0) @binding(1) var<storage, read> H: array<f32>;
@group(0) @binding(2) var<storage, read> IDS: array<u32>;
@group(0) @binding(3) var<storage, read> WTS: array<f32>;
@group(0) @binding(4) var<storage, read> BD: array<f32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

var<workgroup> red: array<f32, WG>;
var<workgroup> sh_row: u32;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.d * p.t) { return; }
    let tok = g / p.d;
    let j = g % p.d;
    let nc = (p.k + 3u) / 4u;
    var total = 0.0;
    for (var s = 0u; s < p.top_k; s++) {
        let slot = tok * p.top_k + s;
        if (li == 0u) { sh_row = IDS[slot] * p.d + j; }
        let grow = workgroupUniformLoad(&sh_row);
        if (grow >= p.row0 && grow < p.row0 + p.n_rows) {
            let row = grow - p.row0;
            var a = 0.0;
            for (var c = li; c < nc; c += WG) {
                let hb = slot * p.k + 4u * c;
                var hv = vec4<f32>(0.0);
                for (var q = 0u; q < 4u; q++) { if (4u * c + q < p.k) { hv[q] = H[hb + q]; } }
                a += dot(w4(row, c, p.k, p.soff), hv);
            }
            red[li] = a;
            workgroupBarrier();
            for (var r = WG / 2u; r > 0u; r >>= 1u) {
                if (li < r) { red[li] += red[li + r]; }
                workgroupBarrier();
            }
            total += WTS[slot] * (red[0] + BD[grow]);
        }
        // Nobody may overwrite sh_row or red for the next slot before everyone has read them.
        workgroupBarrier();
    }
    if (li == 0u) { Y[tok * p.d + j] += total; }
}
