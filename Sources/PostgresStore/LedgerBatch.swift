import JSONSchema
import Kinds
import Logging
import PostgresNIO
import Store

/// One batch's commit in PostgreSQL (``SiteDatabase/commit(_:finishedAt:notify:)``), in its transaction,
/// after the byte locks: about ten statements whatever the batch's size.
///
/// The verdicts are those of one file after another (AppDatabase.commit's): a file whose bytes an
/// earlier file stored is a `duplicate` of the smallest such id, whether that file came before this batch
/// or earlier in it; a record whose key an earlier file of the batch stored is judged against it. So the
/// files are judged in rounds: in each, every file not yet judged whose byte group (kind, sha256) has no
/// earlier file waiting is either judged at once (unreadable, a duplicate of bytes stored, a file-level
/// problem) or written — the round's appointment files together and its Zoom files together, each in key
/// order then file order, intake files one after another. A second round is needed only when a file of the same bytes as an earlier
/// one of the batch was written and stored nothing (rare: it was all conflicts or bad records).
struct LedgerBatch {
    let files: [PreparedFile]
    let finishedAt: String
    let host: String
    let notify: NotifyPolicy

    private struct Bytes: Hashable {
        let kind: String
        let sha256: String
    }

    private static let storedOutcomes: Set<Outcome> = [.accepted, .partial, .duplicate]

