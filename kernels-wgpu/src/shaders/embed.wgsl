// y[t, :] = table row ids[t] (any weight type), one workgroup per token; a part of a split
// table writes only the tokens whose rows it holds.
struct P {
    k: u32,       // row length (d)
    n_rows: u32,  // rows in this part
    row0: u32,    // first row of the part
    n_tok: u32,
    soff: u32,
    _a: u32,
    _b: u32,
    _c: u32,
}
@group(0) @binding(1) var<storage, read> IDS: array<u32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let t = wid.x + wid.y * nwg.x;
    if (t >= p.n_tok) { return; }
    let id = IDS[t];
    if (id < p.row0 || id >= p.row0 + p.n_rows) { return; }
    let row = id - p.row0;
    let nc = (p.k + 3u) / 4u;
    for (var c = li; c < nc; c += WG) {
        let w = w4(row, c, p.k, p.soff);
        for (var j = 0u; j < 4u; j++) {
            if (4u * c + j < p.k) { Y[t * p.k + 4u * c + j] = w[j]; }
        }
    }
}
