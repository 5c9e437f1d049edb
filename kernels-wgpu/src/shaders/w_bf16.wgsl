// BF16 weights: the file's halves, two per word; a bf16 is the high half of an f32.
@group(0) @binding(B$) var<storage, read> W$: array<u32>;

fn wel$(e: u32) -> f32 {
    let w = W$[e >> 1u];
    return bitcast<f32>(select(w & 0xffff0000u, w << 16u, (e & 1u) == 0u));
}

fn w4$(row: u32, c: u32, k: u32, soff: u32) -> vec4<f32> {
    let e = row * k + 4u * c;
    if (4u * c + 4u <= k && (e & 1u) == 0u) {
        let a = W$[e >> 1u];
        let b = W$[(e >> 1u) + 1u];
        return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u), bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
    }
    var r = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (4u * c + j < k) { r[j] = wel$(e + j); }
    }
    return r;
}