    func commit(_ connection: PostgresConnection, _ logger: Logger) async throws -> [CommittedFile] {
        var results = [CommittedFile?](repeating: nil, count: files.count)
        // The rows the shared ledger has already (a replay, on any host): not written again.
        let maybe = files.filter(\.mayHaveLedgerRow).map(\.id)
        if !maybe.isEmpty {
            let rows = try await connection.query(
                """
                SELECT id, report, finished_at FROM files WHERE id = ANY(\(maybe)::text[]) AND outcome <> 'processing'
                """,
                logger: logger
            )
            var found: [String: CommittedFile] = [:]
            for try await (id, text, finished) in rows.decode((String, String, String).self) {
                if let report = FileReport(json: text) {
                    found[id] = CommittedFile(report: report, finishedAt: finished, replayed: true)
                }
            }
            for (index, file) in files.enumerated() where file.mayHaveLedgerRow { results[index] = found[file.id] }
        }
        let fresh = files.indices.filter { results[$0] == nil }
        guard !fresh.isEmpty else { return results.map { $0! } }

        var earliest = try await storedBytes(fresh, connection, logger)
        try await insertRows(fresh, connection, logger)
        var reports = [FileReport?](repeating: nil, count: files.count)
        var touched = Set<ExactText>()
        // Zoom: every meeting the batch writes locked first (one writer of a meeting at a time, across
        // hosts); the visits to refresh and the meetings whose report rows to resolve once for the batch
        // (a large file's, with its verdict); the counters.
        let streamedZoom = fresh.filter {
            if case .streamed = files[$0].content {
                files[$0].kind == .zoom || files[$0].kind == .zoomReport
            } else {
                false
            }
        }.map { files[$0].id }
        var events: [ZoomEvent] = []
        var rows: [ZoomReportRow] = []
        for index in fresh {
            switch files[index].content {
            case .zoom(let parsed):
                for item in parsed.items { if case .success(.event(let event)) = item.result { events.append(event) } }
            case .zoomReport(let parsed):
                for item in parsed.items { if case .success(let row) = item.result { rows.append(row) } }
            default: break
            }
        }
        try await ZoomReportsInPostgres.lockMeetings(
            try await ZoomReportsInPostgres.meetings(
                events: events,
                rows: rows,
                files: streamedZoom,
                connection,
                logger
            ),
            connection,
            logger
        )
        events = []
        rows = []
        var zoomTouched = try await ZoomReportsInPostgres.touched(ofFiles: streamedZoom, connection, logger)
        zoomTouched.visits = try await ZoomInPostgres.visits(ofFiles: streamedZoom, connection, logger)
        var counts = ZoomInPostgres.Counts()
        while true {
            var waiting = Set<Bytes>()
            var appointments: [(index: Int, parsed: ParsedFile<AppointmentEvent>)] = []
            var intake: [(index: Int, parsed: ParsedFile<IntakeRecord>)] = []
            var zoom: [(index: Int, parsed: ParsedFile<ZoomRecord>)] = []
            var zoomReports: [(index: Int, parsed: ParsedFile<ZoomReportRow>)] = []
            // A report's rows are judged against the webhook events stored before it: a round takes Zoom
            // files in batch order up to the first events file that follows a report (written before the
            // round's reports, events would be seen by a report that came before them).
            var zoomCut = false
            for index in fresh where reports[index] == nil {
                let file = files[index]
                let bytes = Bytes(kind: file.kind.rawValue, sha256: file.sha256)
                let fileProblem: RecordProblem?
                switch file.content {
                case .unreadable(let problem):
                    reports[index] = FileReport(outcome: .rejected, errors: [problem])
                    continue
                case .streamed(let totals):
                    reports[index] = totals
                    continue
                case .appointments(let parsed): fileProblem = parsed.fileProblem
                case .intake(let parsed): fileProblem = parsed.fileProblem
                case .zoom(let parsed): fileProblem = parsed.fileProblem
                case .zoomReport(let parsed):
                    // A report's bytes are not all it says (its meeting may come from its name, its times
                    // from its inbox's zone): never a duplicate by bytes, its rows decide (as in SQLite).
                    if zoomCut { continue }
                    if let fileProblem = parsed.fileProblem {
                        reports[index] = FileReport(outcome: .rejected, errors: [fileProblem])
                    } else {
                        zoomReports.append((index, parsed))
                    }
                    continue
                }
                if file.kind == .zoom && (zoomCut || !zoomReports.isEmpty) {
                    zoomCut = true
                    continue
                }
                if waiting.contains(bytes) { continue }  // an earlier file of these bytes is being written
                if let earlier = earliest[bytes] {
                    reports[index] = FileReport(outcome: .duplicate, duplicateOf: earlier)
                    earliest[bytes] = min(earlier, file.id)
                    continue
                }
                if let fileProblem {
                    reports[index] = FileReport(outcome: .rejected, errors: [fileProblem])
                    continue
                }
                waiting.insert(bytes)
                switch file.content {
                case .appointments(let parsed): appointments.append((index, parsed))
                case .intake(let parsed): intake.append((index, parsed))
                case .zoom(let parsed): zoom.append((index, parsed))
                default: break
                }
            }
            if appointments.isEmpty && intake.isEmpty && zoom.isEmpty && zoomReports.isEmpty { break }
            var written: [(index: Int, report: FileReport)] = []
            if !appointments.isEmpty {
                let reports = try await AppointmentsInPostgres.write(
                    files: appointments.map { (files[$0.index].id, $0.parsed.items) },
                    touched: &touched,
                    connection,
                    logger
                )
                for (entry, report) in zip(appointments, reports) {
                    written.append((entry.index, Self.finished(report, entry.parsed)))
                }
            }
            if !zoom.isEmpty {
                let reports = try await ZoomInPostgres.write(
                    files: zoom.map { (files[$0.index].id, $0.parsed.items) },
                    touched: &zoomTouched.visits,
                    counts: &counts,
                    connection,
                    logger
                )
                for (entry, report) in zip(zoom, reports) {
                    written.append((entry.index, Self.finished(report, entry.parsed)))
                }
            }
            for entry in intake {
                let report = try await IntakeInPostgres.write(
                    entry.parsed.items,
                    fileID: files[entry.index].id,
                    connection,
                    logger
                )
                written.append((entry.index, Self.finished(report, entry.parsed)))
            }
            for entry in zoomReports {
                let report = try await ZoomReportsInPostgres.write(
                    entry.parsed.items,
                    fileID: files[entry.index].id,
                    touched: &zoomTouched,
                    connection,
                    logger
                )
                written.append((entry.index, Self.finished(report, entry.parsed)))
            }
            for (index, report) in written {
                reports[index] = report
                let file = files[index]
                let bytes = Bytes(kind: file.kind.rawValue, sha256: file.sha256)
                if file.kind != .zoomReport && Self.storedOutcomes.contains(report.outcome) {
                    earliest[bytes] = earliest[bytes].map { min($0, file.id) } ?? file.id
                }
            }
        }
        try await AppointmentsInPostgres.refreshStates(touched, connection, logger)
        try await ZoomReportsInPostgres.refresh(zoomTouched, connection, logger)
        try await ZoomInPostgres.addCounts(counts, connection, logger)
        let judged = fresh.map { (index: $0, report: reports[$0]!) }
        try await recordVerdicts(judged, connection, logger)
        for (index, report) in judged {
            results[index] = CommittedFile(report: report, finishedAt: finishedAt, replayed: false)
        }
        return results.map { $0! }
    }

