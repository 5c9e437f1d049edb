// NEOX rotary embedding in place with precomputed (YaRN) inverse frequencies. cos/sin are
// computed here in f32 with an explicit range reduction, because GPU cos/sin are only
// specified on [-pi, pi] and positions reach 131072 radians.
struct P {
    rows: u32,
    n_heads: u32,
    half: u32,
    cols: u32,
    pos0: u32,
    factor: f32,   // attention factor (YaRN concentration)
    _a: u32,
    _b: u32,
}
@group(0) @binding(0) var<storage, read_write> X: array<f32>;
@group(0) @binding(1) var<storage, read> INV: array<f32>;
@group(0) @binding(2) var<uniform> p: P;

// pi/2 in four pieces: the first three have at most 7 significant bits, so k * piece is exact
// for k < 2^17 (angles up to ~200000 rad); the reduced angle is within ~3e-8 of exact.
const PIO2_1: f32 = 1.5625;
const PIO2_2: f32 = 0.0081787109375;
const PIO2_3: f32 = 0.00011730194091796875;
const PIO2_4: f32 = 3.1391647326017846e-07;

// (cos a, sin a) for an f32 angle: reduce to [-pi/4, pi/4] around k pi/2, then minimax
// polynomials (Cephes sinf/cosf coefficients) and the quadrant.
fn cos_sin(a: f32) -> vec2<f32> {
    let kf = round(a * 0.63661977236758134);
    var r = a - kf * PIO2_1;
    r = r - kf * PIO2_2;
    r = r - kf * PIO2_3;
    r = r - kf * PIO2_4;
    let z = r * r;
    let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
    let q = u32(i32(kf) & 3);
    if (q == 0u) { return vec2<f32>(c, s); }
    if (q == 1u) { return vec2<f32>(-s, c); }
    if (q == 2u) { return vec2<f32>(-c, -s); }
    return vec2<f32>(s, -c);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let g = (wid.x + wid.y * nwg.x) * WG + li;
    let per_row = p.n_heads * p.half;
    if (g >= p.rows * per_row) { return; }
    let row = g / per_row;
    let rem = g % per_row;
    let h = rem / p.half;
    let i = rem % p.half;
    // The reference multiplies position by inv_freq in f32.
    let a = f32(p.pos0 + row) * INV[i];
    let cs = cos_sin(a) * p.factor;
    let b = row * p.cols + h * 2u * p.half;
    let x1 = X[b + i];
    let x2 = X[b + i + p.half];
    X[b + i] = x1 * cs.x - x2 * cs.y;
    X[b + i + p.half] = x2 * cs.x + x1 * cs.y;
}
