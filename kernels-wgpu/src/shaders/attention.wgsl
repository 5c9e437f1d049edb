// Causal attention with sinks, GQA and sliding windows: one workgroup per (query row, head),
// streaming over its keys WG at a time with an online softmax. Keys before pos0 come from the
// cache (a ring for window layers), later ones from the new k/v rows, so a prefill longer than
// the ring is still exact. The sink joins the denominator: it starts the running max and sum.
struct P {
    t: u32,
    pos0: u32,
    n_heads: u32,
    n_kv: u32,
    hd: u32,
    window: u32,   // 0: full causal
    ring: u32,     // cache slots when the cache is a ring, else 0
    scale: f32,
}
@group(0) @binding(0) var<storage, read> Q: array<f32>;
@group(0) @binding(1) var<storage, read> K: array<f32>;
@group(0) @binding(2) var<storage, read> V: array<f32>;
@group(0) @binding(3) var<storage, read> KC: array<KV_ELEM>;
@group(0) @binding(4) var<storage, read> VC: array<KV_ELEM>;
@group(0) @binding(5) var<storage, read> SINKS: array<f32>;
@group(0) @binding(6) var<storage, read_write> O: array<f32>;
@group(0) @binding(7) var<uniform> p: P;

const DMAX: u32 = 256u;
const PER: u32 = DMAX / WG;  // head dims owned by one thread
var<workgroup> qs: array<f32, DMAX>;
var<workgroup> ps: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

// Element d of the key (or value) row at position j for kv head kvh.
fn key(j: u32, kvh: u32, d: u32) -> f32 {
    if (j >= p.pos0) {
        return K[(j - p.pos0) * p.n_kv * p.hd + kvh * p.hd + d];
    }
    let slot = select(j, j % p.ring, p.ring != 0u);
    return kv_load_k((slot * p.n_kv + kvh) * p.hd + d);
}
fn val(j: u32, kvh: u32, d: u32) -> f32 {
    if (j >= p.pos0) {
        return V[(j - p.pos0) * p.n_kv * p.hd + kvh * p.hd + d];
    }
    let slot = select(j, j % p.ring, p.ring != 0u);
    return kv_load_v((slot * p.n_kv + kvh) * p.hd + d);
}

fn reduce_max(li: u32) -> f32 {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] = max(red[li], red[li + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
fn reduce_sum(li: u32) -> f32 {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.t * p.n_heads) { return; }
    let tok = g / p.n_heads;
    let h = g % p.n_heads;
    let kvh = h / (p.n_heads / p.n_kv);
    let pos = p.pos0 + tok;
    var lo = 0u;
    if (p.window != 0u && pos + 1u > p.window) { lo = pos + 1u - p.window; }
    let qb = tok * p.n_heads * p.hd + h * p.hd;
    for (var d = li; d < p.hd; d += WG) { qs[d] = Q[qb + d]; }
    workgroupBarrier();

    var m = SINKS[h];
    var l = 1.0;
    var acc: array<f32, PER>;
    for (var i = 0u; i < PER; i++) { acc[i] = 0.0; }
    for (var base = lo; base <= pos; base += WG) {
        let j = base + li;
        var s = -3.4028235e38;
        if (j <= pos) {
            var dotv = 0.0;
            for (var d = 0u; d < p.hd; d++) { dotv += qs[d] * key(j, kvh, d); }
            s = dotv * p.scale;
        }
        red[li] = s;
        workgroupBarrier();
        let m_new = max(m, reduce_max(li));
        var e = 0.0;
        if (j <= pos) { e = exp(s - m_new); }
        ps[li] = e;
        red[li] = e;
        workgroupBarrier();
        let sum = reduce_sum(li);
        let alpha = exp(m - m_new);
        l = l * alpha + sum;
        let n = min(WG, pos + 1u - base);
        for (var i = 0u; i < PER; i++) {
            let d = li + i * WG;
            if (d < p.hd) {
                var a = acc[i] * alpha;
                for (var jj = 0u; jj < n; jj++) { a += ps[jj] * val(base + jj, kvh, d); }
                acc[i] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    let inv = 1.0 / l;
    for (var i = 0u; i < PER; i++) {
        let d = li + i * WG;
        if (d < p.hd) { O[qb + d] = acc[i] * inv; }
    }
}
