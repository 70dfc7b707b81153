"""Decodes Confluent-framed Avro messages with fastavro, as a Python Debezium consumer would.

Input (argv[1]): {"schemas": {"<id>": "<schema json>"}, "messages": ["<hex>", ...]}
Output (stdout): [{"schema_id": N, "value": {...}}, ...] with bytes as hex and decimals as strings.
"""
import io
import json
import sys

from fastavro import parse_schema, schemaless_reader

data = json.load(open(sys.argv[1]))
schemas = {int(k): parse_schema(json.loads(v)) for k, v in data["schemas"].items()}
out = []
for hexed in data["messages"]:
    raw = bytes.fromhex(hexed)
    assert raw[0] == 0, f"magic byte {raw[0]}"
    schema_id = int.from_bytes(raw[1:5], "big")
    buf = io.BytesIO(raw[5:])
    value = schemaless_reader(buf, schemas[schema_id])
    assert buf.read() == b"", "trailing bytes after the record"
    out.append({"schema_id": schema_id, "value": value})


def default(o):
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    return str(o)


print(json.dumps(out, default=default))
