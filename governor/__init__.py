"""moed governor: battery/thermal policy, readings in, limits out (no MLX)."""
