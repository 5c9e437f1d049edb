// y[t, n] = x[t, :] . W[n, :] + bias[n] for T tokens (T <= 8), quantized weights read word by
// word: a group of LANES lanes computes R rows, lane l reading words l, l + LANES, ... of each
// (neighbouring lanes, neighbouring words), and the x values of a word are loaded once for the
// R rows. The header gives WG, LANES, LWG (LANES x groups), SG, RED_N, T, R, lane_sum; the weight
// snippet gives EPW, HAS_HI, xoff and wdec.
struct P {
    k: u32,        // row length
    n_rows: u32,   // rows in this part of the weight
    row0: u32,     // global index of the part's first row
    n_out: u32,    // y's row stride (all rows of the weight)
    t0: u32,       // first token of this chunk
    soff: u32,     // scale offset of the part, in words
    has_bias: u32,
    _pad: u32,
}
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> BIAS: array<f32>;
@group(0) @binding(3) var<storage, read_write> Y: array<f32>;
@group(0) @binding(4) var<uniform> p: P;

const GROUPS: u32 = LWG / LANES;
// The workgroup-memory reduction when there are no subgroups (RED_N is 1 otherwise).
var<workgroup> red: array<f32, RED_N>;

@compute @workgroup_size(LWG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let lane = li % LANES;
    let grp = li / LANES;
    let r0 = ((wid.x + wid.y * nwg.x) * GROUPS + grp) * R;
    var rows: array<u32, R>;
    for (var r = 0u; r < R; r++) { rows[r] = min(r0 + r, p.n_rows - 1u); }
    var acc: array<f32, R * T>;
    for (var i = 0u; i < R * T; i++) { acc[i] = 0.0; }
    let nw = p.k / EPW;
    let k4 = p.k / 4u;
    // No early exit: every lane reaches the reductions below (groups past the end compute a
    // clamped row and write nothing).
    // U steps per iteration: independent loads in flight (the u loop has a constant bound).
    for (var w0 = lane; w0 < nw; w0 += LANES * U) {
        for (var u = 0u; u < U; u++) {
            let w = w0 + u * LANES;
            if (w >= nw) { break; }
            let xo = xoff(w) / 4u;
            var xa: array<vec4<f32>, T>;
            var xb: array<vec4<f32>, T>;
            for (var t = 0u; t < T; t++) {
                let b = (p.t0 + t) * k4 + xo;
                xa[t] = X[b];
                if (HAS_HI) { xb[t] = X[b + 4u]; }
            }
            for (var r = 0u; r < R; r++) {
                let d = wdec(rows[r], w, p.k, p.soff);
                for (var t = 0u; t < T; t++) {
                    var v = dot(d[0], xa[t]);
                    if (HAS_HI) { v += dot(d[1], xb[t]); }
                    acc[r * T + t] += v;
                }
            }
        }
    }
    if (SG) {
        for (var i = 0u; i < R * T; i++) { acc[i] = lane_sum(acc[i]); }
    } else {
        for (var i = 0u; i < R * T; i++) { red[i * LWG + li] = acc[i]; }
        workgroupBarrier();
        for (var s = LANES / 2u; s > 0u; s >>= 1u) {
            if (lane < s) {
                for (var i = 0u; i < R * T; i++) { red[i * LWG + li] += red[i * LWG + li + s]; }
            }
            workgroupBarrier();
        }
        for (var i = 0u; i < R * T; i++) { acc[i] = red[i * LWG + grp * LANES]; }
    }
    if (lane == 0u) {
        for (var r = 0u; r < R; r++) {
            if (r0 + r < p.n_rows) {
                let g = p.row0 + r0 + r;
                var b = 0.0;
                if (p.has_bias != 0u) { b = BIAS[g]; }
                for (var t = 0u; t < T; t++) { Y[(p.t0 + t) * p.n_out + g] = acc[r * T + t] + b; }
            }
        }
    }
}
