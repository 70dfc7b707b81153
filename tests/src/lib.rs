//! # weir-e2e — the end-to-end tests and what they share
//!
//! `tests/tests/*.rs` run several roles as processes of the `weir` binary against the real
//! services `scripts/services` starts on loopback (the README's table says which file tests
//! what). This library is what they, and the crates' own tests, share:
//! - [`harness`]: the `weir` binary under test, processes killed when a test ends
//!   ([`harness::Proc`]), the test services' addresses, `weir up` started and waited for;
//! - [`https::Receiver`], an HTTPS server that is not ours (Python's `ssl`), with the
//!   certificates `scripts/services` made;
//! - [`debezium::peer`], Debezium's own classes run in a JVM;
//! - [`mariadb_pair::Pair`], a MariaDB primary with a GTID replica of its own, for failover tests;
//! - [`alertmanager::Alertmanager`], a real Prometheus Alertmanager with a test's own configuration.

pub mod alertmanager;
pub mod debezium;
pub mod harness;
pub mod https;
pub mod mariadb_pair;
