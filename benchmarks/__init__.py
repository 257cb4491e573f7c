"""Benchmarks: how fast, how close to the machine's limit, how efficient the search is.

`python -m benchmarks [--smoke-test] [--only NAME[,NAME]] [--data DIR]` (or `make bench`) runs
overhead, precision, roofline, datapath, search and scaling; each writes
`benchmarks/results/<name>.json`, and `benchmarks/RESULTS.md` is rebuilt from all of them.
"""
