import GRDB
import GRDBSQLite

/// A statement used through SQLite's C API, for the hot loops of large files: text bound with
/// SQLITE_TRANSIENT (SQLite copies it), columns compared in place without building Strings. Errors are
/// GRDB's `DatabaseError`, so ``StoreError`` classifies them as for every other write.
final class RawStatement {
    private let connection: OpaquePointer
    private let statement: OpaquePointer

    init(_ connection: OpaquePointer, _ sql: String) throws {
        self.connection = connection
        var prepared: OpaquePointer?
        let code = sqlite3_prepare_v3(connection, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &prepared, nil)
        guard code == SQLITE_OK, let prepared else { throw Self.error(connection, code) }
        statement = prepared
    }

    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    private static func error(_ connection: OpaquePointer, _ code: Int32) -> DatabaseError {
        DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(connection)))
    }

    private func check(_ code: Int32) throws {
        if code != SQLITE_OK { throw Self.error(connection, code) }
    }

    func bind(_ index: Int32, _ text: String) throws {
        var text = text
        try text.withUTF8 { bytes in
            try check(
                sqlite3_bind_text(
                    statement,
                    index,
                    bytes.baseAddress ?? UnsafePointer(bitPattern: 1),
                    Int32(bytes.count),
                    Self.transient
                )
            )
        }
    }

    func bind(_ index: Int32, _ text: String?) throws {
        if let text { try bind(index, text) } else { try check(sqlite3_bind_null(statement, index)) }
    }

    func bind(_ index: Int32, _ value: Int64) throws { try check(sqlite3_bind_int64(statement, index, value)) }

    /// Steps once: true when a row is there (read it, then ``reset()``), false when done.
    func step() throws -> Bool {
        switch sqlite3_step(statement) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        case let code:
            let error = Self.error(connection, code)
            sqlite3_reset(statement)
            throw error
        }
    }

    /// Runs a statement that returns no rows, then resets it.
    func run() throws {
        _ = try step()
        try reset()
    }

    /// Runs an `INSERT … ON CONFLICT DO NOTHING`, then resets it: true when it inserted a row, false
    /// when a unique key was already there (one descent of the index either way).
    func insert() throws -> Bool {
        _ = try step()
        let inserted = sqlite3_changes(connection) > 0
        try reset()
        return inserted
    }

    /// Ready for the next use (every use binds all its parameters again, so bindings are not cleared).
    func reset() throws {
        sqlite3_reset(statement)
    }

    func int(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }

    func text(_ column: Int32) -> String {
        guard let bytes = sqlite3_column_text(statement, column) else { return "" }
        return String(cString: bytes)
    }

    /// Whether the column holds exactly `text` (nil: NULL), compared without building a String.
    func equals(_ column: Int32, _ text: String?) -> Bool {
        guard let text else { return sqlite3_column_type(statement, column) == SQLITE_NULL }
        guard sqlite3_column_type(statement, column) != SQLITE_NULL, let bytes = sqlite3_column_text(statement, column)
        else { return false }
        let count = Int(sqlite3_column_bytes(statement, column))
        return text.utf8.elementsEqual(UnsafeBufferPointer(start: bytes, count: count))
    }

    func finalize() { sqlite3_finalize(statement) }
}
