"""moed bench: reproducible benchmarks of streaming decode against mlx-lm on the same checkpoint.

Each configuration runs in its own subprocess (`python -m moed.daemon.bench.single`), so peak RSS, the MLX
allocator and imports of one run never colour another; the parent collects one JSON record per run.
"""
