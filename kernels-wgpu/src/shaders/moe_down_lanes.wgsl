// y[t, j] = sum over the token's slots s of w_s * (down_e[j] . h[s] + bd[e, j]): the expert
// down projections, their biases and the routing-weighted sum in one kernel. A workgroup
// computes R rows j of one token; its lane groups take the token's slots in turn (all top-k
// experts' rows are read at once), each group of LANES lanes reading neighbouring words of a
// row like gemv_lanes.wgsl, and the groups' sums meet in workgroup memory. Over a split stack,
// the first part writes y and later parts add to it (p.accumulate), each summing only the slots
// whose rows it holds.
struct P {
    k: u32,        // dff (the row length of down)
    d: u32,        // d_model (rows per expert)
    t: u32,
    top_k: u32,
    row0: u32,
    n_rows: u32,
    soff: u32,
    accumulate: u32,
}
@group(0) @binding(1) var<storage, read> H: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> IDS: array<u32>;
@group(0) @binding(3) var<storage, read> WTS: array<f32>;
@group(0) @binding(4) var<storage, read> BD: array<f32>;
@group(0) @binding(5) var<storage, read_write> Y: array<f32>;
@group(0) @binding(6) var<uniform> p: P;

const GROUPS: u32 = LWG / LANES;
var<workgroup> red: array<f32, RED_N>;
var<workgroup> gsum: array<f32, GROUPS * R>;

@compute @workgroup_size(LWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let lane = li % LANES;
    let grp = li / LANES;
    let blocks = (p.d + R - 1u) / R;
    let g = wid.x + wid.y * nwg.x;
    let live = g < blocks * p.t;
    let tok = min(g / blocks, p.t - 1u);
    let j0 = (g % blocks) * R;
    var acc: array<f32, R>;
    for (var r = 0u; r < R; r++) { acc[r] = 0.0; }
    let nw = p.k / EPW;
    for (var s = grp; s < p.top_k; s += GROUPS) {
        let slot = tok * p.top_k + s;
        let e = IDS[slot];
        let wt = WTS[slot];
        var rows: array<u32, R>;
        var ok: array<bool, R>;
        var any = false;
        for (var r = 0u; r < R; r++) {
            let grow = e * p.d + j0 + r;
            ok[r] = live && j0 + r < p.d && grow >= p.row0 && grow < p.row0 + p.n_rows;
            rows[r] = select(0u, grow - p.row0, ok[r]);
            // The bias once per slot: in lane 0, before the lanes are summed.
            if (ok[r] && lane == 0u) { acc[r] += wt * BD[grow]; }
            any = any || ok[r];
        }
        // Uniform within the lane group; no barrier inside.
        if (!any) { continue; }
        let hbase = slot * (p.k / 4u);
        var part: array<f32, R>;
        for (var r = 0u; r < R; r++) { part[r] = 0.0; }
        for (var w = lane; w < nw; w += LANES) {
            let xo = hbase + xoff(w) / 4u;
            let xa = H[xo];
            var xb = vec4<f32>(0.0);
            if (HAS_HI) { xb = H[xo + 4u]; }
            for (var r = 0u; r < R; r++) {
                let dw = wdec(rows[r], w, p.k, p.soff);
                var v = dot(dw[0], xa);
                if (HAS_HI) { v += dot(dw[1], xb); }
                part[r] += v;
            }
        }
        for (var r = 0u; r < R; r++) {
            if (ok[r]) { acc[r] += wt * part[r]; }
        }
    }
    if (SG) {
        for (var r = 0u; r < R; r++) { acc[r] = lane_sum(acc[r]); }
    } else {
        for (var r = 0u; r < R; r++) { red[r * LWG + li] = acc[r]; }
        workgroupBarrier();
        for (var s = LANES / 2u; s > 0u; s >>= 1u) {
            if (lane < s) {
                for (var r = 0u; r < R; r++) { red[r * LWG + li] += red[r * LWG + li + s]; }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < R; r++) { acc[r] = red[r * LWG + grp * LANES]; }
    }
    if (lane == 0u) {
        for (var r = 0u; r < R; r++) { gsum[grp * R + r] = acc[r]; }
    }
    workgroupBarrier();
    if (li == 0u && live) {
        for (var r = 0u; r < R; r++) {
            if (j0 + r < p.d) {
                var v = 0.0;
                for (var q = 0u; q < GROUPS; q++) { v += gsum[q * R + r]; }
                let i = tok * p.d + j0 + r;
                if (p.accumulate != 0u) { Y[i] += v; } else { Y[i] = v; }
            }
        }
    }
}
