//! Malformed input gives errors, never panics: truncation at every byte offset, random byte
//! flips, hostile counts, unsupported versions, and the errors name offsets.

mod common;

use gguf_format::{
    Array, GgmlType, GgufError, GgufFile, Metadata, StringArray, TensorInfo, Value, WriteOptions,
    pack_offsets, parse_header, to_bytes, validate_bytes,
};

/// A small file holding every value type, a nested array and tensors of several types.
fn small_file() -> Vec<u8> {
    let mut md = Metadata::new();
    md.insert("general.architecture", Value::String("llama".into()));
    md.insert("general.alignment", Value::U32(64));
    md.insert("a.u8", Value::U8(7));
    md.insert("a.i8", Value::I8(-7));
    md.insert("a.u16", Value::U16(700));
    md.insert("a.i16", Value::I16(-700));
    md.insert("a.u32", Value::U32(70000));
    md.insert("a.i32", Value::I32(-70000));
    md.insert("a.f32", Value::F32(1.5));
    md.insert("a.bool", Value::Bool(true));
    md.insert("a.str", Value::String("héllo".into()));
    md.insert("a.u64", Value::U64(1 << 40));
    md.insert("a.i64", Value::I64(-(1 << 40)));
    md.insert("a.f64", Value::F64(-2.25));
    md.insert(
        "a.strs",
        Value::Array(Array::String(
            ["x", "yy", ""].iter().collect::<StringArray>(),
        )),
    );
    md.insert(
        "a.nested",
        Value::Array(Array::Array(vec![
            Array::I32(vec![1, -2]),
            Array::Bool(vec![true, false]),
            Array::Array(vec![Array::F64(vec![0.5])]),
        ])),
    );
    let mut tensors = vec![
        TensorInfo {
            name: "a".into(),
            ggml_type: GgmlType::F32,
            shape: vec![4, 2],
            offset: 0,
        },
        TensorInfo {
            name: "b".into(),
            ggml_type: GgmlType::MXFP4,
            shape: vec![64],
            offset: 0,
        },
        TensorInfo {
            name: "c".into(),
            ggml_type: GgmlType::Q8_0,
            shape: vec![32, 2],
            offset: 0,
        },
    ];
    pack_offsets(&mut tensors, 64).unwrap();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| (0..t.size_bytes()).map(|i| (i * 7 % 61) as u8).collect())
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    to_bytes(&md, &tensors, &refs, WriteOptions::default()).unwrap()
}

/// Everything a consumer may do with a parsed file; must not panic whatever the bytes.
fn exercise(bytes: &[u8]) -> Result<(), GgufError> {
    let _ = validate_bytes(bytes);
    let h = parse_header(bytes)?;
    for (k, v) in h.metadata.iter() {
        let _ = (
            h.metadata.get_u32(k),
            h.metadata.get_str(k),
            h.metadata.get_f32(k),
            v.to_json(),
        );
        let _ = h.metadata.get_str_array(k);
    }
    for t in &h.tensors {
        let _ = (t.n_elements(), t.size_bytes(), t.row_bytes());
    }
    Ok(())
}

#[test]
fn small_file_truncated_at_every_offset_errors() {
    let full = small_file();
    assert!(exercise(&full).is_ok());
    let h = parse_header(&full).unwrap();
    for n in 0..full.len() {
        let cut = &full[..n];
        let r = parse_header(cut);
        if (n as u64) < h.infos_end {
            let e = r.expect_err("a truncated header must not parse");
            assert!(
                e.offset() <= n as u64,
                "error offset {} past the cut {n}: {e}",
                e.offset()
            );
        } else {
            // Header complete: parsing succeeds, but tensors past the cut are out of bounds and
            // validation says so.
            let h2 = r.unwrap();
            let last = h2.tensors.last().unwrap();
            if h2.data_offset + last.offset + last.size_bytes() > n as u64 {
                assert!(!validate_bytes(cut).is_valid(), "cut at {n} validated");
            }
        }
        let _ = exercise(cut);
    }
}

