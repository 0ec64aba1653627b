"""HTTP clients of the upstream services, and their circuit-breaker wrappers."""
