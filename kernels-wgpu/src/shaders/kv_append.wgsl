// Store the new k/v rows of positions pos0.. in the cache (slot p % ring for a ring; rows that
// a ring would overwrite within the same call are skipped, so every slot is written once).
struct P {
    t: u32,
    pos0: u32,
    width: u32,   // n_kv * head_dim
    ring: u32,    // slots of a ring, else 0
    first: u32,   // first new row worth storing
    _a: u32,
    _b: u32,
    _c: u32,
}
@group(0) @binding(0) var<storage, read> K: array<f32>;
@group(0) @binding(1) var<storage, read> V: array<f32>;
@group(0) @binding(2) var<storage, read_write> KC: array<KV_ELEM>;
@group(0) @binding(3) var<storage, read_write> VC: array<KV_ELEM>;
@group(0) @binding(4) var<uniform> p: P;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = (wid.x + wid.y * nwg.x) * WG + li;
    let n = (p.t - p.first) * p.width;
    if (g >= n) { return; }
    let row = p.first + g / p.width;
    let c = g % p.width;
    let pos = p.pos0 + row;
    var slot = pos;
    if (p.ring != 0u) { slot = pos % p.ring; }
    KC[slot * p.width + c] = KV_ELEM(K[row * p.width + c]);
    VC[slot * p.width + c] = KV_ELEM(V[row * p.width + c]);
}
