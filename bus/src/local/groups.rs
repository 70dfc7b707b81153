//! Consumer groups of the embedded log: members, partition assignment and committed offsets.
//!
//! Members live in this process (the embedded log is owned by one process; other processes'
//! members are held here for them by its server). A partition moves between members as in
//! Kafka's eager rebalance: the new owner starts reading it only after the old one noticed the
//! rebalance (at its next poll, after committing what it read), so that a group reads each
//! record once when its members commit before polling again. Committed offsets
//! are persisted per group in `groups/<hex of group name>.offsets`, one `topic partition offset`
//! line each, replaced atomically (write a temporary file, then rename) on every commit.
//! Committed offsets also hold retention back ([`Groups::needed_from`]).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::{BusError, Result, TopicPartition, config::Fsync};

/// One group's state.
#[derive(Default)]
struct Group {
    committed: BTreeMap<TopicPartition, i64>,
    /// When it last committed (its offsets file's time after a restart).
    last_commit: Option<SystemTime>,
    /// Member id → subscribed topics.
    members: BTreeMap<u64, Vec<String>>,
    /// Bumped at every membership change; members compare it to notice a rebalance.
    generation: u64,
    assignment: HashMap<u64, Vec<TopicPartition>>,
    /// Which member reads each partition now; it lets go at its next look at the assignment.
    held: HashMap<TopicPartition, u64>,
}

/// What a member may read after a look at its group.
pub(crate) struct Taken {
    /// The generation it looked at.
    pub generation: u64,
    /// Its partitions that no other member still reads.
    pub partitions: Vec<TopicPartition>,
    /// Whether that is all of its assignment (else it looks again at its next poll).
    pub complete: bool,
    /// Whether it let go of partitions another member waits for.
    pub released: bool,
}

/// Every group of one embedded log.
pub(crate) struct Groups {
    dir: PathBuf,
    fsync: Fsync,
    groups: HashMap<String, Group>,
    next_member: u64,
}

