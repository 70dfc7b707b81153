"""Weir's embedded schema registry through Confluent's own Python client (confluent-kafka's
SchemaRegistryClient): registration under compatibility levels, the compatibility check, levels per
subject and global, soft and permanent deletes, schema ids' versions, error codes.

Usage: confluent_registry.py URL. Prints one line per check; exits non-zero at the first failure."""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

c = SchemaRegistryClient({"url": sys.argv[1]})


def record(*fields):
    return Schema(json.dumps({"type": "record", "name": "Order", "namespace": "shop", "fields": list(fields)}), "AVRO")


def refused(call, code):
    try:
        call()
    except SchemaRegistryError as e:
        assert e.error_code == code, (e.error_code, e.error_message)
        return e
    raise AssertionError(f"expected error {code}")


v1 = record({"name": "id", "type": "long"})
v2 = record({"name": "id", "type": "long"}, {"name": "note", "type": ["null", "string"], "default": None})
required = record({"name": "id", "type": "long"}, {"name": "status", "type": "string"})
retyped = record({"name": "id", "type": "string"})

assert c.get_compatibility() == "BACKWARD", "Confluent's default"
id1 = c.register_schema("orders-value", v1)
assert c.test_compatibility("orders-value", v2) is True
assert c.test_compatibility("orders-value", retyped) is False
assert c.test_compatibility("orders-value", required, version=1) is False
assert c.test_compatibility_all_versions("orders-value", v2) is True
id2 = c.register_schema("orders-value", v2)
assert id2 != id1
e = refused(lambda: c.register_schema("orders-value", retyped), 409)
assert e.http_status_code == 409 and "orders-value" in e.error_message, e.error_message
assert c.get_versions("orders-value") == [1, 2], "a refused schema is no version"
print("ok BACKWARD by default: compatible schemas register, an incompatible one is refused (409)")

assert c.set_compatibility("orders-value", "NONE") == {"compatibility": "NONE"}  # the PUT answer, as Confluent sends it
assert c.get_compatibility("orders-value") == "NONE"
assert c.get_compatibility() == "BACKWARD", "the global level is unchanged"
id3 = c.register_schema("orders-value", retyped)
assert c.get_versions("orders-value") == [1, 2, 3]
assert c.set_compatibility(level="FULL") == {"compatibility": "FULL"}
assert c.get_compatibility() == "FULL"
assert c.get_compatibility("orders-value") == "NONE", "a subject's own level wins"
refused(lambda: c.set_compatibility("orders-value", "SOMETIMES"), 42203)
refused(lambda: c.get_compatibility("payments-value"), 40408)
c.register_schema("payments-value", v1)
refused(lambda: c.register_schema("payments-value", required), 409)  # FULL, from the global level
print("ok levels per subject and global (NONE, FULL), invalid level 42203, unset subject level 40408")

versions = c.get_schema_versions(id1)
assert [(v.subject, v.version) for v in versions] == [("orders-value", 1), ("payments-value", 1)], versions
assert c.get_schema_types() == ["AVRO"]
assert json.loads(c.get_schema(id3).schema_str)["fields"][0]["type"] == "string"
print("ok schema ids' versions, schema types, schema by id")

assert c.delete_version("orders-value", 3) == 3
assert c.get_versions("orders-value") == [1, 2]
refused(lambda: c.delete_version("orders-value", 3), 40406)
assert c.delete_version("orders-value", 3, permanent=True) == 3
refused(lambda: c.delete_version("orders-value", 2, permanent=True), 40407)
refused(lambda: c.delete_subject("payments-value", permanent=True), 40405)
assert c.delete_subject("orders-value") == [1, 2]
assert "orders-value" not in c.get_subjects()
refused(lambda: c.get_versions("orders-value"), 40401)
refused(lambda: c.delete_subject("orders-value"), 40404)
assert c.delete_subject("orders-value", permanent=True) == [1, 2]
# A permanently deleted subject starts again at version 1.
c.set_compatibility(level="BACKWARD")
c.register_schema("orders-value", v1)
assert c.get_versions("orders-value") == [1]
print("ok soft and permanent deletes of versions and subjects, with Confluent's codes (40404-40407)")
print("all registry checks passed")
