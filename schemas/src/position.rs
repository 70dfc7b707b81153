//! A binlog source position as text, `file:pos:row`: the lake's `_pos` column and the `weir.pos`
//! header of MySQL change records. Positions of one server sort in binlog order (file names, then
//! the event's start, then the row within the event), so any reader can tell which of two
//! changes came first or drop one it already has.

/// A binlog position: file, event start, row within the event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Binlog file (`mysql-bin.000003`: one server's names sort in binlog order).
    pub file: String,
    /// The event's start in the file.
    pub pos: u64,
    /// The row within the event.
    pub row: u64,
}

impl Position {
    /// `file:pos:row`.
    pub fn encode(&self) -> bytes::Bytes {
        bytes::Bytes::from(format!("{}:{}:{}", self.file, self.pos, self.row))
    }

    /// Reads `file:pos:row` (the file may itself contain `:`).
    pub fn parse(bytes: &[u8]) -> Option<Position> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (rest, row) = text.rsplit_once(':')?;
        let (file, pos) = rest.rsplit_once(':')?;
        Some(Position { file: file.to_string(), pos: pos.parse().ok()?, row: row.parse().ok()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_and_sort_in_binlog_order() {
        let p = |file: &str, pos, row| Position { file: file.into(), pos, row };
        assert_eq!(Position::parse(&p("mysql-bin.000002", 1234, 3).encode()), Some(p("mysql-bin.000002", 1234, 3)));
        assert_eq!(Position::parse(b"host:bin.1:7:0"), Some(p("host:bin.1", 7, 0)));
        assert_eq!(Position::parse(b"nonsense"), None);
        assert!(p("mysql-bin.000001", 900, 0) < p("mysql-bin.000001", 1000, 0));
        assert!(p("mysql-bin.000001", 1000, 9) < p("mysql-bin.000002", 4, 0));
        assert!(p("mysql-bin.000001", 1000, 1) < p("mysql-bin.000001", 1000, 2));
    }
}
