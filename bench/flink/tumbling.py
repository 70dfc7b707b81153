"""Apache Flink's side of `weir bench stream`: the same 1-minute tumbling windows per merchant
(count, sum and average of the amount) over the same payments, read from a CSV file
(id, merchant_id, amount, ts_ms) by Flink SQL in streaming mode on a local mini-cluster with
parallelism 1, results written to CSV files. Prints one JSON object: events, result rows, wall
seconds of the job, and CPU seconds the JVM spent on it (from /proc, JVM start excluded).

Usage: python tumbling.py <events.csv> <results dir>
"""

import json
import os
import sys
import time


def jvm_cpu_seconds(pid):
    """utime + stime of process `pid` and its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    events, out = sys.argv[1], sys.argv[2]
    from pyflink.java_gateway import get_gateway
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    t_env.get_config().set("parallelism.default", "1")
    gateway = get_gateway()
    jvm_pid = gateway.jvm.ProcessHandle.current().pid()
    t_env.execute_sql(f"""
        CREATE TABLE payments (
            id BIGINT, merchant_id BIGINT, amount DOUBLE, ts_ms BIGINT,
            ts AS TO_TIMESTAMP_LTZ(ts_ms, 3),
            WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
        ) WITH ('connector' = 'filesystem', 'path' = '{events}', 'format' = 'csv')
    """)
    t_env.execute_sql(f"""
        CREATE TABLE results (
            merchant_id BIGINT, window_start TIMESTAMP(3), payments BIGINT, amount DOUBLE, avg_amount DOUBLE
        ) WITH ('connector' = 'filesystem', 'path' = '{out}', 'format' = 'csv')
    """)
    cpu, started = jvm_cpu_seconds(jvm_pid), time.monotonic()
    t_env.execute_sql("""
        INSERT INTO results
        SELECT merchant_id, window_start, COUNT(*), SUM(amount), AVG(amount)
        FROM TABLE(TUMBLE(TABLE payments, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
        GROUP BY merchant_id, window_start, window_end
    """).wait()
    seconds, cpu_seconds = time.monotonic() - started, jvm_cpu_seconds(jvm_pid) - cpu
    rows = 0
    for root, _, files in os.walk(out):
        for name in files:
            if not name.endswith(".crc"):
                with open(os.path.join(root, name)) as f:
                    rows += sum(1 for _ in f)
    with open(events) as f:
        count = sum(1 for _ in f)
    print(json.dumps({
        "flink": gateway.jvm.org.apache.flink.runtime.util.EnvironmentInformation.getVersion(),
        "events": count,
        "results": rows,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }))


if __name__ == "__main__":
    main()
