"""The library behind tools/bench.py (`make bench`), one job a module.

* `output`: the bench's progress lines.
* `procs`: running the tools: preparation commands, and timed pipelines with their peak RSS.
* `loop_targets`: fresh loop devices to write to, and checking what was written.
* `artifacts`: the cached image, its zstd files, manifest and bmap, built when missing.
* `contenders`: the tools measured, one row each.
* `runs`: running the rows, interleaved, and what each run measured.
* `report`: the table, the PASS/FAIL checks against the goals, results.json.

tools/bench_tui.py and tools/bench_server.py use the artifacts and loop targets too. Like the
scripts, these modules import `tools.mkdiskimage`, so the repository must be on sys.path.
"""
