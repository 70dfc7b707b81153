//! End-to-end tests of the `weir` binary against real services; see `tests/`.
