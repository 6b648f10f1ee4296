// Store: carespool's SQLite database through GRDB: frozen migrations, the `files` ledger, per-kind writes.
//
// Trusts the records it is handed (Kinds validated them). Every write is one invariant-preserving
// transaction: the records of a batch of files and their ledger rows commit together or not at all.
// Never logs, and keeps statement arguments out of errors (`publicStatementArguments` stays false).

import CSQLiteTuning
package import GRDB
import JSONSchema
package import Kinds
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// SQLite's memory statistics, off before the process's first connection: Debian's build counts every
/// allocation under one global mutex (it has no lookaside allocator), which the intake's chunk writer
/// paid on every row. Nothing in carespool reads the statistics. Too late (SQLite already initialised,
/// as in tests that opened a database another way first) changes nothing and is harmless.
private let memoryStatisticsOff: Int32 = carespool_sqlite_memstatus_off()

/// The database: a `Sendable` value over a GRDB writer, as in GRDB's demo `AppDatabase`.
package struct AppDatabase: Sendable {
    package let writer: any DatabaseWriter
    /// A connection of its own for WAL checkpoints, so that copying the WAL into the database file (and
    /// that file's fsync) never runs inside a commit that files are waiting on. Nil in memory.
    private let checkpointer: DatabaseQueue?
    /// The large file's chunk transaction left open between chunks, if any (``writeChunk(_:fileID:)``).
    private let chunkTransaction = ChunkTransaction()
    /// Which verdicts owe a notification, to which targets (none: nothing is queued).
    package var notify = NotifyPolicy()
    /// The host named in each verdict's ledger row (`serve --host-name`, else the machine's name).
    package var host = Self.machineName

    /// This machine's host name (`gethostname`), "unknown" when it has none.
    package static var machineName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "unknown" : name
    }
    /// How long it stays open at most (``chunkTransactionSpan`` unless ``open(path:readonly:busyTimeout:cacheBytes:chunkCommit:)`` said).
    private var chunkSpan: Duration = Self.chunkTransactionSpan

    /// Opens (creating if needed) the database at `path` in WAL mode with `synchronous = FULL`, so that a
    /// commit is on disk before any file is moved to done/ or failed/.
    /// `busyTimeout`: how long a write waits for a lock held by another connection (an operator's
    /// `sqlite3` session, say) before it fails as transient trouble. Default 10 s.
    /// `cacheBytes`: the writer's page cache (SQLite's default is about 2 MB). A large file's records
    /// land, with keys in no order, anywhere in the unique indexes: a cache that holds them saves a read
    /// of a page per lookup (1M scrambled intake rows: 19 s with 2 MB, 16 s with 32 MiB). The daemon gives
    /// it an eighth of its memory budget.
    package static func open(
        path: String,
        readonly: Bool = false,
        busyTimeout: Duration = .seconds(10),
        cacheBytes: Int = 2 << 20,
        chunkCommit: Duration = Self.chunkTransactionSpan
    ) throws -> AppDatabase {
        _ = memoryStatisticsOff
        var config = Configuration()
        config.busyMode = .timeout(
            Double(busyTimeout.components.seconds) + Double(busyTimeout.components.attoseconds) / 1e18
        )
        config.readonly = readonly
        config.publicStatementArguments = false
        // A large file's chunks share a transaction across calls (``writeChunk(_:fileID:)``).
        config.allowsUnsafeTransactions = !readonly
        config.prepareDatabase { db in
            if !db.configuration.readonly {
                // Commits are on disk before any file moves; checkpoints are ours (see checkpoint()).
                // A write-ahead log that once grew is cut back to 64 MiB when it next starts over,
                // rather than keep its largest size on disk for as long as the daemon runs.
                try db.execute(
                    sql: """
                        PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0;
                        PRAGMA journal_size_limit = \(Self.walSizeLimit); PRAGMA cache_size = -\(max(cacheBytes >> 10, 2_000))
                        """
                )
            }
        }
        if readonly {
            return try AppDatabase(DatabaseQueue(path: path, configuration: config))
        }
        let pool = try DatabasePool(path: path, configuration: config)
        // GRDB's WAL set-up, which runs after prepareDatabase, picks `synchronous = NORMAL` (commits
        // durable only at the next checkpoint): the writer is set back to FULL here.
        try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        var database = try AppDatabase(pool, checkpointer: DatabaseQueue(path: path, configuration: config))
        database.chunkSpan = chunkCommit
        return database
    }

    /// The size the write-ahead log is cut back to when it starts over (`journal_size_limit`).
    static let walSizeLimit = 64 << 20

    /// WAL frames (pages) after which a large file's chunk commit checkpoints on its own connection
    /// (`wal_autocheckpoint` for those transactions only): 4,096 pages, 16 MiB.
    static let chunkCheckpointFrames = 4_096

    /// Copies committed WAL frames into the database file (PASSIVE: never blocks the writer or readers).
    /// Run it often from a thread of its own; without it the WAL only grows.
    package func checkpoint() throws(StoreError) {
        guard let checkpointer else { return }
        do {
            _ = try checkpointer.writeWithoutTransaction { db in try db.checkpoint(.passive) }
        } catch {
            throw StoreError(error)
        }
    }

    /// An in-memory database with the same schema (for `carespool validate`, which writes nothing).
    package static func inMemory() throws -> AppDatabase {
        var config = Configuration()
        config.allowsUnsafeTransactions = true  // a large file's chunks share a transaction
        return try AppDatabase(DatabaseQueue(configuration: config))
    }

    package init(_ writer: any DatabaseWriter, checkpointer: DatabaseQueue? = nil) throws {
        self.writer = writer
        self.checkpointer = checkpointer
        if !writer.configuration.readonly {
            try Self.migrator.migrate(writer)
        }
    }

    /// The migrations the SQLite file at `path` lacks, by name, oldest first; the file is only read.
    package static func pendingMigrations(path: String) throws -> [String] {
        var config = Configuration()
        config.readonly = true
        let queue = try DatabaseQueue(path: path, configuration: config)
        let applied = try queue.read { db in try migrator.appliedIdentifiers(db) }
        return migrator.migrations.filter { !applied.contains($0) }
    }

    /// Migrations are frozen once shipped: add new ones, never edit these.
    package static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: files ledger, appointment events and state") { db in
            try db.execute(
                sql: """
                    CREATE TABLE files (
                        id            TEXT PRIMARY KEY NOT NULL,
                        kind          TEXT NOT NULL,
                        original_name TEXT NOT NULL,
                        sha256        TEXT NOT NULL CHECK (length(sha256) = 64),
                        size          INTEGER NOT NULL CHECK (size >= 0),
                        received_at   TEXT NOT NULL,
                        finished_at   TEXT NOT NULL,
                        outcome       TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'partial', 'rejected')),
                        stored        INTEGER NOT NULL DEFAULT 0,
                        duplicates    INTEGER NOT NULL DEFAULT 0,
                        rejected      INTEGER NOT NULL DEFAULT 0,
                        error         TEXT,
                        report        TEXT NOT NULL
                    ) STRICT;
                    CREATE INDEX files_by_sha256 ON files (kind, sha256);
                    CREATE INDEX files_by_outcome ON files (outcome, finished_at);

                    CREATE TABLE appointment_events (
                        seq            INTEGER PRIMARY KEY,
                        appointment_id TEXT NOT NULL,
                        instant        TEXT NOT NULL,
                        timestamp      TEXT NOT NULL,
                        event_type     TEXT NOT NULL CHECK (event_type IN
                                           ('appointment.scheduled', 'appointment.cancelled', 'appointment.updated')),
                        patient_id     TEXT NOT NULL,
                        notes          TEXT,
                        file_id        TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED,
                        record         INTEGER NOT NULL,
                        UNIQUE (appointment_id, instant)
                    ) STRICT;
                    -- Foreign keys need their child index: without it every ledger insert scans the events.
                    CREATE INDEX appointment_events_by_file ON appointment_events (file_id);

                    CREATE TABLE appointments (
                        appointment_id  TEXT PRIMARY KEY NOT NULL,
                        patient_id      TEXT NOT NULL,
                        status          TEXT NOT NULL CHECK (status IN ('scheduled', 'cancelled')),
                        notes           TEXT,
                        event_type      TEXT NOT NULL,
                        event_instant   TEXT NOT NULL,
                        event_timestamp TEXT NOT NULL,
                        file_id         TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED
                    ) STRICT;
                    CREATE INDEX appointments_by_file ON appointments (file_id);
                    """
            )
        }
        migrator.registerMigration("v2: zoom events, visit timelines and counters") { db in
            try db.execute(sql: FrozenMigrations.zoomV2)
        }
        migrator.registerMigration("v3: intake patients, persons with history, visits") { db in
            try db.execute(sql: FrozenMigrations.intakeV3)
        }
        migrator.registerMigration("v4: ledger by original name (GET /spool/{id})") { db in
            try db.execute(sql: "CREATE INDEX files_by_name ON files (kind, original_name)")
        }
        migrator.registerMigration("v5: audit trail") { db in
            try db.execute(sql: FrozenMigrations.auditV5)
        }
        migrator.registerMigration("v6: intake without per-file indexes") { db in
            // They served only the deferred foreign keys' search for a new ledger row's records; the
            // ledger row is now written before its records (commitOne), so nothing searches. A 36-byte
            // key per patient, person, change and visit: a quarter of a 1M-row intake's time.
            try db.execute(
                sql: """
                    DROP INDEX patients_by_file; DROP INDEX persons_by_file;
                    DROP INDEX person_history_by_file; DROP INDEX visits_by_file;
                    """
            )
        }
        migrator.registerMigration("v7: the audit trail by target (GET /spool/{id} answers only its sender)") { db in
            try db.execute(sql: "CREATE INDEX audit_by_target ON audit (target)")
        }
        migrator.registerMigration("v8: a gzip file's decompressed size in the ledger") { db in
            try db.execute(
                sql: "ALTER TABLE files ADD COLUMN decompressed_size INTEGER CHECK (decompressed_size >= 0)"
            )
        }
        migrator.registerMigration("v9: notifications owed") { db in
            try db.execute(
                sql: """
                    CREATE TABLE notifications (
                        file_id       TEXT NOT NULL,
                        target        TEXT NOT NULL CHECK (target IN ('command', 'webhook')),
                        kind          TEXT NOT NULL,
                        outcome       TEXT NOT NULL,
                        stored        INTEGER NOT NULL,
                        duplicates    INTEGER NOT NULL,
                        rejected      INTEGER NOT NULL,
                        original_name TEXT NOT NULL,
                        finished_at   TEXT NOT NULL,
                        attempts      INTEGER NOT NULL DEFAULT 0,
                        next_attempt  INTEGER NOT NULL,
                        last_error    TEXT,
                        PRIMARY KEY (file_id, target)
                    ) STRICT;
                    CREATE INDEX notifications_due ON notifications (next_attempt);
                    """
            )
        }
        migrator.registerMigration("v10: Zoom participants reports in the visit timelines") { db in
            try db.execute(sql: FrozenMigrations.zoomReportsV10)
        }
        migrator.registerMigration("v11: the host of each verdict in the ledger") { db in
            // NULL in the rows before it (their host was not recorded).
            try db.execute(sql: "ALTER TABLE files ADD COLUMN host TEXT")
        }
        return migrator
    }
}

