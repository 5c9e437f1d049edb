// Index of the largest value of each row (first on ties), one workgroup per row.
struct P {
    cols: u32,
    rows: u32,
    _a: u32,
    _b: u32,
}
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> OUT: array<u32>;
@group(0) @binding(2) var<uniform> p: P;

var<workgroup> bv: array<f32, WG>;
var<workgroup> bi: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= p.rows) { return; }
    var best = -3.4028235e38;
    var idx = 0xffffffffu;
    for (var i = li; i < p.cols; i += WG) {
        let v = X[r * p.cols + i];
        // Strictly greater: each thread scans ascending, so it keeps its first maximum.
        if (v > best || idx == 0xffffffffu) { best = v; idx = i; }
    }
    if (SG) {
        // Within each lane group by shuffles, then the group winners through workgroup memory.
        for (var o = LANES / 2u; o > 0u; o >>= 1u) {
            let ov = sg_xor_f(best, o);
            let oi = sg_xor_u(idx, o);
            if (better(ov, oi, best, idx)) {
                best = ov;
                idx = oi;
            }
        }
        if (li % LANES == 0u) {
            bv[li / LANES] = best;
            bi[li / LANES] = idx;
        }
        workgroupBarrier();
        if (li == 0u) {
            for (var i = 1u; i < WG / LANES; i++) {
                if (better(bv[i], bi[i], best, idx)) {
                    best = bv[i];
                    idx = bi[i];
                }
            }
            OUT[r] = select(idx, 0u, idx == 0xffffffffu);
        }
        return;
    }
    bv[li] = best;
    bi[li] = idx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            if (better(bv[li + s], bi[li + s], bv[li], bi[li])) {
                bv[li] = bv[li + s];
                bi[li] = bi[li + s];
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) { OUT[r] = select(bi[0], 0u, bi[0] == 0xffffffffu); }
}

// (ov, oi) beats (v, i): a real candidate that is larger, or equal with a lower index.
fn better(ov: f32, oi: u32, v: f32, i: u32) -> bool {
    return oi != 0xffffffffu && (i == 0xffffffffu || ov > v || (ov == v && oi < i));
}