#[test]
fn real_fixture_truncations_error() {
    // Every offset of the first 16 KiB, then every 997th byte (a full sweep of a 1.9 MB file
    // is quadratic), and the exact end of every field region.
    let p = common::fixtures_dir().join("gpt-oss-tiny/tiny-gptoss-mxfp4-q8_0.gguf");
    let full = std::fs::read(&p).unwrap();
    let h = parse_header(&full).unwrap();
    let mut cuts: Vec<usize> = (0..16384).chain((16384..full.len()).step_by(997)).collect();
    cuts.extend([
        h.infos_end as usize - 1,
        h.infos_end as usize,
        full.len() - 1,
    ]);
    for n in cuts {
        let cut = &full[..n];
        match parse_header(cut) {
            Err(_) => assert!((n as u64) < h.infos_end, "complete header at {n} failed"),
            Ok(_) => {
                assert!(n as u64 >= h.infos_end);
                assert!(!validate_bytes(cut).is_valid(), "cut at {n} validated");
            }
        }
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut files = vec![small_file()];
    files.push(
        std::fs::read(common::fixtures_dir().join("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf"))
            .unwrap(),
    );
    let mut errors = 0;
    for base in &files {
        let h = parse_header(base).unwrap();
        let iters = if base.len() < 10_000 { 20_000 } else { 300 };
        for _ in 0..iters {
            let mut b = base.clone();
            for _ in 0..(1 + rnd() % 4) {
                // Mostly in the header, where flips change structure.
                let span = if rnd() % 8 == 0 {
                    b.len()
                } else {
                    h.infos_end as usize
                };
                let i = (rnd() as usize) % span;
                b[i] = rnd() as u8;
            }
            if exercise(&b).is_err() {
                errors += 1;
            }
        }
    }
    assert!(
        errors > 0,
        "no flip produced an error: the test is not reaching the parser"
    );
}

#[test]
fn hostile_counts_are_refused_before_allocating() {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'k');
    b.extend(9u32.to_le_bytes()); // array
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend(u64::MAX.to_le_bytes()); // absurd count
    match parse_header(&b) {
        Err(GgufError::CountTooLarge { offset, count, .. }) => {
            assert_eq!(offset, 4 + 4 + 8 + 8 + 8 + 1 + 4 + 4);
            assert_eq!(count, u64::MAX);
        }
        other => panic!("expected CountTooLarge, got {other:?}"),
    }
    // Tensor count beyond what the file could hold.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((1u64 << 40).to_le_bytes());
    b.extend(0u64.to_le_bytes());
    assert!(matches!(
        parse_header(&b),
        Err(GgufError::CountTooLarge { offset: 8, .. })
    ));
}

#[test]
fn versions_and_magic() {
    let mut b = small_file();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = parse_header(&b).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::UnsupportedVersion {
                version: 1,
                offset: 4,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("unsupported GGUF version 1"), "{e}");
    b[4..8].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(
        parse_header(&b),
        Err(GgufError::UnsupportedVersion { version: 4, .. })
    ));
    b[0] = b'X';
    assert!(matches!(parse_header(&b), Err(GgufError::BadMagic { .. })));
}

#[test]
fn big_endian_round_trip_and_detection() {
    let le = small_file();
    let h = parse_header(&le).unwrap();
    let data: Vec<&[u8]> = h
        .tensors
        .iter()
        .map(|t| {
            let s = (h.data_offset + t.offset) as usize;
            &le[s..s + t.size_bytes() as usize]
        })
        .collect();
    let opts = WriteOptions {
        version: 3,
        endian: gguf_format::Endian::Big,
        ..Default::default()
    };
    let be = to_bytes(&h.metadata, &h.tensors, &data, opts).unwrap();
    assert_eq!(&be[4..8], &[0, 0, 0, 3]);
    let hb = parse_header(&be).unwrap();
    assert_eq!(hb.endian, gguf_format::Endian::Big);
    assert_eq!(hb.metadata, h.metadata);
    assert_eq!(hb.tensors, h.tensors);
    assert_eq!(hb.metadata.get_i64("a.i64").unwrap(), -(1 << 40));
}

#[test]
fn bad_type_ids_name_the_tensor_and_id() {
    let mut b = small_file();
    let h = parse_header(&b).unwrap();
    // The type field of the first tensor sits 12 bytes before the end of its info
    // (u32 type, u64 offset); find it by re-encoding the first info's prefix.
    let name_pos = b
        .windows(9)
        .position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'a'])
        .unwrap();
    let type_pos = name_pos + 9 + 4 + 8 * 2;
    for (id, removed) in [(4u32, true), (36, true), (99, false)] {
        b[type_pos..type_pos + 4].copy_from_slice(&id.to_le_bytes());
        let e = parse_header(&b).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("\"a\"") && s.contains(&id.to_string()), "{s}");
        assert!(
            s.contains(if removed { "removed" } else { "unknown" }),
            "{s}"
        );
        assert_eq!(e.offset(), type_pos as u64);
        let report = validate_bytes(&b);
        assert!(!report.is_valid());
    }
    assert_eq!(h.tensors.len(), 3);
}

