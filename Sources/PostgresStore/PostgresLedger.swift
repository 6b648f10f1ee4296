import Crypto
import JSONSchema
package import Kinds
import Logging
import PostgresNIO
package import Store

// The ledger and the appointments kind in PostgreSQL: the same verdicts as AppDatabase.commit gives on one
// host, exactly once across hosts. What makes it so:
// - a file's bytes: before anything of a batch is read, the transaction takes an advisory lock per
//   distinct (kind, sha256) of its files, all of them in ascending order (so two batches never wait on
//   each other in a cycle). The second host to commit the same bytes waits for the first to commit and
//   then finds its ledger row: `duplicate` of it, as on one host;
// - a natural key: `INSERT … ON CONFLICT DO NOTHING` waits for a transaction that inserted the same key
//   and has not committed, then either stores the record or finds the row that won, which it compares as
//   SQLite's writer does (same → duplicate, else a conflict naming that row's file). Records are written
//   in key order (their problems are listed in record order again), so that two hosts writing overlapping
//   files take the keys' locks in one order; a deadlock that remains is PostgreSQL's 40P01 and the whole
//   transaction runs again (SiteDatabase.transaction);
// - an appointment's state: derived from its newest events by whichever transaction refreshes it last,
//   under the row lock of its `appointments` row (taken first, then the state computed in a new statement
//   that sees every committed event): a transaction that commits later refreshes again.

extension SiteDatabase {
    /// Commits a batch of files in one transaction, each file's records with its ledger row (which names
    /// this host), its notification owed and its audit row; a file whose ledger row exists (on any host)
    /// is not written again and its stored verdict is returned.
    ///
    /// Set by set, not file by file: a batch costs about ten statements whatever its number of files
    /// (the ledger rows, every file's events, their look-ups, the verdicts, the audit rows: one statement
    /// each, with arrays), since a round trip to the server costs more than the work of a small file. The
    /// verdicts are those of one file after another, as `AppDatabase.commit` gives them.
    package func commit(
        _ files: [PreparedFile],
        finishedAt: String,
        notify: NotifyPolicy = NotifyPolicy()
    ) async throws(PostgresStoreError) -> [CommittedFile] {
        let host = host
        let logger = logger
        return try await transaction { connection in
            try await Self.lockBytes(files, connection, logger)
            return try await LedgerBatch(files: files, finishedAt: finishedAt, host: host, notify: notify)
                .commit(connection, logger)
        }
    }

    /// Whether the shared ledger has a row of `id` (any host's).
    package func hasLedgerRow(id: String) async throws(PostgresStoreError) -> Bool {
        try await ledgerReport(id: id) != nil
    }

    /// The shared ledger's row of `id`, if the file has one (a replay after a crash, on any host).
    package func ledgerReport(id: String) async throws(PostgresStoreError) -> CommittedFile? {
        let logger = logger
        return try await transaction { connection in try await Self.existing(id: id, connection, logger) }
    }

    /// The host whose verdict the ledger row of `id` records.
    package func ledgerHost(id: String) async throws(PostgresStoreError) -> String? {
        let logger = logger
        return try await transaction { connection in
            let rows = try await connection.query("SELECT host FROM files WHERE id = \(id)", logger: logger)
            for try await host in rows.decode(String.self) { return host }
            return nil
        }
    }

    /// An earlier file of `kind` with these bytes whose records were stored, other than `id`.
    package func earlierFile(kind: Kind, sha256: String, excluding id: String) async throws(PostgresStoreError)
        -> String?
    {
        if kind == .zoomReport { return nil }
        let logger = logger
        return try await transaction { connection in
            try await Self.sameBytes(kind: kind, sha256: sha256, excluding: id, connection, logger)
        }
    }

