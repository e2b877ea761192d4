"""Latency profiling of engines: one implementation of interleaved timing and its statistics.

Used by ``graphopt profile``, the latency rows of ``graphopt optimize``'s report and the benchmarks
under ``tools/`` (through ``tools/bench_lib.py``), so every latency number graphopt prints is
measured and summarised the same way. The profiler depends on engines, never the reverse.
"""
