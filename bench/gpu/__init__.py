"""One prepared acceptance run on a CUDA GPU: GPU tests, step, loader and end-to-end benches, one report.

    python -m bench.gpu [--out DIR] [--shards DIR] [--parts ...] [--budget-s 525] [--dry-run]
    python -m bench.gpu make-shards DIR [--dry-run]

See bench/gpu/README.md for how it is run on a lent GPU machine; `--dry-run` runs the same script
end to end on a CPU at toy sizes (CI does).
"""
