// MXFP4 weights, re-laid out at upload as the same bits: the 16 nibble bytes of block b in words
// 4b..4b+3 (byte j: element j low, element j+16 high), then from word `soff` the E8M0 scale
// bytes, four per word.
@group(0) @binding(B$) var<storage, read> W$: array<u32>;

// E2M1 code -> f32, by building the float's bits (no table: a private array costs registers).
fn e2m1$(n: u32) -> f32 {
    let e = (n >> 1u) & 3u;
    let m = n & 1u;
    let mag = select(((e + 126u) << 23u) | (m << 22u), m * 0x3F000000u, e == 0u);
    return bitcast<f32>(mag | ((n & 8u) << 28u));
}

// 2^(e-127); e = 0 is the denormal 2^-127, as ggml decodes it.
fn e8m0$(e: u32) -> f32 {
    return bitcast<f32>(select(e << 23u, 0x00400000u, e == 0u));
}

fn w4$(row: u32, c: u32, k: u32, soff: u32) -> vec4<f32> {
    let b = row * (k / 32u) + c / 8u;
    let o = c & 7u;
    let q = W$[b * 4u + (o & 3u)] >> select(0u, 4u, o >= 4u);
    let s = e8m0$((W$[soff + (b >> 2u)] >> ((b & 3u) * 8u)) & 0xffu);
    return vec4<f32>(e2m1$(q & 15u), e2m1$((q >> 8u) & 15u), e2m1$((q >> 16u) & 15u), e2m1$((q >> 24u) & 15u)) * s;
}

// Lane kernels: word w of a row holds elements 4(w%4)..+3 (low nibbles) and 16 + 4(w%4)..+3
// (high nibbles) of block w/4; `wdec` returns both quadruples scaled.
const EPW$: u32 = 8u;
const HAS_HI$: bool = true;
fn xoff$(w: u32) -> u32 {
    return (w >> 2u) * 32u + (w & 3u) * 4u;
}
fn wdec$(row: u32, w: u32, k: u32, soff: u32) -> array<vec4<f32>, 2> {
    let q = W$[row * (k / 8u) + w];
    let b = row * (k / 32u) + (w >> 2u);
    let s = e8m0$((W$[soff + (b >> 2u)] >> ((b & 3u) * 8u)) & 0xffu);
    let lo = vec4<f32>(e2m1$(q & 15u), e2m1$((q >> 8u) & 15u), e2m1$((q >> 16u) & 15u), e2m1$((q >> 24u) & 15u));
    let hi = vec4<f32>(e2m1$((q >> 4u) & 15u), e2m1$((q >> 12u) & 15u), e2m1$((q >> 20u) & 15u), e2m1$(q >> 28u));
    return array<vec4<f32>, 2>(lo * s, hi * s);
}
