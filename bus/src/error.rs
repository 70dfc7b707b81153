//! Errors of the bus, saying which topic, file or broker they concern and whether a retry can help.

use std::path::PathBuf;

/// An error of a bus operation.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The topic name breaks Kafka's naming rules.
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic {
        /// The name given.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The topic does not exist (topics are never created implicitly).
    #[error("topic {0:?} does not exist (create it with `weir topics create`)")]
    UnknownTopic(String),
    /// The topic exists already.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// The partition is outside the topic.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: u32,
        /// Partitions the topic has.
        partitions: u32,
    },
    /// A bad argument, such as zero partitions.
    #[error("{0}")]
    InvalidArgument(String),
    /// Another process holds the embedded log.
    #[error(
        "embedded bus directory {dir} is in use by another process ({holder}); open it through weir_bus::open to share it, or stop that process"
    )]
    Locked {
        /// The bus directory.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The embedded log's owner holds its lock but does not answer on its socket.
    #[error(
        "the embedded bus is owned by another process, which does not serve it on {socket}: {reason} (is it a Weir older than this one, or a benchmark?)"
    )]
    NotServed {
        /// The owner's socket.
        socket: PathBuf,
        /// Why connecting failed.
        reason: String,
    },
    /// The connection to the embedded log's owner broke (the owner stopped or was killed).
    #[error("lost the process that owns the embedded bus ({socket}): {reason}")]
    OwnerGone {
        /// The owner's socket.
        socket: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The embedded log's owner failed the request.
    #[error("the process that owns the embedded bus ({socket}) answered: {message}")]
    Owner {
        /// The owner's socket.
        socket: PathBuf,
        /// Its error.
        message: String,
    },
    /// Stored data failed its checksum or framing somewhere other than a torn tail.
    #[error("corrupt record in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// A file-system operation of the embedded log failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A connection setting cannot work (named in the message); nothing was sent.
    #[error("{0}")]
    Config(String),
    /// The Kafka cluster could not be reached in time.
    #[error("Kafka brokers {brokers} unreachable within {timeout_ms} ms: {reason}")]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long we waited.
        timeout_ms: u64,
        /// The client's last error.
        reason: String,
    },
    /// Any other error reported by the Kafka client.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl BusError {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            BusError::Unreachable { .. }
            | BusError::Locked { .. }
            | BusError::NotServed { .. }
            | BusError::OwnerGone { .. } => true,
            BusError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            BusError::Kafka { source, .. } => source
                .rdkafka_error_code()
                .map(|c| {
                    use rdkafka::types::RDKafkaErrorCode as C;
                    matches!(
                        c,
                        C::RequestTimedOut
                            | C::BrokerTransportFailure
                            | C::AllBrokersDown
                            | C::NotLeaderForPartition
                            | C::LeaderNotAvailable
                            | C::NetworkException
                            | C::QueueFull
                            | C::MessageTimedOut
                    )
                })
                .unwrap_or(false),
            _ => false,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BusError::Io { action, path: path.into(), source }
    }

    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        BusError::Kafka { context: context.into(), source }
    }
}
