// Workgroup-wide sum and max (every invocation calls them, in uniform control flow; every
// invocation gets the result). With subgroups: shuffles within each lane group, then the
// WG / LANES group results through workgroup memory (one barrier pair). Without: a tree in
// workgroup memory.
var<workgroup> wg_red: array<f32, WG>;

fn wg_reduce(v: f32, li: u32, is_max: bool) -> f32 {
    if (SG) {
        var s = v;
        if (is_max) { s = lane_max(v); } else { s = lane_sum(v); }
        if (li % LANES == 0u) { wg_red[li / LANES] = s; }
        workgroupBarrier();
        var r = wg_red[0];
        for (var i = 1u; i < WG / LANES; i++) {
            if (is_max) { r = max(r, wg_red[i]); } else { r += wg_red[i]; }
        }
        workgroupBarrier();
        return r;
    }
    wg_red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            if (is_max) {
                wg_red[li] = max(wg_red[li], wg_red[li + s]);
            } else {
                wg_red[li] += wg_red[li + s];
            }
        }
        workgroupBarrier();
    }
    let r = wg_red[0];
    workgroupBarrier();
    return r;
}
fn wg_sum(v: f32, li: u32) -> f32 { return wg_reduce(v, li, false); }
fn wg_max(v: f32, li: u32) -> f32 { return wg_reduce(v, li, true); }