    /// A written file's report with its file's notes; a file with no records is accepted.
    private static func finished<Record>(_ written: FileReport, _ parsed: ParsedFile<Record>) -> FileReport {
        var report = written
        for note in parsed.notes where !report.notes.contains(note) { report.notes.append(note) }
        if parsed.items.isEmpty { report.outcome = .accepted }
        return report
    }

    /// For each byte group of the batch's readable files, the smallest id of a file stored before it.
    private func storedBytes(_ fresh: [Int], _ connection: PostgresConnection, _ logger: Logger) async throws
        -> [Bytes: String]
    {
        let readable = fresh.filter {
            switch files[$0].content {
            case .appointments, .intake, .zoom: true
            default: false
            }
        }
        guard !readable.isEmpty else { return [:] }
        let rows = try await connection.query(
            """
            SELECT f.kind, f.sha256, min(f.id) FROM files f
            JOIN (SELECT DISTINCT kind, sha256
                  FROM unnest(\(readable.map { files[$0].kind.rawValue })::text[],
                              \(readable.map { files[$0].sha256 })::text[]) AS k (kind, sha256)) k
              ON f.kind = k.kind AND f.sha256 = k.sha256
            WHERE f.outcome IN ('accepted', 'partial', 'duplicate')
            GROUP BY f.kind, f.sha256
            """,
            logger: logger
        )
        var earliest: [Bytes: String] = [:]
        for try await (kind, sha256, id) in rows.decode((String, String, String).self) {
            earliest[Bytes(kind: kind, sha256: sha256)] = id
        }
        return earliest
    }

    /// The batch's ledger rows, `rejected` until their verdict (their records' foreign keys need them);
    /// a large file's `processing` row becomes its ledger row. A row any other way there is an error.
    private func insertRows(_ fresh: [Int], _ connection: PostgresConnection, _ logger: Logger) async throws {
        let rows = fresh.map { files[$0] }
        let inserted = try await connection.query(
            """
            INSERT INTO files (id, kind, original_name, sha256, size, decompressed_size, received_at, finished_at,
                               outcome, report, host)
            SELECT c.id, c.kind, c.original_name, c.sha256, c.size,
                   CASE WHEN c.has_decompressed THEN c.decompressed_size END, c.received_at, \(finishedAt)::text,
                   'rejected', '{}', \(host)::text
            FROM unnest(\(rows.map(\.id))::text[], \(rows.map(\.kind.rawValue))::text[],
                        \(rows.map(\.originalName))::text[], \(rows.map(\.sha256))::text[],
                        \(rows.map { Int64($0.size) })::int8[], \(rows.map { Int64($0.decompressedSize ?? 0) })::int8[],
                        \(rows.map { $0.decompressedSize != nil })::bool[], \(rows.map(\.receivedAt))::text[])
                 WITH ORDINALITY AS c (id, kind, original_name, sha256, size, decompressed_size, has_decompressed,
                                       received_at, ord)
            ORDER BY c.ord
            ON CONFLICT (id) DO UPDATE SET
                kind = EXCLUDED.kind, original_name = EXCLUDED.original_name, sha256 = EXCLUDED.sha256,
                size = EXCLUDED.size, decompressed_size = EXCLUDED.decompressed_size,
                received_at = EXCLUDED.received_at, finished_at = EXCLUDED.finished_at, outcome = 'rejected',
                report = '{}', host = EXCLUDED.host
            WHERE files.outcome = 'processing'
            RETURNING id
            """,
            logger: logger
        )
        var made = Set<String>()
        for try await id in inserted.decode(String.self) { made.insert(id) }
        if let taken = rows.first(where: { !made.contains($0.id) }) {
            throw PostgresStoreError(
                description: "file \(taken.id) has a ledger row already that this batch did not expect",
                transient: false
            )
        }
    }

