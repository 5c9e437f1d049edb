//! Every GGUF fixture parses, its tensors lie in bounds, and known facts about them hold.

mod common;

use gguf_format::{GgmlType, GgufFile, GgufModel, Value};

#[test]
fn every_fixture_parses() {
    for p in common::all_fixtures()
        .into_iter()
        .chain(common::gguf_py_written())
    {
        let f = GgufFile::open(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(f.version() == 2 || f.version() == 3, "{}", p.display());
        for t in f.tensors() {
            let d = f.tensor_data(t).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(d.len() as u64, t.size_bytes());
        }
        let m = GgufModel::open(&p).unwrap();
        assert_eq!(m.tensor_count(), f.tensors().len());
        assert!(m.metadata().architecture().is_ok(), "{}", p.display());
    }
}

#[test]
fn tiny_gptoss_facts() {
    let p = common::fixtures_dir().join("gpt-oss-tiny/tiny-gptoss-mxfp4-bf16.gguf");
    let m = GgufModel::open(&p).unwrap();
    let md = m.metadata();
    assert_eq!(md.architecture().unwrap(), "gpt-oss");
    assert_eq!(md.arch_key("block_count").unwrap(), "gpt-oss.block_count");
    assert_eq!(md.get_u32(&md.arch_key("block_count").unwrap()).unwrap(), 4);
    assert_eq!(md.get_u64("gpt-oss.embedding_length").unwrap(), 64);
    assert_eq!(md.get_u32("gpt-oss.expert_count").unwrap(), 8);
    assert_eq!(md.get_str("tokenizer.ggml.pre").unwrap(), "gpt-4o");
    assert_eq!(
        md.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        8192
    );
    let e = md.get_str("gpt-oss.block_count").unwrap_err().to_string();
    assert!(
        e.contains("gpt-oss.block_count") && e.contains("expected string") && e.contains("uint32"),
        "{e}"
    );
    let e = md.get_u32("no.such.key").unwrap_err().to_string();
    assert!(e.contains("no.such.key") && e.contains("missing"), "{e}");
    let t = m.tensor("blk.0.ffn_down_exps.weight").unwrap();
    assert_eq!(t.info.ggml_type, GgmlType::MXFP4);
    assert_eq!(t.info.shape, vec![96, 64, 8]);
    assert_eq!(t.data.len(), 96 / 32 * 17 * 64 * 8);
    assert_eq!(&t.mmap[t.range.clone()], t.data);
    assert!(matches!(
        md.get("general.architecture"),
        Some(Value::String(_))
    ));
}

#[test]
fn o200k_merges_are_compact() {
    let p = common::fixtures_dir().join("o200k/o200k_harmony-vocab.gguf");
    let f = GgufFile::open(&p).unwrap();
    let md = f.metadata();
    let merges = md.get_string_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 446189);
    assert_eq!(
        md.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        201088
    );
    assert_eq!(
        md.get_string_array("tokenizer.ggml.tokens").unwrap().len(),
        201088
    );
}

#[test]
fn every_fixture_validates_clean() {
    for p in common::all_fixtures()
        .into_iter()
        .chain(common::gguf_py_written())
    {
        let r = gguf_format::validate(&p);
        if p.to_string_lossy().contains("fuzz/seeds") {
            // The gguf-py-written seeds lack general.quantization_version (a warning), and their
            // Q8_0 blocks are random bytes: s3's second block scale is 0xfe49 big-endian, a NaN
            // (numpy agrees), which must be found; nothing structural may be.
            for f in r.errors() {
                assert!(f.message.contains("NaN/Inf scale"), "{}: {f}", p.display());
            }
            if p.ends_with("s3.gguf") {
                assert!(
                    r.errors().any(|f| f.tensor.as_deref() == Some("b")),
                    "{:#?}",
                    r.findings
                );
            }
        } else {
            assert!(r.findings.is_empty(), "{}: {:#?}", p.display(), r.findings);
        }
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(r.tensors_checked, f.tensors().len());
    }
}

#[test]
fn every_fixture_rewrites_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for p in common::all_fixtures()
        .into_iter()
        .chain(common::gguf_py_written())
    {
        let f = GgufFile::open(&p).unwrap();
        let out = dir.path().join(p.file_name().unwrap());
        let n = gguf_format::rewrite(&f, &out).unwrap();
        let a = std::fs::read(&p).unwrap();
        let b = std::fs::read(&out).unwrap();
        assert_eq!(n, b.len() as u64);
        assert_eq!(a.len(), b.len(), "{}: length differs", p.display());
        if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
            panic!("{}: first difference at byte {i}", p.display());
        }
        // The in-memory encoder agrees with the streaming writer.
        let data: Vec<&[u8]> = f
            .tensors()
            .iter()
            .map(|t| f.tensor_data(t).unwrap())
            .collect();
        let mem = gguf_format::to_bytes(
            f.metadata(),
            f.tensors(),
            &data,
            gguf_format::WriteOptions {
                version: f.version(),
                endian: f.endian(),
                pad_empty_data_section: f.tensors().is_empty() && f.len() > f.header().infos_end,
            },
        )
        .unwrap();
        assert!(mem == a, "{}: to_bytes differs", p.display());
    }
}