impl Groups {
    /// Loads the committed offsets of every group under `dir`.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| BusError::io("creating", dir, e))?;
        let mut groups = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| BusError::io("listing", dir, e))? {
            let path = entry.map_err(|e| BusError::io("listing", dir, e))?.path();
            let Some(name) =
                path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".offsets")).and_then(unhex)
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| BusError::io("reading", &path, e))?;
            let mut committed = BTreeMap::new();
            for (n, line) in text.lines().enumerate() {
                let mut parts = line.split(' ');
                let parsed = (|| {
                    let topic = parts.next()?.to_string();
                    let partition = parts.next()?.parse().ok()?;
                    let offset = parts.next()?.parse().ok()?;
                    Some((TopicPartition { topic, partition }, offset))
                })();
                let (tp, offset) = parsed.ok_or_else(|| BusError::Corrupt {
                    path: path.clone(),
                    position: n as u64 + 1,
                    reason: format!("line {} is not 'topic partition offset': {line:?}", n + 1),
                })?;
                committed.insert(tp, offset);
            }
            let last_commit = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            groups.insert(name, Group { committed, last_commit, ..Group::default() });
        }
        Ok(Groups { dir: dir.to_path_buf(), fsync, groups, next_member: 1 })
    }

    /// Adds a member subscribed to `topics` and rebalances; `partitions` gives a topic's count.
    pub fn join(&mut self, group: &str, topics: Vec<String>, partitions: &dyn Fn(&str) -> Option<u32>) -> u64 {
        let id = self.next_member;
        self.next_member += 1;
        let g = self.groups.entry(group.to_string()).or_default();
        g.members.insert(id, topics);
        rebalance(g, partitions);
        id
    }

    /// Removes a member and rebalances the rest.
    pub fn leave(&mut self, group: &str, member: u64, partitions: &dyn Fn(&str) -> Option<u32>) {
        if let Some(g) = self.groups.get_mut(group)
            && g.members.remove(&member).is_some()
        {
            g.held.retain(|_, holder| *holder != member);
            rebalance(g, partitions);
        }
    }

    /// Lets go of this member's partitions that went to others, and takes those of its
    /// assignment that nobody else still reads.
    pub fn take(&mut self, group: &str, member: u64) -> Taken {
        let Some(g) = self.groups.get_mut(group) else {
            return Taken { generation: 0, partitions: Vec::new(), complete: true, released: false };
        };
        let assigned = g.assignment.get(&member).cloned().unwrap_or_default();
        let before = g.held.len();
        g.held.retain(|tp, holder| *holder != member || assigned.contains(tp));
        let released = g.held.len() < before;
        let wanted = assigned.len();
        let mut partitions = Vec::new();
        for tp in assigned {
            let holder = *g.held.entry(tp.clone()).or_insert(member);
            if holder == member {
                partitions.push(tp);
            }
        }
        let complete = partitions.len() == wanted;
        Taken { generation: g.generation, partitions, complete, released }
    }

    /// The group's generation and this member's assigned partitions (whether or not another
    /// member still reads some of them).
    #[cfg(test)]
    pub fn assignment(&self, group: &str, member: u64) -> (u64, Vec<TopicPartition>) {
        match self.groups.get(group) {
            Some(g) => (g.generation, g.assignment.get(&member).cloned().unwrap_or_default()),
            None => (0, Vec::new()),
        }
    }

    /// The generation only, to check cheaply for a rebalance.
    pub fn generation(&self, group: &str) -> u64 {
        self.groups.get(group).map_or(0, |g| g.generation)
    }

    /// The committed offset of one partition.
    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<i64> {
        self.groups.get(group).and_then(|g| g.committed.get(tp).copied())
    }

    /// Records and persists commits.
    pub fn commit(&mut self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let g = self.groups.entry(group.to_string()).or_default();
        let mut next = g.committed.clone();
        for (tp, offset) in offsets {
            next.insert(tp.clone(), *offset);
        }
        let mut text = String::new();
        for (tp, offset) in &next {
            text.push_str(&format!("{} {} {}\n", tp.topic, tp.partition, offset));
        }
        let path = self.dir.join(format!("{}.offsets", hex(group)));
        let tmp = self.dir.join(format!("{}.offsets.tmp", hex(group)));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            if self.fsync == Fsync::Always {
                f.sync_data()?;
            }
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| BusError::io("writing committed offsets to", &path, e))?;
        g.committed = next;
        g.last_commit = Some(SystemTime::now());
        Ok(())
    }

    /// The lowest offset of `tp` that a group still needs: the least committed offset among the
    /// groups that have members or committed within `idle_expiry` of `now`. `None` when no
    /// such group committed on `tp`.
    pub fn needed_from(&self, tp: &TopicPartition, now: SystemTime, idle_expiry: Duration) -> Option<i64> {
        self.groups
            .values()
            .filter(|g| {
                !g.members.is_empty()
                    || g.last_commit.is_some_and(|t| now.duration_since(t).unwrap_or_default() <= idle_expiry)
            })
            .filter_map(|g| g.committed.get(tp).copied())
            .min()
    }
}

