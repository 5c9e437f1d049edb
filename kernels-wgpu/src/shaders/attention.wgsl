// Causal attention with sinks, GQA and sliding windows, streaming over keys WG at a time with
// an online softmax. Keys before pos0 come from the cache (a ring for window layers), later
// ones from the new k/v rows, so a prefill longer than the ring is still exact.
//
// Split-K: workgroup (row, head, s) covers the s-th run of `seg` visible keys. With one run
// (n_split == 1) it finishes the row itself: the sink starts the running max and sum. With
// several it writes (max, sum, acc) partials that attention_combine.wgsl merges with the sink.
struct P {
    t: u32,
    pos0: u32,
    n_heads: u32,
    n_kv: u32,
    hd: u32,
    window: u32,   // 0: full causal
    ring: u32,     // cache slots when the cache is a ring, else 0
    scale: f32,
    n_split: u32,
    seg: u32,
    append: u32,   // 1: also store the new k/v rows in the cache (see below)
}
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> K: array<f32>;
@group(0) @binding(2) var<storage, read> V: array<f32>;
@group(0) @binding(3) var<storage, read_write> KC: array<KV_ELEM>;
@group(0) @binding(4) var<storage, read_write> VC: array<KV_ELEM>;
@group(0) @binding(5) var<storage, read> SINKS: array<f32>;
@group(0) @binding(6) var<storage, read_write> O: array<f32>;
@group(0) @binding(7) var<uniform> p: P;
@group(0) @binding(8) var<storage, read_write> PART: array<f32>;

const DMAX: u32 = 256u;
const PER: u32 = DMAX / WG;  // head dims owned by one thread
const NEG: f32 = -3.4028235e38;
var<workgroup> qs: array<f32, DMAX>;
var<workgroup> ps: array<f32, WG>;
var<workgroup> rb: array<u32, WG>;   // row base of each key of the chunk (new rows: + 1 flag)

// Element offset of position j's row for kv head kvh, and whether it is a new row.
fn row_of(j: u32, kvh: u32) -> vec2<u32> {
    if (j >= p.pos0) {
        return vec2<u32>((j - p.pos0) * p.n_kv * p.hd + kvh * p.hd, 1u);
    }
    var slot = j;
    if (p.ring != 0u) { slot = j % p.ring; }
    return vec2<u32>((slot * p.n_kv + kvh) * p.hd, 0u);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.t * p.n_heads * p.n_split) { return; }
    let rh = g / p.n_split;
    let sp = g % p.n_split;
    let tok = rh / p.n_heads;
    let h = rh % p.n_heads;
    let kvh = h / (p.n_heads / p.n_kv);
    let pos = p.pos0 + tok;
    var lo = 0u;
    if (p.window != 0u && pos + 1u > p.window) { lo = pos + 1u - p.window; }
    let k0 = lo + sp * p.seg;
    let k1 = min(k0 + p.seg, pos + 1u);  // exclusive; k0 >= k1: nothing to see
    // The append in the same dispatch (one dispatch less per layer): the first workgroup of
    // each (row, kv head) stores the new row. The host asks for it only where no query of the
    // call reads the slot it overwrites (a full cache, or one row into a ring: the slot held
    // position pos - ring, outside the window).
    if (p.append != 0u && sp == 0u && h % (p.n_heads / p.n_kv) == 0u) {
        var slot = pos;
        if (p.ring != 0u) { slot = pos % p.ring; }
        let src = (tok * p.n_kv + kvh) * p.hd;
        let dst = (slot * p.n_kv + kvh) * p.hd;
        for (var d = li; d < p.hd; d += WG) {
            KC[dst + d] = KV_ELEM(K[src + d]);
            VC[dst + d] = KV_ELEM(V[src + d]);
        }
    }
    let qb = tok * p.n_heads * p.hd + h * p.hd;
    for (var d = li; d < p.hd; d += WG) { qs[d] = Q[qb + d]; }
    workgroupBarrier();

    var m = NEG;
    var l = 0.0;
    if (p.n_split == 1u) {
        m = SINKS[h];
        l = 1.0;
    }
    var acc: array<f32, PER>;
    for (var i = 0u; i < PER; i++) { acc[i] = 0.0; }
    for (var base = k0; base < k1; base += WG) {
        let j = base + li;
        var s = NEG;
        if (j < k1) {
            let r = row_of(j, kvh);
            var dotv = 0.0;
            if (r.y == 1u) {
                for (var d = 0u; d < p.hd; d++) { dotv += qs[d] * K[r.x + d]; }
            } else {
                for (var d = 0u; d < p.hd; d++) { dotv += qs[d] * kv_load_k(r.x + d); }
            }
            s = dotv * p.scale;
            rb[li] = r.x * 2u + r.y;
        }
        // wg_max/wg_sum (reduce.wgsl): subgroup shuffles where the adapter has them.
        let m_new = max(m, wg_max(s, li));
        var e = 0.0;
        if (j < k1) { e = exp(s - m_new); }
        ps[li] = e;
        let sum = wg_sum(e, li);
        let alpha = exp(m - m_new);
        l = l * alpha + sum;
        let n = min(WG, k1 - base);
        for (var i = 0u; i < PER; i++) {
            let d = li + i * WG;
            if (d < p.hd) {
                var a = acc[i] * alpha;
                for (var jj = 0u; jj < n; jj++) {
                    let r = rb[jj];
                    var x: f32;
                    if ((r & 1u) == 1u) { x = V[(r >> 1u) + d]; } else { x = kv_load_v((r >> 1u) + d); }
                    a += ps[jj] * x;
                }
                acc[i] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    if (p.n_split == 1u) {
        let inv = 1.0 / l;
        for (var i = 0u; i < PER; i++) {
            let d = li + i * WG;
            if (d < p.hd) { O[qb + d] = acc[i] * inv; }
        }
    } else {
        let pb = g * (p.hd + 2u);
        if (li == 0u) {
            PART[pb] = m;
            PART[pb + 1u] = l;
        }
        for (var i = 0u; i < PER; i++) {
            let d = li + i * WG;
            if (d < p.hd) { PART[pb + 2u + d] = acc[i]; }
        }
    }
}
