import Crypto
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
    /// is not written again and its stored verdict is returned. Kinds whose PostgreSQL writer does not
    /// exist yet (Zoom, Zoom reports) are refused, not transient; nothing of the batch is stored.
    package func commit(
        _ files: [PreparedFile],
        finishedAt: String,
        notify: NotifyPolicy = NotifyPolicy()
    ) async throws(PostgresStoreError) -> [CommittedFile] {
        for file in files {
            switch file.content {
            case .appointments, .intake, .unreadable: continue
            case .streamed where Self.streamedKinds.contains(file.kind): continue
            case .zoom, .zoomReport, .streamed:
                throw PostgresStoreError(
                    description: "the PostgreSQL store does not write \(file.kind.rawValue) files yet",
                    transient: false
                )
            }
        }
        let host = host
        let logger = logger
        return try await transaction { connection in
            try await Self.lockBytes(files, connection, logger)
            var results: [CommittedFile] = []
            var touched = Set<String>()
            for file in files {
                results.append(
                    try await Self.commitOne(
                        file,
                        finishedAt: finishedAt,
                        host: host,
                        notify: notify,
                        touched: &touched,
                        connection,
                        logger
                    )
                )
            }
            for appointment in touched.sorted() {
                try await AppointmentsInPostgres.refreshState(appointment, connection, logger)
            }
            return results
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

    /// The kinds whose large files this store takes chunk by chunk.
    static let streamedKinds: Set<Kind> = [.appointments, .intake]

    /// Records of one chunk of a large file, in a transaction of their own (run again by itself on a
    /// serialization failure or a deadlock, as any). The file's row is made first, as `processing`
    /// (its records' foreign keys need it; it is no ledger row to `existing`), and becomes the ledger
    /// row with the file's verdict. A crash between chunks loses none of the committed ones: the replay
    /// finds its own records (same file id and record number) and counts them stored, writing nothing.
    package func writeChunk(_ chunk: AppDatabase.Chunk, fileID: String) async throws(PostgresStoreError)
        -> FileReport
    {
        switch chunk {
        case .appointments, .intake: break
        case .zoom, .zoomReport:
            throw PostgresStoreError(
                description:
                    "the PostgreSQL store does not take this kind's large files in chunks yet: split the file below "
                    + "stream_threshold, or raise stream_threshold within memory_budget",
                transient: false
            )
        }
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
                var touched = Set<String>()
                let report = try await AppointmentsInPostgres.write(
                    items,
                    fileID: fileID,
                    touched: &touched,
                    connection,
                    logger
                )
                for appointment in touched.sorted() {
                    try await AppointmentsInPostgres.refreshState(appointment, connection, logger)
                }
                return report
            case .zoom, .zoomReport:
                return FileReport(outcome: .rejected)  // refused above
            }
        }
    }

    // MARK: - One file

    /// The advisory locks of the batch's distinct byte identities, ascending. A 64-bit key from SHA-256
    /// of "kind/sha256" (a collision only makes two files wait for each other).
    static func lockBytes(_ files: [PreparedFile], _ connection: PostgresConnection, _ logger: Logger) async throws {
        var keys = Set<Int64>()
        for file in files where file.kind != .zoomReport {
            let digest = Array(SHA256.hash(data: Array("bytes/\(file.kind.rawValue)/\(file.sha256)".utf8)))
            keys.insert(digest.prefix(8).reduce(Int64(0)) { $0 << 8 | Int64($1) })
        }
        guard !keys.isEmpty else { return }
        // unnest walks the array in its order: the locks are taken in ascending order, in one round trip.
        try await connection.query(
            "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(\(keys.sorted())::int8[]) AS k",
            logger: logger
        )
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

    static func commitOne(
        _ file: PreparedFile,
        finishedAt: String,
        host: String,
        notify: NotifyPolicy,
        touched: inout Set<String>,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> CommittedFile {
        if file.mayHaveLedgerRow, let done = try await existing(id: file.id, connection, logger) { return done }
        // A large file's chunks made its row already, as `processing` (writeChunk): it becomes the ledger row.
        try await connection.query(
            """
            INSERT INTO files (id, kind, original_name, sha256, size, decompressed_size, received_at, finished_at,
                               outcome, report, host)
            VALUES (\(file.id), \(file.kind.rawValue), \(file.originalName), \(file.sha256), \(file.size),
                    \(file.decompressedSize), \(file.receivedAt), \(finishedAt), 'rejected', '{}', \(host))
            ON CONFLICT (id) DO UPDATE SET
                kind = EXCLUDED.kind, original_name = EXCLUDED.original_name, sha256 = EXCLUDED.sha256,
                size = EXCLUDED.size, decompressed_size = EXCLUDED.decompressed_size,
                received_at = EXCLUDED.received_at, finished_at = EXCLUDED.finished_at, outcome = 'rejected',
                report = '{}', host = EXCLUDED.host
            WHERE files.outcome = 'processing'
            """,
            logger: logger
        )
        var report: FileReport
        switch file.content {
        case .unreadable(let problem):
            report = FileReport(outcome: .rejected, errors: [problem])
        case .appointments(let parsed):
            if file.kind != .zoomReport,
                let earlier = try await sameBytes(
                    kind: file.kind,
                    sha256: file.sha256,
                    excluding: file.id,
                    connection,
                    logger
                )
            {
                report = FileReport(outcome: .duplicate, duplicateOf: earlier)
            } else if let problem = parsed.fileProblem {
                report = FileReport(outcome: .rejected, errors: [problem])
            } else {
                report = try await AppointmentsInPostgres.write(
                    parsed.items,
                    fileID: file.id,
                    touched: &touched,
                    connection,
                    logger
                )
                for note in parsed.notes where !report.notes.contains(note) { report.notes.append(note) }
                if parsed.items.isEmpty { report.outcome = .accepted }
            }
        case .intake(let parsed):
            if let earlier = try await sameBytes(
                kind: file.kind,
                sha256: file.sha256,
                excluding: file.id,
                connection,
                logger
            ) {
                report = FileReport(outcome: .duplicate, duplicateOf: earlier)
            } else if let problem = parsed.fileProblem {
                report = FileReport(outcome: .rejected, errors: [problem])
            } else {
                report = try await IntakeInPostgres.write(parsed.items, fileID: file.id, connection, logger)
                for note in parsed.notes where !report.notes.contains(note) { report.notes.append(note) }
                if parsed.items.isEmpty { report.outcome = .accepted }
            }
        case .streamed(let totals) where streamedKinds.contains(file.kind):
            report = totals
        case .zoom, .zoomReport, .streamed:
            throw PostgresStoreError(
                description: "the PostgreSQL store does not write \(file.kind.rawValue) files yet",
                transient: false
            )
        }
        try await connection.query(
            """
            UPDATE files SET outcome = \(report.outcome.rawValue), stored = \(report.stored),
                   duplicates = \(report.duplicates), rejected = \(report.rejected), error = \(report.summary),
                   report = \(report.json())
            WHERE id = \(file.id)
            """,
            logger: logger
        )
        if notify.outcomes.contains(report.outcome.rawValue) {
            for target in notify.targets {
                try await connection.query(
                    """
                    INSERT INTO notifications (file_id, target, kind, outcome, stored, duplicates, rejected,
                                               original_name, finished_at, next_attempt)
                    VALUES (\(file.id), \(target), \(file.kind.rawValue), \(report.outcome.rawValue), \(report.stored),
                            \(report.duplicates), \(report.rejected), \(file.originalName), \(finishedAt), 0)
                    ON CONFLICT DO NOTHING
                    """,
                    logger: logger
                )
            }
        }
        let detail =
            "kind=\(file.kind.rawValue) stored=\(report.stored) duplicates=\(report.duplicates) rejected=\(report.rejected)"
        try await connection.query(
            """
            INSERT INTO audit (at, actor, action, target, detail)
            VALUES (\(finishedAt), \(file.sender), \("file." + report.outcome.rawValue), \(file.id), \(detail))
            """,
            logger: logger
        )
        return CommittedFile(report: report, finishedAt: finishedAt, replayed: false)
    }
}

/// Appointment events in PostgreSQL: AppointmentWriter's rules (append-only events unique on
/// (appointment_id, instant); each appointment's state from its newest event).
enum AppointmentsInPostgres {
    static func write(
        _ items: [Item<AppointmentEvent>],
        fileID: String,
        touched: inout Set<String>,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> FileReport {
        var stored = 0
        var duplicates = 0
        var rejected = 0
        var errors: [RecordProblem] = []
        var events: [(number: Int, line: Int?, event: AppointmentEvent)] = []
        for item in items {
            switch item.result {
            case .failure(let problems):
                rejected += 1
                problems.append(to: &errors)
            case .success(let event): events.append((item.number, item.line, event))
            }
        }
        // Key order (stable: a file's repeats of one key keep their order, the first is the one stored).
        let ordered = events.enumerated().sorted {
            ($0.element.event.appointmentID, $0.element.event.instant, $0.offset)
                < ($1.element.event.appointmentID, $1.element.event.instant, $1.offset)
        }.map(\.element)
        for (number, line, event) in ordered {
            let inserted = try await connection.query(
                """
                INSERT INTO appointment_events
                    (appointment_id, instant, timestamp, event_type, patient_id, notes, file_id, record)
                VALUES (\(event.appointmentID), \(event.instant), \(event.timestamp), \(event.eventType),
                        \(event.patientID), \(event.notes), \(fileID), \(number))
                ON CONFLICT (appointment_id, instant) DO NOTHING
                RETURNING seq
                """,
                logger: logger
            )
            var wasInserted = false
            for try await _ in inserted { wasInserted = true }
            if wasInserted {
                stored += 1
                touched.insert(event.appointmentID)
                continue
            }
            let rows = try await connection.query(
                """
                SELECT event_type, patient_id, notes, file_id, record FROM appointment_events
                WHERE appointment_id = \(event.appointmentID) AND instant = \(event.instant)
                """,
                logger: logger
            )
            for try await (type, patient, notes, earlier, record) in rows.decode(
                (String, String, String?, String, Int).self
            ) {
                let same = type == event.eventType && patient == event.patientID && notes == event.notes
                if same && earlier == fileID && record == number {
                    stored += 1  // this very record, committed by an earlier chunk before a crash
                } else if same {
                    duplicates += 1
                } else {
                    rejected += 1
                    errors.append(
                        RecordProblem(
                            record: number,
                            line: line,
                            pointer: nil,
                            message:
                                "conflicts with the event stored from file \(earlier) under the same appointment_id and timestamp"
                        )
                    )
                }
            }
        }
        // Problems in record order, as the file lists them (the writes went in key order).
        let listed = errors.enumerated().sorted {
            ($0.element.record ?? 0, $0.offset) < ($1.element.record ?? 0, $1.offset)
        }.map(\.element)
        return FileReport(
            outcome: FileReport.outcome(stored: stored, duplicates: duplicates, rejected: rejected),
            stored: stored,
            duplicates: duplicates,
            rejected: rejected,
            errors: listed
        )
    }

    /// The appointment's state from its newest event, its status from its newest scheduled or cancelled
    /// event. First the row is made or locked; then the state is computed in a statement of its own, which
    /// sees every event committed until the lock was had.
    static func refreshState(_ appointmentID: String, _ connection: PostgresConnection, _ logger: Logger) async throws {
        try await connection.query(
            """
            INSERT INTO appointments
                (appointment_id, patient_id, status, notes, event_type, event_instant, event_timestamp, file_id)
            SELECT e.appointment_id, e.patient_id, 'scheduled', e.notes, e.event_type, e.instant, e.timestamp, e.file_id
            FROM appointment_events e WHERE e.appointment_id = \(appointmentID)
            ORDER BY e.instant DESC LIMIT 1
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
            WHERE a.appointment_id = \(appointmentID)
            """,
            logger: logger
        )
    }
}
