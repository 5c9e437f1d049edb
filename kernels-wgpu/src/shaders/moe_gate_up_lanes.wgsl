// h[slot, j] = swiglu(gate_e[j] . x + bg, up_e[j] . x + bu) for each (token, chosen expert) slot,
// quantized experts read word by word like gemv_lanes.wgsl: a group of LANES lanes computes R
// rows j of one slot, gate and up together, the x values of a word loaded once for all 2R
// rows. A workgroup covers GROUPS * R rows of one slot. A part of a split expert stack writes
// only the rows it holds.
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
@group(0) @binding(2) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> IDS: array<u32>;
@group(0) @binding(4) var<storage, read> BG: array<f32>;
@group(0) @binding(5) var<storage, read> BU: array<f32>;
@group(0) @binding(6) var<storage, read_write> H: array<f32>;
@group(0) @binding(7) var<uniform> p: P;

const GROUPS: u32 = LWG / LANES;
var<workgroup> red: array<f32, RED_N>;

@compute @workgroup_size(LWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let lane = li % LANES;
    let grp = li / LANES;
    let per_wg = GROUPS * R;
    let blocks = (p.dff + per_wg - 1u) / per_wg;
    let g = wid.x + wid.y * nwg.x;
    // Workgroups past the end redo the last slot and write nothing (no early exit before the
    // reductions).
    let live = g < blocks * p.n_slots;
    let slot = min(g / blocks, p.n_slots - 1u);
    let j0 = (g % blocks) * per_wg + grp * R;
    let e = IDS[slot];
    let tok = slot / p.top_k;
    var rows: array<u32, R>;
    var ok: array<bool, R>;
    for (var r = 0u; r < R; r++) {
        let grow = e * p.dff + j0 + r;
        ok[r] = live && j0 + r < p.dff && grow >= p.row0 && grow < p.row0 + p.n_rows;
        rows[r] = select(0u, grow - p.row0, ok[r]);
    }
    var acc: array<f32, 2 * R>;
    for (var i = 0u; i < 2u * R; i++) { acc[i] = 0.0; }
    let nw = p.k / EPW;
    let xbase = tok * (p.k / 4u);
    // U steps per iteration: independent loads in flight (the u loop has a constant bound).
    for (var w0 = lane; w0 < nw; w0 += LANES * U) {
        for (var u = 0u; u < U; u++) {
            let w = w0 + u * LANES;
            if (w >= nw) { break; }
            let xo = xbase + xoff(w) / 4u;
            let xa = X[xo];
            var xb = vec4<f32>(0.0);
            if (HAS_HI) { xb = X[xo + 4u]; }
            for (var r = 0u; r < R; r++) {
                let dg = wdec(rows[r], w, p.k, p.soff);
                let du = wdecu(rows[r], w, p.k, p.soff);
                var vg = dot(dg[0], xa);
                var vu = dot(du[0], xa);
                if (HAS_HI) {
                    vg += dot(dg[1], xb);
                    vu += dot(du[1], xb);
                }
                acc[2u * r] += vg;
                acc[2u * r + 1u] += vu;
            }
        }
    }
    if (SG) {
        for (var i = 0u; i < 2u * R; i++) { acc[i] = lane_sum(acc[i]); }
    } else {
        for (var i = 0u; i < 2u * R; i++) { red[i * LWG + li] = acc[i]; }
        workgroupBarrier();
        for (var s = LANES / 2u; s > 0u; s >>= 1u) {
            if (lane < s) {
                for (var i = 0u; i < 2u * R; i++) { red[i * LWG + li] += red[i * LWG + li + s]; }
            }
            workgroupBarrier();
        }
        for (var i = 0u; i < 2u * R; i++) { acc[i] = red[i * LWG + grp * LANES]; }
    }
    if (lane == 0u) {
        for (var r = 0u; r < R; r++) {
            if (ok[r]) {
                let grow = e * p.dff + j0 + r;
                let gate = acc[2u * r] + BG[grow];
                let up = acc[2u * r + 1u] + BU[grow];
                let gl = min(gate, 7.0);
                let ul = clamp(up, -7.0, 7.0);
                let glu = gl * (1.0 / (1.0 + exp(-(gl * 1.702))));
                H[slot * p.dff + j0 + r] = (ul + 1.0) * glu;
            }
        }
    }
}
