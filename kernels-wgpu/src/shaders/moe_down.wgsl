// ys[slot, j] = down_e[j] . h[slot] + bd[e, j] for each (token, chosen expert) slot: one
// workgroup per (row j, slot), like gate/up. A part of a split stack writes only the slots
// whose rows it holds; moe_combine.wgsl then takes the routing-weighted sum.
struct P {
    k: u32,        // dff (the row length of down)
    d: u32,        // d_model (rows per expert)
    n_slots: u32,
    _b: u32,
    row0: u32,
    n_rows: u32,
    soff: u32,
    _a: u32,
}
@group(0) @binding(1) var<storage, read> H: array<f32>;
@group(0) @binding(2) var<storage, read> IDS: array<u32>;
@group(0) @binding(4) var<storage, read> BD: array<f32>;
@group(0) @binding(5) var<storage, read_write> YS: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

fn h4(s: u32, c: u32) -> vec4<f32> {
    let b = s * p.k + 4u * c;
    if (4u * c + 4u <= p.k) {
        return vec4<f32>(H[b], H[b + 1u], H[b + 2u], H[b + 3u]);
    }
    var r = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (4u * c + j < p.k) { r[j] = H[b + j]; }
    }
    return r;
}

var<workgroup> red: array<f32, WG>;
var<workgroup> sh_row: u32;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.d * p.n_slots) { return; }
    let slot = g / p.d;
    let j = g % p.d;
    if (li == 0u) { sh_row = IDS[slot] * p.d + j; }
    // The row comes from memory: make it provably uniform before branching around barriers.
    let grow = workgroupUniformLoad(&sh_row);
    if (grow < p.row0 || grow >= p.row0 + p.n_rows) { return; }
    let row = grow - p.row0;
    let nc = (p.k + 3u) / 4u;
    var a = 0.0;
    for (var c = li; c < nc; c += WG) {
        a += dot(w4(row, c, p.k, p.soff), h4(slot, c));
    }
    red[li] = a;
    workgroupBarrier();
    for (var r = WG / 2u; r > 0u; r >>= 1u) {
        if (li < r) { red[li] += red[li + r]; }
        workgroupBarrier();
    }
    if (li == 0u) { YS[slot * p.d + j] = red[0] + BD[grow]; }
}
