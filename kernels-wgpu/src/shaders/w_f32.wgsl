// F32 weights: the file's words as they are. `$` is replaced by a suffix so that a kernel can
// bind two weights; B$ by the binding index.
@group(0) @binding(B$) var<storage, read> W$: array<u32>;

// Four elements from column 4c of local row `row` (row length k); columns past k read as 0.
fn w4$(row: u32, c: u32, k: u32, soff: u32) -> vec4<f32> {
    let e = row * k + 4u * c;
    if (4u * c + 4u <= k) {
        return vec4<f32>(bitcast<f32>(W$[e]), bitcast<f32>(W$[e + 1u]), bitcast<f32>(W$[e + 2u]), bitcast<f32>(W$[e + 3u]));
    }
    var r = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (4u * c + j < k) { r[j] = bitcast<f32>(W$[e + j]); }
    }
    return r;
}