    /// Each file's verdict on its ledger row, the notifications owed and the audit rows (in file order).
    private func recordVerdicts(
        _ judged: [(index: Int, report: FileReport)],
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        let ids = judged.map { files[$0.index].id }
        let reports = judged.map(\.report)
        try await connection.query(
            """
            UPDATE files f SET outcome = c.outcome, stored = c.stored, duplicates = c.duplicates,
                   rejected = c.rejected, error = CASE WHEN c.has_error THEN c.error END, report = c.report
            FROM unnest(\(ids)::text[], \(reports.map(\.outcome.rawValue))::text[],
                        \(reports.map { Int64($0.stored) })::int8[], \(reports.map { Int64($0.duplicates) })::int8[],
                        \(reports.map { Int64($0.rejected) })::int8[], \(reports.map { $0.summary ?? "" })::text[],
                        \(reports.map { $0.summary != nil })::bool[], \(reports.map { $0.json() })::text[])
                 AS c (id, outcome, stored, duplicates, rejected, error, has_error, report)
            WHERE f.id = c.id
            """,
            logger: logger
        )
        var owed: [(file: PreparedFile, report: FileReport, target: String)] = []
        for (index, report) in judged where notify.outcomes.contains(report.outcome.rawValue) {
            for target in notify.targets { owed.append((files[index], report, target)) }
        }
        if !owed.isEmpty {
            try await connection.query(
                """
                INSERT INTO notifications (file_id, target, kind, outcome, stored, duplicates, rejected,
                                           original_name, finished_at, next_attempt)
                SELECT c.file_id, c.target, c.kind, c.outcome, c.stored, c.duplicates, c.rejected, c.original_name,
                       \(finishedAt)::text, 0
                FROM unnest(\(owed.map(\.file.id))::text[], \(owed.map(\.target))::text[],
                            \(owed.map(\.file.kind.rawValue))::text[], \(owed.map(\.report.outcome.rawValue))::text[],
                            \(owed.map { Int64($0.report.stored) })::int8[],
                            \(owed.map { Int64($0.report.duplicates) })::int8[],
                            \(owed.map { Int64($0.report.rejected) })::int8[], \(owed.map(\.file.originalName))::text[])
                     AS c (file_id, target, kind, outcome, stored, duplicates, rejected, original_name)
                ON CONFLICT DO NOTHING
                """,
                logger: logger
            )
        }
        let details = judged.map { entry in
            "kind=\(files[entry.index].kind.rawValue) stored=\(entry.report.stored) "
                + "duplicates=\(entry.report.duplicates) rejected=\(entry.report.rejected)"
        }
        try await connection.query(
            """
            INSERT INTO audit (at, actor, action, target, detail)
            SELECT \(finishedAt)::text, c.actor, c.action, c.target, c.detail
            FROM unnest(\(judged.map { files[$0.index].sender })::text[],
                        \(reports.map { "file." + $0.outcome.rawValue })::text[], \(ids)::text[], \(details)::text[])
                 WITH ORDINALITY AS c (actor, action, target, detail, ord)
            ORDER BY c.ord
            """,
            logger: logger
        )
    }
}
