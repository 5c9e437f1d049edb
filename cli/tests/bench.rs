//! `gptoss bench` and `gptoss compare` on the tiny model / preset with the CPU backend.

mod common;

use common::*;

#[test]
fn bench_reports_every_format() {
    let m = tiny().join("tiny-gptoss-mxfp4-q8_0.gguf");
    let out = gptoss(&[
        "bench",
        "-m",
        s(&m),
        "--backend",
        "cpu",
        "-p",
        "16,32",
        "-n",
        "4",
        "-r",
        "2",
        "-o",
        "json",
        "-q",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "pp16, pp32, tg4");
    let tests: Vec<_> = rows
        .iter()
        .map(|r| r["test"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tests, ["pp16", "pp32", "tg4"]);
    for r in rows {
        assert!(r["tokens_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(r["samples"].as_array().unwrap().len(), 2);
        assert!(r["backend"].as_str().unwrap().starts_with("cpu"));
        // The file's tensor bytes and parameter count: 1.58 MB, 1.75 M parameters, ~7.2 bpw.
        let bpw = r["bpw"].as_f64().unwrap();
        assert!((bpw - 7.23).abs() < 0.05, "bpw {bpw}");
        assert!(r["peak_memory_bytes"].as_u64().unwrap() > 1 << 20);
    }
    let md = gptoss(&[
        "bench",
        "-m",
        s(&m),
        "--backend",
        "cpu",
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "-q",
    ]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(
        md.starts_with("| model | size | params | bpw | backend | test | t/s | peak mem |"),
        "{md}"
    );
    assert_eq!(md.lines().count(), 4);
    let csv = gptoss(&[
        "bench",
        "-m",
        s(&m),
        "--backend",
        "cpu",
        "-p",
        "8",
        "-n",
        "0",
        "-r",
        "1",
        "-o",
        "csv",
        "-q",
    ]);
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.lines().nth(1).unwrap().contains(",pp8,8,0,"), "{csv}");
}

#[test]
fn bench_with_depth_and_bad_arguments() {
    let m = tiny().join("tiny-gptoss-mxfp4-q8_0.gguf");
    let out = gptoss(&[
        "bench",
        "-m",
        s(&m),
        "--backend",
        "cpu",
        "-p",
        "8",
        "-n",
        "2",
        "-d",
        "0,16",
        "-r",
        "1",
        "-o",
        "json",
        "-q",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tests: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tests, ["pp8", "tg2", "pp8 @ d16", "tg2 @ d16"]);
    let bad = gptoss_raw(&["bench", "-m", s(&m), "--backend", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown backend"));
    let bad = gptoss_raw(&["bench", "-m", s(&m), "-o", "xml"]);
    assert!(!bad.status.success());
}

#[test]
fn compare_tiny_on_cpu_prints_the_table() {
    let out = gptoss(&[
        "compare",
        "--preset",
        "tiny",
        "--backend",
        "cpu",
        "--types",
        "mxfp4_moe,q8_0,q4_0,bf16",
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "-q",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| type") && !l.starts_with("| ---"))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    assert!(
        rows[0].starts_with("| mxfp4_moe |")
            && rows[0].contains("| 1.00x | 1.00x | 1.00x | 1.00x |"),
        "{}",
        rows[0]
    );
    for r in &rows {
        assert!(!r.contains("not measured"), "{r}");
    }
    // File sizes relative to MXFP4: BF16 matrices are bigger, Q4_0 smaller than Q8_0.
    let size_ratio = |r: &str| {
        r.split('|')
            .nth(6)
            .unwrap()
            .trim()
            .trim_end_matches('x')
            .parse::<f64>()
            .unwrap()
    };
    assert!(size_ratio(rows[3]) > size_ratio(rows[1]) && size_ratio(rows[1]) > size_ratio(rows[2]));
}
