"""Time gguf-py's GGUFReader(path) (its open + header parse) on the files the Rust bench uses.

Usage: .venv/bin/python gguf-format/benches/gguf_py_open.py FILE... (run the cargo bench first:
it writes the synthetic files to $GGUF_BENCH_DIR or /tmp)."""
import statistics, sys, time
import gguf

for path in sys.argv[1:]:
    times = []
    for _ in range(5):
        t = time.perf_counter()
        r = gguf.GGUFReader(path)
        times.append(time.perf_counter() - t)
        del r
    print(f"{path}: median {statistics.median(times)*1e3:.1f} ms, min {min(times)*1e3:.1f} ms over {len(times)} runs")