/// Kafka's range assignor: per topic, members (in id order) get contiguous runs of partitions.
fn rebalance(g: &mut Group, partitions: &dyn Fn(&str) -> Option<u32>) {
    g.generation += 1;
    g.assignment.clear();
    let mut all_topics: Vec<&String> = g.members.values().flatten().collect();
    all_topics.sort();
    all_topics.dedup();
    for topic in all_topics {
        let Some(count) = partitions(topic) else { continue };
        let members: Vec<u64> = g.members.iter().filter(|(_, ts)| ts.contains(topic)).map(|(id, _)| *id).collect();
        let per = count / members.len() as u32;
        let extra = count % members.len() as u32;
        let mut next = 0;
        for (i, member) in members.iter().enumerate() {
            let n = per + u32::from((i as u32) < extra);
            let owned = g.assignment.entry(*member).or_default();
            owned.extend((next..next + n).map(|p| TopicPartition::new(topic.clone(), p)));
            next += n;
        }
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_assignment_covers_every_partition_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Groups::open(dir.path(), Fsync::Never).unwrap();
        let counts = |t: &str| match t {
            "a" => Some(5),
            "b" => Some(2),
            _ => None,
        };
        let topics = vec!["a".to_string(), "b".to_string()];
        let m1 = groups.join("g", topics.clone(), &counts);
        let m2 = groups.join("g", topics, &counts);
        let (gen1, a1) = groups.assignment("g", m1);
        let (gen2, a2) = groups.assignment("g", m2);
        assert_eq!(gen1, gen2);
        let mut all: Vec<_> = a1.iter().chain(a2.iter()).cloned().collect();
        all.sort();
        let expected: Vec<_> =
            (0..5).map(|p| TopicPartition::new("a", p)).chain((0..2).map(|p| TopicPartition::new("b", p))).collect();
        assert_eq!(all, expected);
        assert_eq!(a1.len(), 4, "first member takes the extra partition of 'a'");
        groups.leave("g", m1, &counts);
        assert_eq!(groups.assignment("g", m2).1.len(), 7);
    }

    #[test]
    fn a_partition_moves_only_once_its_reader_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Groups::open(dir.path(), Fsync::Never).unwrap();
        let counts = |_: &str| Some(2);
        let m1 = groups.join("g", vec!["t".into()], &counts);
        assert_eq!(groups.take("g", m1).partitions.len(), 2);
        let m2 = groups.join("g", vec!["t".into()], &counts);
        // m1 has not looked since: m2 may not read the partition it gets yet.
        let t2 = groups.take("g", m2);
        assert!(t2.partitions.is_empty() && !t2.complete);
        let t1 = groups.take("g", m1);
        assert!(t1.released && t1.partitions.len() == 1 && t1.complete);
        let t2 = groups.take("g", m2);
        assert!(t2.complete && t2.partitions.len() == 1 && t2.partitions != t1.partitions);
        // A member that leaves lets go of everything at once.
        groups.leave("g", m2, &counts);
        let t1 = groups.take("g", m1);
        assert!(t1.complete && t1.partitions.len() == 2);
    }

    #[test]
    fn the_least_offset_of_groups_not_idle_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Groups::open(dir.path(), Fsync::Never).unwrap();
        let tp = TopicPartition::new("t", 0);
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        assert_eq!(groups.needed_from(&tp, now, day), None);
        groups.commit("lake", &[(tp.clone(), 70)]).unwrap();
        groups.commit("stream", &[(tp.clone(), 40), (TopicPartition::new("t", 1), 5)]).unwrap();
        assert_eq!(groups.needed_from(&tp, now, day), Some(40));
        assert_eq!(groups.needed_from(&TopicPartition::new("t", 1), now, day), Some(5));
        // A day later both are idle: nothing holds the partition back…
        assert_eq!(groups.needed_from(&tp, now + 2 * day, day), None);
        // … unless a member is in the group.
        let member = groups.join("stream", vec!["t".into()], &|_| Some(2));
        assert_eq!(groups.needed_from(&tp, now + 2 * day, day), Some(40));
        groups.leave("stream", member, &|_| Some(2));
        // After a restart the offsets file's time stands for the last commit.
        let groups = Groups::open(dir.path(), Fsync::Never).unwrap();
        assert_eq!(groups.needed_from(&tp, SystemTime::now(), day), Some(40));
        assert_eq!(groups.needed_from(&tp, now + 2 * day, day), None);
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut groups = Groups::open(dir.path(), Fsync::Never).unwrap();
        groups.commit("group one/ä", &[(TopicPartition::new("t", 3), 42)]).unwrap();
        let groups = Groups::open(dir.path(), Fsync::Never).unwrap();
        assert_eq!(groups.committed("group one/ä", &TopicPartition::new("t", 3)), Some(42));
        assert_eq!(groups.committed("group one/ä", &TopicPartition::new("t", 0)), None);
    }
}