/// A file ready for its transaction: identity, digest, and what its kind's reader made of it.
package struct PreparedFile: Sendable {
    package enum Content: Sendable {
        case appointments(ParsedFile<AppointmentEvent>)
        case zoom(ParsedFile<ZoomRecord>)
        case intake(ParsedFile<IntakeRecord>)
        case zoomReport(ParsedFile<ZoomReportRow>)
        /// Not readable as its kind at all (not a regular file): rejected as a whole.
        case unreadable(RecordProblem)
        /// A large file whose records were committed chunk by chunk (``AppDatabase/commitChunk(_:fileID:)``):
        /// only its ledger row, with the totals, is left to write.
        case streamed(FileReport)
    }

    package var id: String
    package var kind: Kind
    package var originalName: String
    package var sha256: String
    package var size: Int
    /// A gzip file's size once decompressed (`size` and `sha256` are the bytes as received); nil for others.
    package var decompressedSize: Int?
    /// A CSV file's first lines for its `.rejected.csv` (a Zoom report's meeting table and header), when
    /// its rejected rows are written as CSV.
    package var rejectedHeader: [UInt8]?
    package var receivedAt: String
    package var content: Content
    /// False for a file claimed by this run: its fresh id cannot have a ledger row, so none is looked up.
    package var mayHaveLedgerRow: Bool
    /// Who sent it, for the audit trail: `http:<token name>` (or `http` unauthenticated) for posted
    /// requests, else the Unix user that owned the dropped file.
    package var sender: String = "unknown"

    package init(
        id: String,
        kind: Kind,
        originalName: String,
        sha256: String,
        size: Int,
        receivedAt: String,
        content: Content,
        mayHaveLedgerRow: Bool = true
    ) {
        self.id = id
        self.kind = kind
        self.originalName = originalName
        self.sha256 = sha256
        self.size = size
        self.receivedAt = receivedAt
        self.content = content
        self.mayHaveLedgerRow = mayHaveLedgerRow
    }
}

