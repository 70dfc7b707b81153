//! End-to-end tests of the `weir` binary against real services; see `tests/`. The library holds
//! test peers that several crates' tests share: [`https::Receiver`], an HTTPS server that is not
//! ours (Python's `ssl`), with the certificates `scripts/services` made, and [`debezium::peer`],
//! Debezium's own classes run in a JVM, and [`mariadb_pair::Pair`], a MariaDB primary with a GTID
//! replica of its own, for failover tests.

pub mod debezium;
pub mod https;
pub mod mariadb_pair;
