// h[slot, j] = swiglu(gate_e[j] . x + bg, up_e[j] . x + bu) for each (token, chosen expert)
// slot: one workgroup per (row j, slot), gate and up rows read together. A part of a split
// expert stack handles only the slots whose rows it holds.
struct P {
    k: u32,        // d_model
    dff: u32,
    n_slots: u32,  // tokens * top_k
    top_k: u32,
    row0: u32,     // first global row (expert * dff + j) of this part
    n_rows: u32,
    soff: u32,
    _a: u32,
}
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read> IDS: array<u32>;
@group(0) @binding(4) var<storage, read> BG: array<f32>;
@group(0) @binding(5) var<storage, read> BU: array<f32>;
@group(0) @binding(6) var<storage, read_write> H: array<f32>;
@group(0) @binding(7) var<uniform> p: P;

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

var<workgroup> rg: array<f32, WG>;
var<workgroup> ru: array<f32, WG>;
var<workgroup> sh_row: u32;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.dff * p.n_slots) { return; }
    let slot = g / p.dff;
    let j = g % p.dff;
    if (li == 0u) { sh_row = IDS[slot] * p.dff + j; }
    // The row comes from memory: make it provably uniform before branching around barriers.
    let grow = workgroupUniformLoad(&sh_row);
    if (grow < p.row0 || grow >= p.row0 + p.n_rows) { return; }
    let row = grow - p.row0;
    let tok = slot / p.top_k;
    let nc = (p.k + 3u) / 4u;
    var ag = 0.0;
    var au = 0.0;
    for (var c = li; c < nc; c += WG) {
        let xv = x4(tok, c);
        ag += dot(w4(row, c, p.k, p.soff), xv);
        au += dot(w4u(row, c, p.k, p.soff), xv);
    }
    rg[li] = ag;
    ru[li] = au;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            rg[li] += rg[li + s];
            ru[li] += ru[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let gate = rg[0] + BG[grow];
        let up = ru[0] + BU[grow];
        let gl = min(gate, 7.0);
        let ul = clamp(up, -7.0, 7.0);
        let glu = gl * (1.0 / (1.0 + exp(-(gl * 1.702))));
        H[slot * p.dff + j] = (ul + 1.0) * glu;
    }
}
