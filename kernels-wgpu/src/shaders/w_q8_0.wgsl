// Q8_0 weights, re-laid out at upload as the same bits: the 32 int8 of block b in words
// 8b..8b+7, then from word `soff` the f16 scales, two per word.
@group(0) @binding(B$) var<storage, read> W$: array<u32>;

fn w4$(row: u32, c: u32, k: u32, soff: u32) -> vec4<f32> {
    let b = row * (k / 32u) + c / 8u;
    let q = W$[b * 8u + (c & 7u)];
    let d = unpack2x16float(W$[soff + (b >> 1u)])[b & 1u];
    let v = vec4<i32>(bitcast<i32>(q << 24u) >> 24u, bitcast<i32>(q << 16u) >> 24u,
                      bitcast<i32>(q << 8u) >> 24u, bitcast<i32>(q) >> 24u);
    return vec4<f32>(v) * d;
}

// Lane kernels: word w of a row holds elements 4w..4w+3.
const EPW$: u32 = 4u;
const HAS_HI$: bool = false;
fn xoff$(w: u32) -> u32 {
    return 4u * w;
}
fn wdec$(row: u32, w: u32, k: u32, soff: u32) -> array<vec4<f32>, 2> {
    let q = W$[row * (k / 4u) + w];
    let b = row * (k / 32u) + (w >> 3u);
    let d = unpack2x16float(W$[soff + (b >> 1u)])[b & 1u];
    let v = vec4<i32>(bitcast<i32>(q << 24u) >> 24u, bitcast<i32>(q << 16u) >> 24u,
                      bitcast<i32>(q << 8u) >> 24u, bitcast<i32>(q) >> 24u);
    return array<vec4<f32>, 2>(vec4<f32>(v) * d, vec4<f32>(0.0));
}
