//! vec_dot_tile (the prefill kernels: many weight rows x many activation rows) equals the
//! single-pair vec_dot, bit for bit, on every dispatch, for every tile edge and block tail.

mod common;

use common::*;
use gptoss_quant::{Dispatch, GgmlType, QuantError, vec_dot_tile_with, vec_dot_with};
use proptest::prelude::*;
use rand::rngs::StdRng;

const PAIRS: [(GgmlType, GgmlType); 4] = [
    (GgmlType::MXFP4, GgmlType::Q8_0),
    (GgmlType::Q8_0, GgmlType::Q8_0),
    // No tiled kernel: the pair-by-pair fallback.
    (GgmlType::Q4_0, GgmlType::Q8_0),
    (GgmlType::Q4_K, GgmlType::Q8_K),
];

/// Random weight rows; for Q8_0 optionally without the byte -128 (which sends a row through the
/// AVX2 kernel's scalar fallback).
fn weights(ty: GgmlType, rows: usize, nb: usize, no_min: bool, r: &mut StdRng) -> Vec<u8> {
    let mut w = random_blocks(ty, rows * nb, r);
    if no_min && ty == GgmlType::Q8_0 {
        for b in w.chunks_exact_mut(34) {
            for c in &mut b[2..] {
                if *c == 0x80 {
                    *c = 0x81;
                }
            }
        }
    }
    w
}

/// Checks every output of the tile against the single-pair kernel of the same dispatch and
/// against the scalar kernel.
fn check(
    wty: GgmlType,
    aty: GgmlType,
    rows: usize,
    toks: usize,
    nb_w: usize,
    no_min: bool,
    r: &mut StdRng,
) -> Result<(), String> {
    let n = nb_w * wty.block_size();
    let w = weights(wty, rows, nb_w, no_min, r);
    let acts: Vec<Vec<u8>> = (0..toks)
        .map(|_| random_blocks(aty, n / aty.block_size(), r))
        .collect();
    let act_refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
    let rb = w.len() / rows;
    for d in Dispatch::ALL.into_iter().filter(|d| d.is_available()) {
        let mut out = vec![f32::NAN; rows * toks];
        vec_dot_tile_with(d, wty, &w, rows, aty, &act_refs, n, &mut out).unwrap();
        for ri in 0..rows {
            for (ti, a) in acts.iter().enumerate() {
                let wr = &w[ri * rb..(ri + 1) * rb];
                let one = vec_dot_with(d, wty, wr, aty, a, n).unwrap();
                let scalar = vec_dot_with(Dispatch::Scalar, wty, wr, aty, a, n).unwrap();
                let got = out[ri * toks + ti];
                if got.to_bits() != one.to_bits() || got.to_bits() != scalar.to_bits() {
                    return Err(format!(
                        "{wty} x {aty} {d:?} rows={rows} toks={toks} n={n} no_min={no_min}: \
                         [{ri},{ti}] tile {got} vs pair {one} vs scalar {scalar}"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn tile_equals_single_pairs_on_every_shape() {
    let mut r = rng("tile_equals_single_pairs");
    for (wty, aty) in PAIRS {
        let per = aty.block_size() / 32;
        for nb in [1usize, 7, 8, 9, 16, 23, 90, 128] {
            let nb_w = nb * per.max(1);
            for (rows, toks) in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (5, 4), (9, 7)] {
                for no_min in [false, true] {
                    check(wty, aty, rows, toks, nb_w, no_min, &mut r).unwrap();
                }
            }
        }
    }
}

#[test]
fn tile_rejects_wrong_lengths() {
    let mut r = rng("tile_rejects_wrong_lengths");
    let n = 64;
    let w = random_blocks(GgmlType::MXFP4, 4, &mut r);
    let a = random_blocks(GgmlType::Q8_0, 2, &mut r);
    let short = &a[..67];
    let mut out = vec![0.0f32; 4];
    let d = Dispatch::best();
    let e = vec_dot_tile_with(
        d,
        GgmlType::MXFP4,
        &w,
        3,
        GgmlType::Q8_0,
        &[&a, &a],
        n,
        &mut out,
    );
    assert!(
        matches!(
            e,
            Err(QuantError::SizeMismatch {
                name: "weights",
                ..
            })
        ),
        "{e:?}"
    );
    let e = vec_dot_tile_with(
        d,
        GgmlType::MXFP4,
        &w,
        2,
        GgmlType::Q8_0,
        &[&a, short],
        n,
        &mut out,
    );
    assert!(
        matches!(
            e,
            Err(QuantError::SizeMismatch {
                name: "activations",
                ..
            })
        ),
        "{e:?}"
    );
    let e = vec_dot_tile_with(
        d,
        GgmlType::MXFP4,
        &w,
        2,
        GgmlType::Q8_0,
        &[&a],
        n,
        &mut out,
    );
    assert!(
        matches!(e, Err(QuantError::SizeMismatch { name: "output", .. })),
        "{e:?}"
    );
    let e = vec_dot_tile_with(
        d,
        GgmlType::MXFP4,
        &w,
        2,
        GgmlType::Q8_0,
        &[&a, &a],
        63,
        &mut out,
    );
    assert!(
        matches!(e, Err(QuantError::NotBlockMultiple { .. })),
        "{e:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn tile_equals_single_pairs_on_arbitrary_blocks(
        seed in any::<u64>(), nb in 1usize..40, rows in 1usize..6, toks in 1usize..6,
        no_min in any::<bool>(),
    ) {
        use rand::SeedableRng;
        let mut r = StdRng::seed_from_u64(seed);
        for (wty, aty) in [(GgmlType::MXFP4, GgmlType::Q8_0), (GgmlType::Q8_0, GgmlType::Q8_0)] {
            let res = check(wty, aty, rows, toks, nb, no_min, &mut r);
            prop_assert!(res.is_ok(), "{}", res.unwrap_err());
        }
    }
}
