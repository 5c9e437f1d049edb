//! Fuzz the GGUF reader: any bytes must give a header or an error, never a panic, hang or
//! unbounded allocation; whatever parses must re-encode to bytes that parse to the same header,
//! and validation must run to completion.
#![no_main]

use gguf_format::{WriteOptions, parse_header, to_bytes, validate_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let report = validate_bytes(data);
    let Ok(h) = parse_header(data) else {
        assert!(!report.is_valid());
        return;
    };
    for (k, v) in h.metadata.iter() {
        let _ = (
            v.to_json(),
            h.metadata.get_u64(k),
            h.metadata.get_str_array(k),
        );
    }
    // Re-encode in memory with zeroed tensor data (the data may lie outside `data`), unless
    // the header describes a data section too large to build in memory.
    let end = h
        .tensors
        .iter()
        .map(|t| t.offset.saturating_add(t.size_bytes()))
        .max()
        .unwrap_or(0);
    if end > 1 << 24 {
        return;
    }
    let zeros: Vec<Vec<u8>> = h
        .tensors
        .iter()
        .map(|t| vec![0u8; t.size_bytes() as usize])
        .collect();
    let refs: Vec<&[u8]> = zeros.iter().map(|z| z.as_slice()).collect();
    let opts = WriteOptions {
        version: h.version,
        endian: h.endian,
        ..Default::default()
    };
    if let Ok(bytes) = to_bytes(&h.metadata, &h.tensors, &refs, opts) {
        let h2 = parse_header(&bytes).expect("re-encoded header must parse");
        assert_eq!(
            format!("{:?}", h2.metadata.iter().collect::<Vec<_>>()),
            format!("{:?}", h.metadata.iter().collect::<Vec<_>>())
        );
        assert_eq!(h2.tensors, h.tensors);
    }
});
