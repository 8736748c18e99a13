"""User-facing tools behind the `gato-ros` command; each module exposes `main(argv) -> int`."""
