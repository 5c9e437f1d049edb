//! Property tests: arbitrary metadata (all 13 value types, nested arrays, odd alignments) and
//! tensor sets survive write -> read -> write bit for bit, in both byte orders and versions.

use gguf_format::{
    Array, Endian, GgmlType, Metadata, StringArray, TensorInfo, Value, WriteOptions, pack_offsets,
    parse_header, to_bytes,
};
use proptest::prelude::*;

fn leaf_array() -> impl Strategy<Value = Array> {
    let n = 0..6usize;
    prop_oneof![
        prop::collection::vec(any::<u8>(), n.clone()).prop_map(Array::U8),
        prop::collection::vec(any::<i8>(), n.clone()).prop_map(Array::I8),
        prop::collection::vec(any::<u16>(), n.clone()).prop_map(Array::U16),
        prop::collection::vec(any::<i16>(), n.clone()).prop_map(Array::I16),
        prop::collection::vec(any::<u32>(), n.clone()).prop_map(Array::U32),
        prop::collection::vec(any::<i32>(), n.clone()).prop_map(Array::I32),
        prop::collection::vec(any::<u32>().prop_map(f32::from_bits), n.clone())
            .prop_map(Array::F32),
        prop::collection::vec(any::<bool>(), n.clone()).prop_map(Array::Bool),
        prop::collection::vec(".{0,12}", n.clone())
            .prop_map(|v| Array::String(v.iter().collect::<StringArray>())),
        prop::collection::vec(any::<u64>(), n.clone()).prop_map(Array::U64),
        prop::collection::vec(any::<i64>(), n.clone()).prop_map(Array::I64),
        prop::collection::vec(any::<u64>().prop_map(f64::from_bits), n).prop_map(Array::F64),
    ]
}

fn array() -> impl Strategy<Value = Array> {
    leaf_array().prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(Array::Array)
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))),
        any::<bool>().prop_map(Value::Bool),
        ".{0,40}".prop_map(Value::String),
        array().prop_map(Value::Array),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b))),
    ]
}

fn tensor_spec() -> impl Strategy<Value = (GgmlType, Vec<u64>)> {
    (
        prop::sample::select(GgmlType::ALL.to_vec()),
        1..4u64,
        prop::collection::vec(1..4u64, 0..3),
    )
        .prop_map(|(t, blocks, rest)| {
            let mut shape = vec![blocks * t.block_size() as u64];
            shape.extend(rest);
            (t, shape)
        })
}