    /// Records of one chunk of a large file, in a transaction of their own (run again by itself on a
    /// serialization failure or a deadlock, as any). The file's row is made first, as `processing`
    /// (its records' foreign keys need it; it is no ledger row to `existing`), and becomes the ledger
    /// row with the file's verdict. A crash between chunks loses none of the committed ones: the replay
    /// finds its own records (same file id and record number) and counts them stored, writing nothing.
    package func writeChunk(_ chunk: AppDatabase.Chunk, fileID: String) async throws(PostgresStoreError)
        -> FileReport
    {
        let host = host
        let logger = logger
        return try await transaction { connection in
            // Not flushed at its commit: the file's ledger row, committed last and synchronously, flushes
            // the write-ahead log up to it, every chunk before it included (a crash of the server before
            // that loses chunks of a file still in processing/, which its replay stores again).
            try await connection.query("SET LOCAL synchronous_commit = off", logger: logger)
            try await connection.query(
                """
                INSERT INTO files (id, kind, original_name, sha256, size, received_at, finished_at, outcome, report,
                                   host)
                VALUES (\(fileID), '', '', repeat('0', 64), 0, '', '', 'processing', '{}', \(host))
                ON CONFLICT (id) DO NOTHING
                """,
                logger: logger
            )
            switch chunk {
            case .intake(let items):
                return try await IntakeInPostgres.write(items, fileID: fileID, connection, logger)
            case .appointments(let items):
                var touched = Set<ExactText>()
                let report = try await AppointmentsInPostgres.write(
                    items,
                    fileID: fileID,
                    touched: &touched,
                    connection,
                    logger
                )
                try await AppointmentsInPostgres.refreshStates(touched, connection, logger)
                return report
            case .zoom(let items):
                // Its visits are refreshed once, with its verdict (LedgerBatch): per chunk, a visit of many
                // events would be read again for every chunk.
                let events = items.compactMap { item -> ZoomEvent? in
                    if case .success(.event(let event)) = item.result { event } else { nil }
                }
                try await ZoomReportsInPostgres.lockMeetings(
                    try await ZoomReportsInPostgres.meetings(events: events, rows: [], files: [], connection, logger),
                    connection,
                    logger
                )
                var visits = Set<ExactText>()
                var counts = ZoomInPostgres.Counts()
                let report = try await ZoomInPostgres.write(
                    files: [(fileID, items)],
                    touched: &visits,
                    counts: &counts,
                    connection,
                    logger
                )[0]
                try await ZoomInPostgres.addCounts(counts, connection, logger)
                return report
            case .zoomReport(let items):
                // Resolved and merged into the timelines once, with the file's ledger row (LedgerBatch).
                let rows = items.compactMap { item -> ZoomReportRow? in
                    if case .success(let row) = item.result { row } else { nil }
                }
                try await ZoomReportsInPostgres.lockMeetings(
                    try await ZoomReportsInPostgres.meetings(events: [], rows: rows, files: [], connection, logger),
                    connection,
                    logger
                )
                var touched = ZoomTouched()
                return try await ZoomReportsInPostgres.write(
                    items,
                    fileID: fileID,
                    touched: &touched,
                    connection,
                    logger
                )
            }
        }
    }

    // MARK: - One file

    /// The advisory locks of the batch's byte identities ("kind/sha256"; never a report's: its rows decide).
    static func lockBytes(_ files: [PreparedFile], _ connection: PostgresConnection, _ logger: Logger) async throws {
        try await lockSlots(
            files.filter { $0.kind != .zoomReport }.map { "\($0.kind.rawValue)/\($0.sha256)" },
            space: 1,
            connection,
            logger
        )
    }

    /// Locks held until the transaction ends for `names`, each on one of 256 slots of lock space
    /// `space` (from SHA-256 of the name), all of them in ascending order (two transactions never wait on
    /// each other in a cycle). Slots, not a lock per name: a transaction holds at most 256 of a space,
    /// however many names it has — a lock per name ran PostgreSQL out of lock memory (53200) on a file of
    /// 20,000 meetings (found by the hostile review). Two names on one slot only wait for each other.
    static func lockSlots(
        _ names: some Sequence<String>,
        space: Int64,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        var keys = Set<Int64>()
        for name in names {
            keys.insert(space << 32 | Int64(Array(SHA256.hash(data: Array(name.utf8)))[0]))
        }
        guard !keys.isEmpty else { return }
        // unnest walks the array in its order: the locks are taken in ascending order, in one round trip.
        // The row is read: an error taking them (lock memory) is thrown here, not at the next statement.
        let rows = try await connection.query(
            "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(\(keys.sorted())::int8[]) AS k",
            logger: logger
        )
        for try await _ in rows {}
    }

    static func existing(id: String, _ connection: PostgresConnection, _ logger: Logger) async throws
        -> CommittedFile?
    {
        let rows = try await connection.query(
            "SELECT report, finished_at FROM files WHERE id = \(id) AND outcome <> 'processing'",
            logger: logger
        )
        for try await (text, finishedAt) in rows.decode((String, String).self) {
            guard let report = FileReport(json: text) else { return nil }
            return CommittedFile(report: report, finishedAt: finishedAt, replayed: true)
        }
        return nil
    }

