// The precompiled LibTorch and Google Benchmark header for the benchmarks is built with this empty file.