#[derive(Debug, Clone)]
struct Case {
    md: Metadata,
    tensors: Vec<TensorInfo>,
    data: Vec<Vec<u8>>,
    opts: WriteOptions,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(("[a-z._]{1,16}", value()), 0..8),
        prop::option::of(0u32..13),
        prop::collection::vec(tensor_spec(), 0..6),
        prop::collection::vec(0u64..3, 6),
        any::<u64>(),
        prop::sample::select(vec![
            (3u32, Endian::Little),
            (2, Endian::Little),
            (3, Endian::Big),
        ]),
        any::<bool>(),
    )
        .prop_map(
            |(kvs, align_log2, specs, gaps, seed, (version, endian), pad)| {
                let mut md = Metadata::new();
                md.insert("general.architecture", Value::String("proptest".into()));
                if let Some(l) = align_log2 {
                    md.insert("general.alignment", Value::U32(1 << l));
                }
                for (k, v) in kvs {
                    if k != "general.alignment" && k != "general.architecture" {
                        md.insert(k, v);
                    }
                }
                let mut tensors: Vec<TensorInfo> = specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (ggml_type, shape))| TensorInfo {
                        name: format!("t{i}.weight"),
                        ggml_type,
                        shape,
                        offset: 0,
                    })
                    .collect();
                let a = md.alignment();
                pack_offsets(&mut tensors, a).unwrap();
                // Optional aligned gaps between tensors: legal, and must survive the round trip.
                let mut shift = 0;
                for (t, g) in tensors.iter_mut().zip(&gaps) {
                    shift += g * a;
                    t.offset += shift;
                }
                let mut x = seed | 1;
                let data = tensors
                    .iter()
                    .map(|t| {
                        (0..t.size_bytes())
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                x as u8
                            })
                            .collect()
                    })
                    .collect();
                Case {
                    md,
                    tensors,
                    data,
                    opts: WriteOptions {
                        version,
                        endian,
                        pad_empty_data_section: pad,
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn write_read_write_is_identity(c in case()) {
        let data: Vec<&[u8]> = c.data.iter().map(|d| d.as_slice()).collect();
        let bytes = to_bytes(&c.md, &c.tensors, &data, c.opts).unwrap();
        let h = parse_header(&bytes).unwrap();
        prop_assert_eq!(h.version, c.opts.version);
        prop_assert_eq!(h.endian, c.opts.endian);
        prop_assert_eq!(h.alignment, c.md.alignment());
        // Debug formatting compares NaNs as equal; the byte comparison below checks their bits.
        prop_assert_eq!(format!("{:?}", h.metadata.iter().collect::<Vec<_>>()),
                        format!("{:?}", c.md.iter().collect::<Vec<_>>()));
        prop_assert_eq!(&h.tensors, &c.tensors);
        for (t, d) in h.tensors.iter().zip(&c.data) {
            let s = (h.data_offset + t.offset) as usize;
            prop_assert_eq!(&bytes[s..s + d.len()], d.as_slice());
        }
        let again = to_bytes(&h.metadata, &h.tensors, &data, c.opts).unwrap();
        prop_assert!(again == bytes);
        let report = gguf_format::validate_bytes(&bytes);
        // Random data may hold NaN floats/scales; structure errors must not appear.
        for f in report.errors() {
            prop_assert!(f.message.contains("NaN"), "unexpected finding {}", f);
        }
    }

    #[test]
    fn streaming_writer_matches_in_memory_encoder(c in case()) {
        let data: Vec<&[u8]> = c.data.iter().map(|d| d.as_slice()).collect();
        let bytes = to_bytes(&c.md, &c.tensors, &data, c.opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        let mut w = gguf_format::GgufWriter::create(&p, &c.md, c.tensors.clone(), c.opts).unwrap();
        for d in &c.data {
            // Stream in two pieces to exercise chunked writes.
            let (a, b) = d.split_at(d.len() / 2);
            w.write_tensor_chunks([a, b]).unwrap();
        }
        w.finish().unwrap();
        prop_assert!(std::fs::read(&p).unwrap() == bytes);
        let f = gguf_format::GgufFile::open(&p).unwrap();
        for (t, d) in f.tensors().iter().zip(&c.data) {
            prop_assert_eq!(f.tensor_data(t).unwrap(), d.as_slice());
        }
    }

    #[test]
    fn parts_of_any_size_across_tensors_match_in_memory_encoder(
        c in case(),
        cuts in proptest::collection::vec(1usize..97, 1..8),
    ) {
        let data: Vec<&[u8]> = c.data.iter().map(|d| d.as_slice()).collect();
        let bytes = to_bytes(&c.md, &c.tensors, &data, c.opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        let mut w = gguf_format::GgufWriter::create(&p, &c.md, c.tensors.clone(), c.opts).unwrap();
        prop_assert_eq!(w.file_size(), bytes.len() as u64);
        // Each tensor in parts of varying sizes (zero-byte tensors get no call at all).
        for d in &c.data {
            let mut rest = d.as_slice();
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                w.write_tensor_part(&rest[..n]).unwrap();
                rest = &rest[n..];
                i += 1;
            }
        }
        prop_assert!(w.write_tensor_part(&[1]).is_err(), "data beyond the last tensor");
        w.finish().unwrap();
        prop_assert!(std::fs::read(&p).unwrap() == bytes);
    }
}

#[test]
fn a_part_too_long_or_an_unfinished_tensor_is_refused() {
    use gguf_format::{GgufWriter, Metadata, TensorInfo};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("y.gguf");
    let t = |name: &str| TensorInfo {
        name: name.into(),
        ggml_type: GgmlType::F32,
        shape: vec![3],
        offset: 0,
    };
    let md = Metadata::new();
    let mut w =
        GgufWriter::create_packed(&p, &md, vec![t("a"), t("b")], Default::default()).unwrap();
    w.write_tensor_part(&[7; 8]).unwrap();
    let e = w.write_tensor_part(&[7; 8]).unwrap_err().to_string();
    assert!(e.contains("\"a\"") && e.contains("12 bytes"), "{e}");
    w.write_tensor_part(&[7; 4]).unwrap();
    w.write_tensor_part(&[9; 5]).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("1 of 2 tensors"), "{e}");
    assert!(!p.exists(), "an unfinished file must not appear");
}
