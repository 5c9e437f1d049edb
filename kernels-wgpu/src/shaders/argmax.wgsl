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
    bv[li] = best;
    bi[li] = idx;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            let ov = bv[li + s];
            let oi = bi[li + s];
            if (oi != 0xffffffffu && (bi[li] == 0xffffffffu || ov > bv[li] || (ov == bv[li] && oi < bi[li]))) {
                bv[li] = ov;
                bi[li] = oi;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) { OUT[r] = select(bi[0], 0u, bi[0] == 0xffffffffu); }
}
