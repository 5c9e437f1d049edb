//! `GgufFile::to_json` (what `gptoss inspect --json` prints) agrees with gguf-py's GGUFReader on
//! every fixture: version, alignment, every key and value (arrays in full, key order included),
//! tensor names, types, shapes (ggml order), offsets and sizes.

mod common;

use std::process::Command;

const SCRIPT: &str = r#"
import json, math, sys
import gguf
from gguf import GGUFValueType as T

def fl(x):
    x = float(x)
    if math.isnan(x): return "nan"
    if math.isinf(x): return "inf" if x > 0 else "-inf"
    return x

def conv(field):
    main = field.types[0]
    v = field.contents()
    if main == T.ARRAY:
        sub = field.types[-1]
        if sub in (T.FLOAT32, T.FLOAT64):
            return [fl(x) for x in v]
        if sub == T.BOOL:
            return [bool(x) for x in v]
        return list(v)
    if main in (T.FLOAT32, T.FLOAT64):
        return fl(v)
    if main == T.BOOL:
        return bool(v)
    return v

r = gguf.GGUFReader(sys.argv[1])
md = {}
for name, field in r.fields.items():
    if name.startswith("GGUF."):
        continue
    md[name] = conv(field)
out = {
    "version": int(r.fields["GGUF.version"].parts[-1][0]),
    "alignment": int(r.alignment),
    "metadata": md,
    "tensors": [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "shape": [int(x) for x in t.shape],
            "offset": int(t.data_offset - r.data_offset),
            "size_bytes": int(t.n_bytes),
        }
        for t in r.tensors
    ],
}
json.dump(out, sys.stdout)
"#;

#[test]
fn inspect_json_agrees_with_gguf_py() {
    let py = common::oracle_python();
    for p in common::all_fixtures()
        .into_iter()
        .chain(common::gguf_py_written())
    {
        let out = Command::new(&py)
            .arg("-c")
            .arg(SCRIPT)
            .arg(&p)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
        assert!(
            out.status.success(),
            "gguf-py failed on {}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let f = gguf_format::GgufFile::open(&p).unwrap();
        let ours = f.to_json();
        for k in ["version", "alignment", "tensors"] {
            assert_eq!(ours[k], theirs[k], "{}: {k} differs", p.display());
        }
        let (om, tm) = (
            ours["metadata"].as_object().unwrap(),
            theirs["metadata"].as_object().unwrap(),
        );
        let ok: Vec<&String> = om.keys().collect();
        let tk: Vec<&String> = tm.keys().collect();
        assert_eq!(ok, tk, "{}: keys or key order differ", p.display());
        for (k, v) in om {
            assert!(v == &tm[k], "{}: value of {k} differs", p.display());
        }
        assert!(!om.is_empty());
    }
}
