"""The library behind tools/bench.py (`make bench`), one job a module.

* `output`: the bench's progress lines.
* `procs`: running the tools: preparation commands, and timed pipelines with their peak RSS.
* `loop_targets`: the setups (direct-I/O or plain loop devices), fresh loop devices to write to,
  making a target's backing file durable, and checking what was written.
* `artifacts`: the cached image, its compressed files (zst, packed, xz, gz, qcow2) with their
  manifests, and a bmap, built when missing.
* `contenders`: the formats and the tools measured, one row each.
* `stages`: a script: each stage of bty alone (decompress, hash, data write, zeroout), self-timed.
* `runs`: running the rows, interleaved, and what each run measured (bty: its receipt too).
* `report`: the tables, the PASS/FAIL checks against the goals, bty's stage timelines, results.json
  and the Markdown table.
* `reflash`: the reflash scenario of tools/bench_reflash.py: v2 (v1 with scattered ranges changed),
  its packed file and casync store, targets holding v1, the rows, their device I/O and the results.

tools/bench_tui.py and tools/bench_server.py use the artifacts and loop targets too. Like the
scripts, these modules import `tools.mkdiskimage`, so the repository must be on sys.path.
"""