#[test]
fn validation_reports_every_problem() {
    let good = small_file();
    let h = parse_header(&good).unwrap();
    let mut b = good.clone();
    // NaN in the F32 tensor, E8M0 0xFF in the MXFP4 tensor, Inf scale in the Q8_0 tensor.
    let start = |name: &str| {
        let t = h.tensors.iter().find(|t| t.name == name).unwrap();
        (h.data_offset + t.offset) as usize
    };
    b[start("a") + 4..start("a") + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    b[start("b") + 17] = 0xFF;
    b[start("c") + 34..start("c") + 36].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    // And a duplicate tensor name in the header ("c" -> "b").
    let c_name = b
        .windows(9)
        .position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b'c'])
        .unwrap();
    b[c_name + 8] = b'b';
    let r = validate_bytes(&b);
    let text: Vec<String> = r.findings.iter().map(|f| f.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("\"a\"") && t.contains("NaN/Inf values")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("\"b\"") && t.contains("0xFF")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("duplicate tensor name")),
        "{text:#?}"
    );
    // Parsing strictly stops at the duplicate.
    assert!(parse_header(&b).is_err());
    // Without the duplicate, the Q8_0 scale is checked too.
    let mut b2 = b.clone();
    b2[c_name + 8] = b'c';
    let r2 = validate_bytes(&b2);
    assert_eq!(r2.errors().count(), 3, "{:#?}", r2.findings);
    assert!(
        r2.errors()
            .any(|f| f.tensor.as_deref() == Some("c") && f.offset == (start("c") + 34) as u64)
    );
}

#[test]
fn split_sets_round_trip() {
    let p = common::fixtures_dir().join("gpt-oss-tiny/tiny-gptoss-mxfp4-q8_0.gguf");
    let m = gguf_format::GgufModel::open(&p).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for by in [
        gguf_format::SplitBy::MaxTensors(30),
        gguf_format::SplitBy::MaxBytes(500_000),
    ] {
        let paths = gguf_format::write_split(&m, dir.path().join("tiny"), by).unwrap();
        assert!(paths.len() >= 3, "{by:?}: {} files", paths.len());
        // Opening any shard opens the set.
        let s = gguf_format::GgufModel::open(&paths[1]).unwrap();
        assert_eq!(s.files().len(), paths.len());
        assert_eq!(s.tensor_count(), m.tensor_count());
        assert_eq!(
            s.metadata().get_u16("split.count").unwrap() as usize,
            paths.len()
        );
        for t in m.tensors() {
            let a = m.tensor(&t.name).unwrap();
            let b = s.tensor(&t.name).unwrap();
            assert_eq!(a.info.shape, b.info.shape);
            assert_eq!(a.info.ggml_type, b.info.ggml_type);
            assert!(a.data == b.data, "{}", t.name);
        }
        for (k, v) in m.metadata().iter() {
            assert_eq!(s.metadata().get(k), Some(v), "{k}");
        }
        for path in &paths {
            assert!(gguf_format::validate(path).is_valid());
        }
        if let gguf_format::SplitBy::MaxBytes(max) = by {
            for f in s.files() {
                let bytes: u64 = f.tensors().iter().map(|t| t.size_bytes()).sum();
                assert!(bytes <= max || f.tensors().len() == 1);
            }
        }
        for p in paths {
            std::fs::remove_file(p).unwrap();
        }
    }
    // A missing shard is an error naming it.
    let paths = gguf_format::write_split(
        &m,
        dir.path().join("gap"),
        gguf_format::SplitBy::MaxTensors(40),
    )
    .unwrap();
    std::fs::remove_file(&paths[1]).unwrap();
    let e = gguf_format::GgufModel::open(&paths[0]).unwrap_err();
    assert!(e.path() == paths[1], "{e}");
    let _ = GgufFile::open(&paths[0]).unwrap();
}
