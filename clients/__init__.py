"""moed clients: wire protocol, client library and moectl (no MLX)."""