/// The verdict on a file, as committed.
package struct CommittedFile: Sendable {
    package var report: FileReport
    package var finishedAt: String
    /// True when the ledger already had this file's row (a replay after a crash): nothing was written.
    package var replayed: Bool

    package init(report: FileReport, finishedAt: String, replayed: Bool) {
        self.report = report
        self.finishedAt = finishedAt
        self.replayed = replayed
    }
}

/// Why the store failed.
package struct StoreError: Error, Sendable, CustomStringConvertible {
    /// Busy, locked, full or I/O trouble: no verdict on the files, try again later.
    package var isTransient: Bool
    package var description: String

    package init(transient: Bool, description: String) {
        isTransient = transient
        self.description = description
    }

    init(_ error: any Error) {
        if let db = error as? DatabaseError {
            let transient: [ResultCode] = [
                .SQLITE_BUSY, .SQLITE_LOCKED, .SQLITE_FULL, .SQLITE_IOERR, .SQLITE_NOMEM, .SQLITE_CANTOPEN,
                .SQLITE_PROTOCOL, .SQLITE_READONLY,
            ]
            isTransient = transient.contains(db.resultCode)
            description = "SQLite error \(db.extendedResultCode.rawValue): \(db.message ?? "")"
        } else {
            isTransient = false
            description = "\(error)"
        }
    }
}