    static func sameBytes(
        kind: Kind,
        sha256: String,
        excluding id: String,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> String? {
        let rows = try await connection.query(
            """
            SELECT id FROM files
            WHERE kind = \(kind.rawValue) AND sha256 = \(sha256) AND outcome IN ('accepted', 'partial', 'duplicate')
              AND id != \(id)
            ORDER BY id LIMIT 1
            """,
            logger: logger
        )
        for try await earlier in rows.decode(String.self) { return earlier }
        return nil
    }

}

extension PostgresStoreError {
    /// A record whose key `ON CONFLICT DO NOTHING` skipped and whose stored row is not there: only a
    /// database changed by hand under the writer does that. Not transient: trying again cannot help.
    static func neitherStoredNorFound(_ what: String) -> PostgresStoreError {
        PostgresStoreError(
            description: "\(what) was neither stored nor found (database edited by hand?)",
            transient: false
        )
    }
}

/// Appointment events in PostgreSQL: AppointmentWriter's rules (append-only events unique on
/// (appointment_id, instant); each appointment's state from its newest event).
enum AppointmentsInPostgres {
    /// One file's records (a large file's chunk).
    static func write(
        _ items: [Item<AppointmentEvent>],
        fileID: String,
        touched: inout Set<ExactText>,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> FileReport {
        try await write(files: [(fileID, items)], touched: &touched, connection, logger)[0]
    }

    /// The records of several files, in two statements whatever their number: every record inserted in
    /// key order (`ON CONFLICT DO NOTHING`: the first of a key in file order wins, as one file after
    /// another would have it; two hosts take the keys' locks in one order), then one look-up of the keys
    /// not stored, each judged as AppointmentWriter judges it (same → duplicate, or this very record
    /// committed before a crash → stored; else a conflict naming the file that stored the key).
    static func write(
        files: [(id: String, items: [Item<AppointmentEvent>])],
        touched: inout Set<ExactText>,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> [FileReport] {
        struct Row {
            let file: Int
            let number: Int
            let line: Int?
            let event: AppointmentEvent
        }
        var tally = FileTallies(files.count)
        var rows: [Row] = []
        for (index, file) in files.enumerated() {
            for item in file.items {
                switch item.result {
                case .failure(let problems):
                    tally.failed(index, problems)
                case .success(let event):
                    rows.append(Row(file: index, number: item.number, line: item.line, event: event))
                }
            }
        }
        // Key order (by bytes, as the database tells keys apart), stable: a key's rows keep their file
        // order, the first is the one stored.
        let ordered = rows.enumerated().sorted {
            (ExactText($0.element.event.appointmentID), ExactText($0.element.event.instant), $0.offset)
                < (ExactText($1.element.event.appointmentID), ExactText($1.element.event.instant), $1.offset)
        }.map(\.element)
        var inserted = Set<ExactText>()  // "record\u{0}file id" of the rows stored now
        if !ordered.isEmpty {
            let events = ordered.map(\.event)
            let result = try await connection.query(
                """
                INSERT INTO appointment_events
                    (appointment_id, instant, timestamp, event_type, patient_id, notes, file_id, record)
                SELECT c.appointment_id, c.instant, c.timestamp, c.event_type, c.patient_id,
                       CASE WHEN c.has_notes THEN c.notes END, c.file_id, c.record
                FROM unnest(\(events.map(\.appointmentID))::text[], \(events.map(\.instant))::text[],
                            \(events.map(\.timestamp))::text[], \(events.map(\.eventType))::text[],
                            \(events.map(\.patientID))::text[], \(events.map { $0.notes ?? "" })::text[],
                            \(events.map { $0.notes != nil })::bool[], \(ordered.map { files[$0.file].id })::text[],
                            \(ordered.map { Int64($0.number) })::int8[])
                     WITH ORDINALITY AS c (appointment_id, instant, timestamp, event_type, patient_id, notes,
                                           has_notes, file_id, record, ord)
                ORDER BY c.ord
                ON CONFLICT (appointment_id, instant) DO NOTHING
                RETURNING record, file_id, appointment_id
                """,
                logger: logger
            )
            for try await (record, file, appointment) in result.decode((Int64, String, String).self) {
                inserted.insert(ExactText("\(record)\u{0}\(file)"))
                touched.insert(ExactText(appointment))
            }
        }
        let others = ordered.filter { !inserted.contains(ExactText("\($0.number)\u{0}\(files[$0.file].id)")) }
        var found: [ExactText: (type: String, patient: String, notes: String?, file: String, record: Int)] = [:]
        if !others.isEmpty {
            var keys = Set<ExactText>()
            var ids: [String] = []
            var instants: [String] = []
            for row in others
            where keys.insert(ExactText(row.event.appointmentID + "\u{0}" + row.event.instant)).inserted {
                ids.append(row.event.appointmentID)
                instants.append(row.event.instant)
            }
            let result = try await connection.query(
                """
                SELECT e.appointment_id, e.instant, e.event_type, e.patient_id, e.notes, e.file_id, e.record
                FROM appointment_events e
                JOIN unnest(\(ids)::text[], \(instants)::text[]) AS k (appointment_id, instant)
                  ON e.appointment_id = k.appointment_id AND e.instant = k.instant
                """,
                logger: logger
            )
            for try await (id, instant, type, patient, notes, file, record) in result.decode(
                (String, String, String, String, String?, String, Int).self
            ) {
                found[ExactText(id + "\u{0}" + instant)] = (type, patient, notes, file, record)
            }
        }
        for row in ordered {
            let fileID = files[row.file].id
            if inserted.contains(ExactText("\(row.number)\u{0}\(fileID)")) {
                tally.stored[row.file] += 1
                continue
            }
            guard let earlier = found[ExactText(row.event.appointmentID + "\u{0}" + row.event.instant)] else {
                throw PostgresStoreError.neitherStoredNorFound("an event")
            }
            let same =
                sameText(earlier.type, row.event.eventType) && sameText(earlier.patient, row.event.patientID)
                && sameText(earlier.notes, row.event.notes)
            if same && sameText(earlier.file, fileID) && earlier.record == row.number {
                tally.stored[row.file] += 1  // this very record, committed by an earlier chunk before a crash
            } else if same {
                tally.duplicates[row.file] += 1
            } else {
                tally.conflict(
                    row.file,
                    record: row.number,
                    line: row.line,
                    "conflicts with the event stored from file \(earlier.file) under the same appointment_id and timestamp"
                )
            }
        }
        return files.indices.map { tally.report($0) }
    }

    /// The appointments' states from their newest events, their status from their newest scheduled or
    /// cancelled event. First the rows are made or locked, in id order (two hosts lock alike); then the
    /// states are computed in a statement of its own, which sees every event committed until the locks
    /// were had: a transaction that commits later refreshes again, so the last word counts every event.
    static func refreshStates(_ touched: Set<ExactText>, _ connection: PostgresConnection, _ logger: Logger)
        async throws
    {
        guard !touched.isEmpty else { return }
        let ids = touched.sorted().map(\.text)
        try await connection.query(
            """
            INSERT INTO appointments
                (appointment_id, patient_id, status, notes, event_type, event_instant, event_timestamp, file_id)
            SELECT DISTINCT ON (e.appointment_id)
                   e.appointment_id, e.patient_id, 'scheduled', e.notes, e.event_type, e.instant, e.timestamp, e.file_id
            FROM appointment_events e WHERE e.appointment_id = ANY(\(ids)::text[])
            ORDER BY e.appointment_id, e.instant DESC
            ON CONFLICT (appointment_id) DO UPDATE SET appointment_id = EXCLUDED.appointment_id
            """,
            logger: logger
        )
        try await connection.query(
            """
            UPDATE appointments a
            SET (patient_id, status, notes, event_type, event_instant, event_timestamp, file_id) = (
                SELECT e.patient_id,
                       COALESCE((SELECT CASE s.event_type WHEN 'appointment.cancelled' THEN 'cancelled' ELSE 'scheduled' END
                                 FROM appointment_events s
                                 WHERE s.appointment_id = e.appointment_id
                                   AND s.event_type IN ('appointment.scheduled', 'appointment.cancelled')
                                 ORDER BY s.instant DESC LIMIT 1), 'scheduled'),
                       e.notes, e.event_type, e.instant, e.timestamp, e.file_id
                FROM appointment_events e
                WHERE e.appointment_id = a.appointment_id
                ORDER BY e.instant DESC LIMIT 1)
            WHERE a.appointment_id = ANY(\(ids)::text[])
            """,
            logger: logger
        )
    }
}

/// Each file's counts and problems in a set-based write of several files, and its report.
struct FileTallies {
    var stored: [Int]
    var duplicates: [Int]
    var rejected: [Int]
    var skipped: [Int]
    var errors: [[RecordProblem]]

    init(_ files: Int) {
        stored = Array(repeating: 0, count: files)
        duplicates = stored
        rejected = stored
        skipped = stored
        errors = Array(repeating: [], count: files)
    }

    /// A record of file `index` that conflicts with what the database holds under its key.
    mutating func conflict(_ index: Int, record: Int, line: Int?, _ message: String) {
        rejected[index] += 1
        errors[index].append(RecordProblem(record: record, line: line, pointer: nil, message: message))
    }

    /// A record of file `index` its reader refused.
    mutating func failed(_ index: Int, _ problems: Problems) {
        rejected[index] += 1
        problems.append(to: &errors[index])
    }

    /// File `index`'s report: its problems put back in record order, as the file lists them (the writes
    /// went in key order).
    func report(_ index: Int) -> FileReport {
        FileReport(
            outcome: FileReport.outcome(
                stored: stored[index],
                duplicates: duplicates[index],
                rejected: rejected[index],
                skipped: skipped[index]
            ),
            stored: stored[index],
            duplicates: duplicates[index],
            rejected: rejected[index],
            errors: errors[index].enumerated().sorted {
                ($0.element.record ?? 0, $0.offset) < ($1.element.record ?? 0, $1.offset)
            }.map(\.element)
        )
    }
}
