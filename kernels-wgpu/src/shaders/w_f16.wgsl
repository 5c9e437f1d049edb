// F16 weights: the file's halves, two per word (a row may start mid-word when k is odd).
@group(0) @binding(B$) var<storage, read> W$: array<u32>;

fn wel$(e: u32) -> f32 {
    return unpack2x16float(W$[e >> 1u])[e & 1u];
}

fn w4$(row: u32, c: u32, k: u32, soff: u32) -> vec4<f32> {
    let e = row * k + 4u * c;
    if (4u * c + 4u <= k && (e & 1u) == 0u) {
        let a = unpack2x16float(W$[e >> 1u]);
        let b = unpack2x16float(W$[(e >> 1u) + 1u]);
        return vec4<f32>(a, b);
    }
    var r = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (4u * c + j < k) { r[j] = wel$(e + j); }
    }
    return r;
}
