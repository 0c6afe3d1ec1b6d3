"""moed daemon side: the only place MLX lives (store, engine, CLI)."""
