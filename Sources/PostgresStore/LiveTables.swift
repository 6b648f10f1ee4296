import Logging
import PostgresNIO

/// The live tables against the frozen migrations. The record of applied migrations says what was run, not
/// what is there now: a unique constraint dropped by hand, a column altered, a foreign key removed, and
/// every write meets an error it cannot get past (a missing key's `ON CONFLICT` is 42P10: each file kept
/// in processing/ for ever) or, worse, stores twice what a key kept once (found by the hostile review).
///
/// So the migrations are run again into the session's temporary schema (`pg_temp`, no privilege needed
/// beyond TEMP), inside a savepoint rolled back at once, and the catalog's description of those tables —
/// columns (type, NOT NULL, identity, default), constraints (`pg_get_constraintdef`), indexes
/// (`pg_get_indexdef` past the index's name) — is compared with that of the live tables, each described with
/// its own schema first in the search path so that both spell names alike. Names of constraints and
/// indexes are not compared (renaming one is harmless). Every item of the migrations must be there; on
/// carespool's tables, nothing may be added but plain (not unique) indexes; other tables are not looked at.
enum LiveTables {
    /// The differences, at most `limit` of them plus how many more: empty when the tables are the
    /// migrations'.
    static func differences(_ connection: PostgresConnection, _ logger: Logger, limit: Int = 5) async throws
        -> [String]
    {
        try await connection.query("SAVEPOINT carespool_reference", logger: logger)
        try await connection.query("SET LOCAL search_path = pg_temp", logger: logger)
        for migration in PostgresMigrations.all {
            for statement in migration.statements {
                try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
            }
        }
        let reference = try await describe("pg_my_temp_schema()", connection, logger)
        try await connection.query("ROLLBACK TO SAVEPOINT carespool_reference", logger: logger)
        try await connection.query("RELEASE SAVEPOINT carespool_reference", logger: logger)
        let live = try await describe(
            "(SELECT relnamespace FROM pg_class WHERE oid = to_regclass('carespool_migrations'))",
            connection,
            logger
        )
        return compare(reference: reference, live: live, limit: limit)
    }

    /// One item of a table's description.
    struct Item: Hashable, Comparable {
        let table: String
        let kind: String  // column, constraint, index, unique index
        let text: String

        static func < (a: Item, b: Item) -> Bool { (a.table, a.kind, a.text) < (b.table, b.kind, b.text) }

    }

    static func compare(reference: [Item], live: [Item], limit: Int) -> [String] {
        let tables = Set(reference.map(\.table))
        var remaining: [Item: Int] = [:]
        for item in live where tables.contains(item.table) { remaining[item, default: 0] += 1 }
        var missing: [Item] = []
        for item in reference.sorted() {
            if let count = remaining[item], count > 0 {
                remaining[item] = count - 1
            } else {
                missing.append(item)
            }
        }
        let added = remaining.flatMap { item, count in
            item.kind == "index" ? [] : Array(repeating: item, count: count)
        }.sorted()
        let all =
            missing.map { "\($0.table) lacks \($0.kind) \($0.text)" }
            + added.map { "\($0.table) has an added \($0.kind) \($0.text)" }
        guard all.count > limit else { return all }
        return Array(all.prefix(limit)) + ["and \(all.count - limit) more"]
    }

    /// The tables of schema `namespace` (an SQL expression of its OID; constant texts only) but the record
    /// of migrations and the intake's staging table, described with that schema first in the search path.
    private static func describe(_ namespace: String, _ connection: PostgresConnection, _ logger: Logger)
        async throws -> [Item]
    {
        let rows = try await connection.query(
            """
            WITH t AS (
                SELECT c.oid, c.relname FROM pg_class c
                WHERE c.relnamespace = \(unescaped: namespace) AND c.relkind IN ('r', 'p')
                  AND c.relname NOT IN ('carespool_migrations', 'carespool_intake_stage')
            )
            SELECT t.relname, 'column',
                   a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                   || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
                   || CASE a.attidentity WHEN 'a' THEN ' ALWAYS AS IDENTITY' WHEN 'd' THEN ' BY DEFAULT AS IDENTITY'
                      ELSE '' END
                   || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
            FROM t JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
            LEFT JOIN pg_attrdef d ON d.adrelid = t.oid AND d.adnum = a.attnum
            UNION ALL
            SELECT t.relname, 'constraint', pg_get_constraintdef(k.oid)
            FROM t JOIN pg_constraint k ON k.conrelid = t.oid
            UNION ALL
            SELECT t.relname, CASE WHEN i.indisunique THEN 'unique index' ELSE 'index' END,
                   substring(pg_get_indexdef(i.indexrelid) FROM ' USING (.*)$')
            FROM t JOIN pg_index i ON i.indrelid = t.oid
            """,
            logger: logger
        )
        var items: [Item] = []
        for try await (table, kind, text) in rows.decode((String, String, String).self) {
            items.append(Item(table: table, kind: kind, text: text))
        }
        return items
    }
}