extension AppDatabase {
    /// How long a large file's chunk transaction stays open at most (commits at the first chunk past it),
    /// and the records it holds at most. One commit per chunk of 2,000 rows rewrote, with keys in no
    /// order, a page of every unique index per row into the write-ahead log, and checkpointed it every
    /// 16 MiB: 1M scrambled rows took 50 s. Each commit writes every page its transaction touched once:
    /// commits a second apart, 16–21 s; five seconds apart, 14 s. Five seconds (the default of
    /// `chunk_commit_ms`) is also the longest an operator's command (busy timeout 10 s) waits for the lock.
    static let chunkTransactionSpan: Duration = .seconds(5)
    static let chunkTransactionRecords = 1_000_000

    /// Records of one chunk of a large file, without its ledger row (that comes last, as a
    /// ``PreparedFile/Content/streamed(_:)`` file), in a transaction shared with the file's next chunks:
    /// committed once it is ``chunkTransactionSpan`` old or holds ``chunkTransactionRecords``, and by
    /// ``commitChunks()`` at the file's end (before its ledger row) and before any other write. A crash
    /// loses only the uncommitted chunks, and is safe: replaying the file finds its own records (same file
    /// id and record number) and counts them stored, writing nothing. A failed chunk rolls back the
    /// transaction, every uncommitted chunk with it.
    package func writeChunk(_ chunk: Chunk, fileID: String) throws(StoreError) -> FileReport {
        do {
            return try writer.writeWithoutTransaction { db in
                // A chunk's commit is not fsynced (synchronous = NORMAL): the file's ledger row, committed
                // last with synchronous = FULL, fsyncs the write-ahead log and every chunk before it. A
                // power cut before that loses chunks of a file that is still in processing/, and its
                // replay stores them again; a crash of the process alone loses nothing committed.
                // The chunks of one file commit back to back, with no pause in which the checkpointing
                // thread's passive checkpoint could catch up and let the log start over: they checkpoint
                // on this connection, right after the commit that passes ``chunkCheckpointFrames``.
                if !db.isInsideTransaction {
                    // The file's ledger row comes last, so its records reference a row that does not exist
                    // yet: foreign keys are off for these transactions only (not changeable inside one).
                    try db.execute(
                        sql: """
                            PRAGMA foreign_keys = OFF; PRAGMA synchronous = NORMAL;
                            PRAGMA wal_autocheckpoint = \(Self.chunkCheckpointFrames); BEGIN IMMEDIATE
                            """
                    )
                    chunkTransaction.begin()
                }
                var report = FileReport(outcome: .accepted)
                do {
                    switch chunk {
                    case .appointments(let items): report = try AppointmentWriter(db: db, fileID: fileID).write(items)
                    case .zoom(let items):
                        report = try ZoomWriter(db: db, fileID: fileID, refreshVisits: false).write(items)
                    case .intake(let items): report = try IntakeWriter(db: db, fileID: fileID).write(items)
                    case .zoomReport(let items):
                        // Resolved and merged into the timelines once, with the file's ledger row.
                        var touched = ZoomTouched()
                        report = try ZoomReportWriter(db: db, fileID: fileID).write(items, touched: &touched)
                    }
                } catch {
                    try? Self.endChunkTransaction(db, commit: false)
                    chunkTransaction.end()
                    throw error
                }
                if chunkTransaction.add(chunk.count) >= Self.chunkTransactionRecords
                    || chunkTransaction.age >= chunkSpan
                {
                    try Self.endChunkTransaction(db, commit: true)
                    chunkTransaction.end()
                }
                return report
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// Commits the open chunk transaction, if any: at a large file's end, before its ledger row, and
    /// before the small files committed between two chunks.
    package func commitChunks() throws(StoreError) {
        do {
            try writer.writeWithoutTransaction { db in
                guard db.isInsideTransaction else { return }
                try Self.endChunkTransaction(db, commit: true)
                chunkTransaction.end()
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// Rolls the open chunk transaction back, if any: a large file that ends in error keeps nothing
    /// uncommitted (its replay writes it again).
    package func rollbackChunks() {
        try? writer.writeWithoutTransaction { db in
            guard db.isInsideTransaction else { return }
            try? Self.endChunkTransaction(db, commit: false)
            chunkTransaction.end()
        }
    }

    /// Commits (or rolls back) and restores the writer's settings.
    private static func endChunkTransaction(_ db: Database, commit: Bool) throws {
        defer {
            try? db.execute(
                sql: "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 0"
            )
        }
        if commit {
            try db.execute(sql: "COMMIT")
        } else if db.isInsideTransaction {
            try db.execute(sql: "ROLLBACK")
        }
    }

    /// Records of one chunk of a large file in one transaction of its own (``writeChunk(_:fileID:)``, then
    /// ``commitChunks()``).
    package func commitChunk(_ chunk: Chunk, fileID: String) throws(StoreError) -> FileReport {
        let report = try writeChunk(chunk, fileID: fileID)
        try commitChunks()
        return report
    }

    /// The records of one chunk of a large file.
    package enum Chunk: Sendable {
        case appointments([Item<AppointmentEvent>])
        case zoom([Item<ZoomRecord>])
        case intake([Item<IntakeRecord>])
        case zoomReport([Item<ZoomReportRow>])

        /// Its records.
        var count: Int {
            switch self {
            case .appointments(let items): items.count
            case .zoom(let items): items.count
            case .intake(let items): items.count
            case .zoomReport(let items): items.count
            }
        }
    }

    /// An earlier file of `kind` with these bytes whose records were stored, other than `id`.
    package func earlierFile(kind: Kind, sha256: String, excluding id: String) throws(StoreError) -> String? {
        if kind == .zoomReport { return nil }  // as in sameBytes: its rows decide
        do {
            return try writer.read { db in
                try String.fetchOne(
                    db,
                    sql: """
                        SELECT id FROM files INDEXED BY files_by_sha256
                        WHERE kind = ? AND sha256 = ? AND outcome IN ('accepted', 'partial', 'duplicate') AND id != ?
                        ORDER BY +id LIMIT 1
                        """,
                    arguments: [kind.rawValue, sha256, id]
                )
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// Commits a batch of files in ONE transaction: each file's records and its ledger row (a group
    /// commit). A file whose ledger row already exists is not written again; its stored verdict is
    /// returned. Throws ``StoreError`` (transient or not) and then nothing of the batch is stored.
    package func commit(_ files: [PreparedFile], finishedAt: String) throws(StoreError) -> [CommittedFile] {
        do {
            return try writer.write { db in
                var results: [CommittedFile] = []
                results.reserveCapacity(files.count)
                var touched = ZoomTouched()
                for file in files {
                    results.append(try commitOne(file, finishedAt: finishedAt, db: db, touched: &touched))
                }
                // Each Zoom visit the batch touched, once (its timeline from all of its events and report
                // rows), and the report rows of each meeting it touched resolved to visits again.
                try touched.refresh(db: db)
                return results
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// Whether the ledger has a row of `id`.
    package func hasLedgerRow(id: String) throws(StoreError) -> Bool {
        do {
            return try writer.read { db in
                try Bool.fetchOne(db.cachedStatement(sql: "SELECT 1 FROM files WHERE id = ?"), arguments: [id]) != nil
            }
        } catch {
            throw StoreError(error)
        }
    }

    /// The ledger row of `id`, if the file has one.
    package func ledgerReport(id: String) throws(StoreError) -> CommittedFile? {
        do {
            return try writer.read { db in try Self.existing(id: id, db: db) }
        } catch {
            throw StoreError(error)
        }
    }

    private static func existing(id: String, db: Database) throws -> CommittedFile? {
        guard
            let row = try Row.fetchOne(
                db.cachedStatement(sql: "SELECT report, finished_at FROM files WHERE id = ?"),
                arguments: [id]
            )
        else { return nil }
        let text: String = row["report"]
        guard let report = FileReport(json: text) else { return nil }
        return CommittedFile(report: report, finishedAt: row["finished_at"], replayed: true)
    }

    private func commitOne(
        _ file: PreparedFile,
        finishedAt: String,
        db: Database,
        touched: inout ZoomTouched
    ) throws -> CommittedFile {
        if file.mayHaveLedgerRow, let done = try Self.existing(id: file.id, db: db) { return done }
        // The ledger row first, its verdict filled in below (the same transaction): records then never
        // reference a ledger row that does not exist yet, so the deferred foreign keys to `files` have
        // no violation to resolve, and inserting the row does not look for its records — which, without
        // an index on their `file_id`, would scan the whole table (migration v6 drops intake's).
        try db.cachedStatement(
            sql: """
                INSERT INTO files (id, kind, original_name, sha256, size, decompressed_size, received_at, finished_at,
                                   outcome, report, host)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'rejected', '{}', ?)
                """
        ).execute(arguments: [
            file.id, file.kind.rawValue, file.originalName, file.sha256, file.size, file.decompressedSize,
            file.receivedAt, finishedAt, host,
        ])
        var report: FileReport
        switch file.content {
        case .unreadable(let problem):
            report = FileReport(outcome: .rejected, errors: [problem])
        case .appointments(let parsed):
            report = try Self.judge(file, parsed, db: db) {
                try AppointmentWriter(db: db, fileID: file.id).write(parsed.items)
            }
        case .zoom(let parsed):
            report = try Self.judge(file, parsed, db: db) {
                try ZoomWriter(db: db, fileID: file.id, refreshVisits: false).write(
                    parsed.items,
                    touched: &touched
                )
            }
        case .intake(let parsed):
            report = try Self.judge(file, parsed, db: db) {
                try IntakeWriter(db: db, fileID: file.id).write(parsed.items)
            }
        case .zoomReport(let parsed):
            report = try Self.judge(file, parsed, db: db) {
                try ZoomReportWriter(db: db, fileID: file.id).write(parsed.items, touched: &touched)
            }
        case .streamed(let totals):
            report = totals
            if file.kind == .zoom { try ZoomWriter(db: db, fileID: file.id).refreshVisitsOfFile() }
            if file.kind == .zoomReport { try ZoomReportWriter(db: db, fileID: file.id).refreshOfFile() }
        }
        try db.cachedStatement(
            sql: """
                UPDATE files SET outcome = ?, stored = ?, duplicates = ?, rejected = ?, error = ?, report = ?
                WHERE id = ?
                """
        ).execute(arguments: [
            report.outcome.rawValue, report.stored, report.duplicates, report.rejected, report.summary,
            report.json(), file.id,
        ])
        // The notification owed, in the verdict's own transaction: no crash can separate them.
        try enqueueNotification(file, report, finishedAt: finishedAt, db: db)
        try AuditTrail.record(
            db,
            at: finishedAt,
            actor: file.sender,
            action: "file." + report.outcome.rawValue,
            target: file.id,
            detail:
                "kind=\(file.kind.rawValue) stored=\(report.stored) duplicates=\(report.duplicates) rejected=\(report.rejected)"
        )
        return CommittedFile(report: report, finishedAt: finishedAt, replayed: false)
    }

    /// A byte-identical earlier file makes a duplicate, a problem with the whole file a rejection;
    /// otherwise `write` stores the records and says what happened, with the reader's notes. A file of no
    /// records and no problem (a CSV header with no rows) is accepted: a valid file with nothing to store.
    private static func judge<Record: Sendable>(
        _ file: PreparedFile,
        _ parsed: ParsedFile<Record>,
        db: Database,
        write: () throws -> FileReport
    ) throws -> FileReport {
        if let earlier = try sameBytes(file, db: db) { return FileReport(outcome: .duplicate, duplicateOf: earlier) }
        if let fileProblem = parsed.fileProblem { return FileReport(outcome: .rejected, errors: [fileProblem]) }
        var report = try write()
        for note in parsed.notes where !report.notes.contains(note) { report.notes.append(note) }
        if parsed.items.isEmpty { report.outcome = .accepted }
        return report
    }

    /// An earlier file of the same kind with the same bytes whose records were stored.
    private static func sameBytes(_ file: PreparedFile, db: Database) throws -> String? {
        // A report's bytes are not all it says: its meeting may come from its name and its times from its
        // inbox's zone, so the same bytes named or dropped otherwise are another report (its rows decide).
        if file.kind == .zoomReport { return nil }
        return try String.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT id FROM files INDEXED BY files_by_sha256
                    WHERE kind = ? AND sha256 = ? AND outcome IN ('accepted', 'partial', 'duplicate')
                    ORDER BY +id LIMIT 1
                    """
            ),
            arguments: [file.kind.rawValue, file.sha256]
        )
    }
}

/// Writes appointment events: append-only events unique on (appointment_id, instant), and each
/// appointment's current state derived from its newest event, so a late older event never wins.
struct AppointmentWriter {
    let db: Database
    let fileID: String

    func write(_ items: [Item<AppointmentEvent>]) throws -> FileReport {
        var stored = 0
        var duplicates = 0
        var rejectedRecords = 0  // each item is one record, judged once: a count, no set
        var errors: [RecordProblem] = []
        var touched = Set<ExactText>()  // by bytes: ids the database tells apart are refreshed apart
        for item in items {
            switch item.result {
            case .failure(let problems):
                rejectedRecords += 1
                problems.append(to: &errors)
            case .success(let event):
                let existing = try Row.fetchOne(
                    db.cachedStatement(
                        sql: """
                            SELECT event_type, patient_id, notes, file_id, record FROM appointment_events
                            WHERE appointment_id = ? AND instant = ?
                            """
                    ),
                    arguments: [event.appointmentID, event.instant]
                )
                if let existing {
                    // Compared by bytes, as the database compares text (not by canonical equivalence).
                    let same =
                        sameText(existing["event_type"], event.eventType)
                        && sameText(existing["patient_id"], event.patientID)
                        && sameText(existing["notes"], event.notes)
                    if same && sameText(existing["file_id"], fileID) && existing["record"] == item.number {
                        // This very record, committed by an earlier chunk before a crash: ours, not a duplicate.
                        stored += 1
                    } else if same {
                        duplicates += 1
                    } else {
                        rejectedRecords += 1
                        let earlier: String = existing["file_id"]
                        errors.append(
                            RecordProblem(
                                record: item.number,
                                line: item.line,
                                pointer: nil,
                                message:
                                    "conflicts with the event stored from file \(earlier) under the same appointment_id and timestamp"
                            )
                        )
                    }
                    continue
                }
                try db.cachedStatement(
                    sql: """
                        INSERT INTO appointment_events
                            (appointment_id, instant, timestamp, event_type, patient_id, notes, file_id, record)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [
                    event.appointmentID, event.instant, event.timestamp, event.eventType, event.patientID, event.notes,
                    fileID, item.number,
                ])
                stored += 1
                touched.insert(ExactText(event.appointmentID))
            }
        }
        for appointmentID in touched { try refreshState(appointmentID.text) }
        let rejected = rejectedRecords
        return FileReport(
            outcome: FileReport.outcome(stored: stored, duplicates: duplicates, rejected: rejected),
            stored: stored,
            duplicates: duplicates,
            rejected: rejected,
            errors: errors
        )
    }

    /// Sets the appointment's state from its newest event; status from its newest scheduled/cancelled event.
    private func refreshState(_ appointmentID: String) throws {
        try db.cachedStatement(
            sql: """
                INSERT OR REPLACE INTO appointments
                    (appointment_id, patient_id, status, notes, event_type, event_instant, event_timestamp, file_id)
                SELECT e.appointment_id, e.patient_id,
                       COALESCE((SELECT CASE s.event_type WHEN 'appointment.cancelled' THEN 'cancelled' ELSE 'scheduled' END
                                 FROM appointment_events s
                                 WHERE s.appointment_id = e.appointment_id
                                   AND s.event_type IN ('appointment.scheduled', 'appointment.cancelled')
                                 ORDER BY s.instant DESC LIMIT 1), 'scheduled'),
                       e.notes, e.event_type, e.instant, e.timestamp, e.file_id
                FROM appointment_events e
                WHERE e.appointment_id = ?
                ORDER BY e.instant DESC LIMIT 1
                """
        ).execute(arguments: [appointmentID])
    }
}

extension AppDatabase {
    /// The verdict on file `id` of `kind`, and who sent it (the audit trail's actor of its outcome), if
    /// it has a ledger row.
    package func verdict(id: String, kind: String) throws -> (report: FileReport, sender: String?)? {
        try writer.read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT f.report, (SELECT a.actor FROM audit a WHERE a.target = f.id AND a.action LIKE 'file.%'
                                          ORDER BY a.seq LIMIT 1) AS sender
                        FROM files f WHERE f.id = ? AND f.kind = ?
                        """,
                    arguments: [id, kind]
                ),
                let report = FileReport(json: row["report"])
            else { return nil }
            return (report, row["sender"])
        }
    }

    /// The newest rejected or partial files, newest first, with the ledger's columns as text.
    package func lastFailures(limit: Int) throws -> [[String: String?]] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT id, kind, original_name, outcome, finished_at, error FROM files
                    WHERE outcome IN ('rejected', 'partial') ORDER BY finished_at DESC, id DESC LIMIT ?
                    """,
                arguments: [limit]
            ).map { row in
                var out: [String: String?] = [:]
                for column in ["id", "kind", "original_name", "outcome", "finished_at", "error"] {
                    out[column] = row[column] as String?
                }
                return out
            }
        }
    }
}

extension AppDatabase {
    /// One visit of a Zoom meeting: its timeline and participants' intervals.
    package struct ZoomVisit: Sendable {
        package var visitUUID: String
        package var meetingID: String
        package var startedAt: String?
        package var endedAt: String?
        package var durationSeconds: Int?
        package var maxLatencyMs: Double?
        package var interpreterRequested: Bool
        package var events: Int
        /// Each join/leave interval with where it came from: `webhook`, `report`, or `webhook+report` (webhooks
        /// saw one end, a report gave the other).
        package var intervals:
            [(participantID: String, participantName: String?, joinedAt: String?, leftAt: String?, source: String)]

        package init(
            visitUUID: String,
            meetingID: String,
            startedAt: String?,
            endedAt: String?,
            durationSeconds: Int?,
            maxLatencyMs: Double?,
            interpreterRequested: Bool,
            events: Int,
            intervals: [(
                participantID: String, participantName: String?, joinedAt: String?, leftAt: String?, source: String
            )]
        ) {
            self.visitUUID = visitUUID
            self.meetingID = meetingID
            self.startedAt = startedAt
            self.endedAt = endedAt
            self.durationSeconds = durationSeconds
            self.maxLatencyMs = maxLatencyMs
            self.interpreterRequested = interpreterRequested
            self.events = events
            self.intervals = intervals
        }
    }

    /// The visits of meeting `id` (a meeting id, or one visit's uuid), oldest first.
    package func zoomVisits(meeting id: String) throws -> [ZoomVisit] {
        try writer.read { db in
            let visits = try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM zoom_visits WHERE meeting_id = ? OR visit_uuid = ?
                    ORDER BY started_at IS NULL, started_at, visit_uuid
                    """,
                arguments: [id, id]
            )
            return try visits.map { row in
                let uuid: String = row["visit_uuid"]
                let intervals = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT participant_id, participant_name, joined_at, left_at, source FROM zoom_visit_intervals
                        WHERE visit_uuid = ?
                        ORDER BY joined_at IS NULL, joined_at, participant_id, left_at IS NULL, left_at,
                                 participant_name IS NULL, participant_name, source
                        """,
                    arguments: [uuid]
                ).map { interval in
                    (
                        participantID: interval["participant_id"] as String,
                        participantName: interval["participant_name"] as String?,
                        joinedAt: interval["joined_at"] as String?,
                        leftAt: interval["left_at"] as String?,
                        source: interval["source"] as String
                    )
                }
                return ZoomVisit(
                    visitUUID: uuid,
                    meetingID: row["meeting_id"],
                    startedAt: row["started_at"],
                    endedAt: row["ended_at"],
                    durationSeconds: row["duration_seconds"],
                    maxLatencyMs: row["max_latency_ms"],
                    interpreterRequested: row["interpreter_requested"] == 1,
                    events: row["events"],
                    intervals: intervals
                )
            }
        }
    }

    /// Zoom events received and inserted (duplicates excluded), per event name; they survive restarts.
    package func zoomCounters() throws -> [(event: String, received: Int, inserted: Int)] {
        try writer.read { db in
            guard try db.tableExists("zoom_counters") else { return [] }
            return try Row.fetchAll(
                db,
                sql: "SELECT event_name, received, inserted FROM zoom_counters ORDER BY event_name"
            )
            .map { ($0["event_name"], $0["received"], $0["inserted"]) }
        }
    }
}

/// When the open chunk transaction began and the records it holds.
final class ChunkTransaction: Sendable {
    private let state = Mutex<(began: ContinuousClock.Instant, records: Int)?>(nil)

    func begin() { state.withLock { $0 = (.now, 0) } }
    func end() { state.withLock { $0 = nil } }

    /// Adds `records`; returns the records held now.
    func add(_ records: Int) -> Int {
        state.withLock { current in
            guard var open = current else { return records }
            open.records += records
            current = open
            return open.records
        }
    }

    /// How long the transaction has been open (zero with none).
    var age: Duration { state.withLock { $0.map { .now - $0.began } ?? .zero } }
}
