"""Reads topics through Confluent's own Kafka client and Avro deserializer, as a Debezium
consumer would: `confluent_kafka.Consumer` on the test broker, `AvroDeserializer` with a
`SchemaRegistryClient` on Weir's registry. Prints one JSON line per record:
{"topic", "key", "value"} with Avro decoded to plain JSON (bytes as hex, decimals as strings),
`null` for a tombstone. Stops once `expected` records are read, or fails after 60 s.

usage: confluent_consumer.py <brokers> <registry url> <expected records> <topic>...
"""

import decimal
import json
import sys
import time

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def main():
    brokers, registry_url, expected, topics = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"confluent-check-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    read = 0
    deadline = time.monotonic() + 60
    while read < expected:
        if time.monotonic() > deadline:
            sys.exit(f"read {read} of {expected} records in 60 s")
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            sys.exit(f"consumer error: {msg.error()}")
        topic = msg.topic()
        key = deserialize(msg.key(), SerializationContext(topic, MessageField.KEY)) if msg.key() else None
        value = deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE)) if msg.value() else None
        print(json.dumps({"topic": topic, "key": plain(key), "value": plain(value)}), flush=True)
        read += 1
    consumer.close()


main()
