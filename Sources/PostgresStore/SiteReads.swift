import JSONSchema
import Kinds
import Logging
import PostgresNIO
package import Store

/// What the operator commands read of the site's PostgreSQL database: every host's rows, each naming
/// its host (`host` narrows to one); the same answers as SQLite's ``AppDatabase`` gives one host.
/// A file whose chunks are being written (its row `processing`) has no verdict yet: never listed, and
/// shown by id as what it is (a conflict may name it).
package final class SiteReads: OperatorReads {
    package let site: SiteDatabase

    package init(site: SiteDatabase) { self.site = site }

    package var knowsHosts: Bool { true }

    /// Runs `body` in a read transaction of its own and waits for it.
    private func read<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> T
    ) throws(StoreError) -> T {
        let site = site
        return try SiteStore.waiting { () async throws(PostgresStoreError) in
            let logger = site.logger
            return try await site.transaction { connection in try await body(connection, logger) }
        }
    }

    private static let ledgerColumns =
        "id, kind, original_name, size, decompressed_size, received_at, finished_at, outcome, stored, duplicates, "
        + "rejected, report, host"

    private static func entries(_ rows: PostgresRowSequence) async throws -> [LedgerEntry] {
        var entries: [LedgerEntry] = []
        for try await row in rows {
            let (
                id, kind, name, size, decompressed, received, finished, outcome, stored, duplicates, rejected, report,
                host
            ) =
                try row.decode(
                    (String, String, String, Int, Int?, String, String, String, Int, Int, Int, String, String).self
                )
            entries.append(
                LedgerEntry(
                    id: id,
                    kind: kind,
                    originalName: name,
                    size: size,
                    decompressedSize: decompressed,
                    receivedAt: received,
                    finishedAt: finished,
                    outcome: outcome,
                    stored: stored,
                    duplicates: duplicates,
                    rejected: rejected,
                    report: FileReport(json: report),
                    host: host
                )
            )
        }
        return entries
    }

    package func ledger(outcomes: [String], kind: String?, since: String?, host: String?, limit: Int) throws
        -> [LedgerEntry]
    {
        try read { connection, logger in
            try await Self.entries(
                connection.query(
                    """
                    SELECT \(unescaped: Self.ledgerColumns) FROM files
                    WHERE outcome = ANY(\(outcomes)::text[]) AND finished_at >= \(since ?? "")
                      AND (\(kind)::text IS NULL OR kind = \(kind)) AND (\(host)::text IS NULL OR host = \(host))
                    ORDER BY finished_at DESC, id DESC LIMIT \(max(limit, 0))
                    """,
                    logger: logger
                )
            )
        }
    }

    package func ledgerEntry(id: String) throws -> LedgerEntry? {
        try read { connection, logger in
            try await Self.entries(
                connection.query(
                    "SELECT \(unescaped: Self.ledgerColumns) FROM files WHERE id = \(id)",
                    logger: logger
                )
            ).first
        }
    }

    package func dailyReport(since: String?, host: String?) throws -> [DailyReportRow] {
        try read { connection, logger in
            let rows = try await connection.query(
                """
                SELECT substr(finished_at, 1, 10) AS day, kind, outcome, host, count(*)::int8, sum(stored)::int8,
                       sum(duplicates)::int8, sum(rejected)::int8
                FROM files WHERE finished_at >= \(since ?? "") AND outcome <> 'processing'
                  AND (\(host)::text IS NULL OR host = \(host))
                GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
                """,
                logger: logger
            )
            var out: [DailyReportRow] = []
            for try await (day, kind, outcome, host, files, stored, duplicates, rejected) in rows.decode(
                (String, String, String, String, Int, Int, Int, Int).self
            ) {
                out.append((day, kind, outcome, host, files, stored, duplicates, rejected))
            }
            return out
        }
    }

    package func auditEntries(since: String?, limit: Int) throws -> [AuditEntry] {
        try read { connection, logger in
            let rows = try await connection.query(
                """
                SELECT seq, at, actor, action, target, detail FROM audit WHERE at >= \(since ?? "")
                ORDER BY seq LIMIT \(max(limit, 0))
                """,
                logger: logger
            )
            var out: [AuditEntry] = []
            for try await (seq, at, actor, action, target, detail) in rows.decode(
                (Int64, String, String, String, String?, String?).self
            ) {
                out.append(AuditEntry(seq: seq, at: at, actor: actor, action: action, target: target, detail: detail))
            }
            return out
        }
    }

    package func audit(at: String, actor: String, action: String, target: String?, detail: String?) throws {
        try read { connection, logger -> Void in
            try await connection.query(
                """
                INSERT INTO audit (at, actor, action, target, detail)
                VALUES (\(at), \(actor), \(action), \(target), \(detail))
                """,
                logger: logger
            )
        }
    }

    /// A condition of the patients' filter and its value.
    private static func filter(
        id: Int64?,
        mrn: String?,
        firstName: String?,
        lastName: String?
    ) -> (sql: String, binds: PostgresBindings) {
        var conditions: [String] = []
        var binds = PostgresBindings()
        if let id {
            binds.append(id)
            conditions.append("p.id = $\(binds.count)")
        }
        if let mrn {
            binds.append(mrn)
            conditions.append("p.mrn = $\(binds.count)")
        }
        // SQLite's LIKE ignores ASCII case; ILIKE does too.
        if let firstName {
            binds.append(AppDatabase.likePrefix(firstName))
            conditions.append("s.first_name ILIKE $\(binds.count) ESCAPE '\\'")
        }
        if let lastName {
            binds.append(AppDatabase.likePrefix(lastName))
            conditions.append("s.last_name ILIKE $\(binds.count) ESCAPE '\\'")
        }
        return (conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "), binds)
    }

    package func patients(
        id: Int64?,
        mrn: String?,
        firstName: String?,
        lastName: String?,
        page: Int,
        pageSize: Int
    ) throws -> Page<PatientRow> {
        try read { connection, logger in
            let (filter, binds) = Self.filter(id: id, mrn: mrn, firstName: firstName, lastName: lastName)
            var total = 0
            for try await count in try await connection.query(
                PostgresQuery(
                    unsafeSQL: "SELECT count(*)::int8 FROM patients p JOIN persons s ON s.patient_id = p.id \(filter)",
                    binds: binds
                ),
                logger: logger
            ).decode(Int.self) {
                total = count
            }
            var paged = binds
            paged.append(pageSize)
            paged.append(AppDatabase.offset(page: page, pageSize: pageSize))
            let rows = try await connection.query(
                PostgresQuery(
                    unsafeSQL: """
                        SELECT p.id, p.mrn, s.first_name, s.last_name, s.birth_date,
                               (SELECT count(*) FROM visits v WHERE v.patient_id = p.id)::int8
                        FROM patients p JOIN persons s ON s.patient_id = p.id \(filter)
                        ORDER BY p.mrn LIMIT $\(paged.count - 1) OFFSET $\(paged.count)
                        """,
                    binds: paged
                ),
                logger: logger
            )
            var out: [PatientRow] = []
            for try await (id, mrn, first, last, birth, visits) in rows.decode(
                (Int64, String, String, String, String, Int).self
            ) {
                out.append((id, mrn, first, last, birth, visits))
            }
            return Page(total: total, rows: out)
        }
    }

    package func visits(ofPatients patients: [Int64]) throws -> [Int64: [PatientVisit]] {
        guard !patients.isEmpty else { return [:] }
        return try read { connection, logger in
            let rows = try await connection.query(
                """
                SELECT id, patient_id, visit_account_number, visit_date, reason FROM visits
                WHERE patient_id = ANY(\(patients)::int8[]) ORDER BY patient_id, visit_date, id
                """,
                logger: logger
            )
            var found: [Int64: [PatientVisit]] = [:]
            for try await (id, patient, number, date, reason) in rows.decode(
                (Int64, Int64, String, String, String?).self
            ) {
                found[patient, default: []].append((id, number, date, reason))
            }
            return found
        }
    }

    package func visits(mrn: String?, page: Int, pageSize: Int) throws -> Page<VisitRow> {
        try read { connection, logger in
            var total = 0
            for try await count in try await connection.query(
                """
                SELECT count(*)::int8 FROM visits v JOIN patients p ON p.id = v.patient_id
                WHERE \(mrn)::text IS NULL OR p.mrn = \(mrn)
                """,
                logger: logger
            ).decode(Int.self) {
                total = count
            }
            let rows = try await connection.query(
                """
                SELECT v.visit_account_number, p.mrn, v.visit_date, v.reason, v.file_id
                FROM visits v JOIN patients p ON p.id = v.patient_id
                WHERE \(mrn)::text IS NULL OR p.mrn = \(mrn)
                ORDER BY v.visit_date DESC, v.visit_account_number
                LIMIT \(pageSize) OFFSET \(AppDatabase.offset(page: page, pageSize: pageSize))
                """,
                logger: logger
            )
            var out: [VisitRow] = []
            for try await (number, mrn, date, reason, file) in rows.decode(
                (String, String, String, String?, String).self
            ) {
                out.append((number, mrn, date, reason, file))
            }
            return Page(total: total, rows: out)
        }
    }

    package func appointments(id: String?, patient: String?, page: Int, pageSize: Int) throws -> Page<AppointmentRow> {
        try read { connection, logger in
            var total = 0
            for try await count in try await connection.query(
                """
                SELECT count(*)::int8 FROM appointments
                WHERE (\(id)::text IS NULL OR appointment_id = \(id))
                  AND (\(patient)::text IS NULL OR patient_id = \(patient))
                """,
                logger: logger
            ).decode(Int.self) {
                total = count
            }
            let rows = try await connection.query(
                """
                SELECT appointment_id, patient_id, status, event_type, event_timestamp FROM appointments
                WHERE (\(id)::text IS NULL OR appointment_id = \(id))
                  AND (\(patient)::text IS NULL OR patient_id = \(patient))
                ORDER BY appointment_id
                LIMIT \(pageSize) OFFSET \(AppDatabase.offset(page: page, pageSize: pageSize))
                """,
                logger: logger
            )
            var out: [AppointmentRow] = []
            for try await (id, patient, status, type, at) in rows.decode((String, String, String, String, String).self)
            {
                out.append((id, patient, status, type, at))
            }
            return Page(total: total, rows: out)
        }
    }

    package func appointmentEvents(id: String?, patient: String?, page: Int, pageSize: Int) throws
        -> Page<AppDatabase.StoredEvent>
    {
        try read { connection, logger in
            var total = 0
            for try await count in try await connection.query(
                """
                SELECT count(*)::int8 FROM appointment_events e
                WHERE (\(id)::text IS NULL OR e.appointment_id = \(id))
                  AND (\(patient)::text IS NULL OR e.patient_id = \(patient))
                """,
                logger: logger
            ).decode(Int.self) {
                total = count
            }
            let rows = try await connection.query(
                """
                SELECT e.seq, e.event_type, e.appointment_id, e.patient_id, e.timestamp, e.notes, f.received_at
                FROM appointment_events e JOIN files f ON f.id = e.file_id
                WHERE (\(id)::text IS NULL OR e.appointment_id = \(id))
                  AND (\(patient)::text IS NULL OR e.patient_id = \(patient))
                ORDER BY e.seq
                LIMIT \(pageSize) OFFSET \(AppDatabase.offset(page: page, pageSize: pageSize))
                """,
                logger: logger
            )
            var out: [AppDatabase.StoredEvent] = []
            for try await (seq, type, appointment, patient, timestamp, notes, received) in rows.decode(
                (Int64, String, String, String, String, String?, String).self
            ) {
                out.append(
                    AppDatabase.StoredEvent(
                        id: seq,
                        eventType: type,
                        appointmentID: appointment,
                        patientID: patient,
                        timestamp: timestamp,
                        notes: notes,
                        receivedAt: received
                    )
                )
            }
            return Page(total: total, rows: out)
        }
    }

    package func lastFailures(limit: Int, host: String?) throws -> [[String: String?]] {
        try read { connection, logger in
            let rows = try await connection.query(
                """
                SELECT id, kind, original_name, outcome, finished_at, error, host FROM files
                WHERE outcome IN ('rejected', 'partial') AND (\(host)::text IS NULL OR host = \(host))
                ORDER BY finished_at DESC, id DESC LIMIT \(max(limit, 0))
                """,
                logger: logger
            )
            var out: [[String: String?]] = []
            for try await (id, kind, name, outcome, finished, error, host) in rows.decode(
                (String, String, String, String, String, String?, String).self
            ) {
                out.append([
                    "id": id, "kind": kind, "original_name": name, "outcome": outcome, "finished_at": finished,
                    "error": error, "host": host,
                ])
            }
            return out
        }
    }

    /// Ordered as SQLite orders them (text by bytes: COLLATE "C").
    package func zoomVisits(meeting id: String) throws -> [AppDatabase.ZoomVisit] {
        try read { connection, logger in
            let rows = try await connection.query(
                """
                SELECT visit_uuid, meeting_id, started_at, ended_at, duration_seconds, max_latency_ms,
                       interpreter_requested, events
                FROM zoom_visits WHERE meeting_id = \(id) OR visit_uuid = \(id)
                ORDER BY started_at IS NULL, started_at COLLATE "C", visit_uuid COLLATE "C"
                """,
                logger: logger
            )
            var visits: [AppDatabase.ZoomVisit] = []
            for try await (uuid, meeting, started, ended, duration, latency, interpreter, events) in rows.decode(
                (String, String, String?, String?, Int?, Double?, Int64, Int).self
            ) {
                visits.append(
                    AppDatabase.ZoomVisit(
                        visitUUID: uuid,
                        meetingID: meeting,
                        startedAt: started,
                        endedAt: ended,
                        durationSeconds: duration,
                        maxLatencyMs: latency,
                        interpreterRequested: interpreter == 1,
                        events: events,
                        intervals: []
                    )
                )
            }
            // Every visit's intervals in one look-up, each visit's in SQLite's order (ties broken alike).
            var position: [ExactText: Int] = [:]
            for (index, visit) in visits.enumerated() { position[ExactText(visit.visitUUID)] = index }
            let intervals = try await connection.query(
                """
                SELECT visit_uuid, participant_id, participant_name, joined_at, left_at, source FROM zoom_visit_intervals
                WHERE visit_uuid = ANY(\(visits.map(\.visitUUID))::text[])
                ORDER BY joined_at IS NULL, joined_at COLLATE "C", participant_id COLLATE "C", left_at IS NULL,
                         left_at COLLATE "C", participant_name IS NULL, participant_name COLLATE "C", source COLLATE "C"
                """,
                logger: logger
            )
            for try await (uuid, id, name, joined, left, source) in intervals.decode(
                (String, String, String?, String?, String?, String).self
            ) {
                if let index = position[ExactText(uuid)] {
                    visits[index].intervals.append((id, name, joined, left, source))
                }
            }
            return visits
        }
    }

    package func zoomCounters() throws -> [(event: String, received: Int, inserted: Int)] {
        let site = site
        return try SiteStore.waiting { () async throws(PostgresStoreError) in try await site.zoomCounters() }
    }

    package func notificationBacklog() throws -> NotificationBacklog {
        try read { connection, logger in
            var backlog = NotificationBacklog(count: 0, mostAttempts: 0)
            for try await (count, oldest, most) in try await connection.query(
                "SELECT count(*)::int8, min(finished_at), coalesce(max(attempts), 0)::int8 FROM notifications",
                logger: logger
            ).decode((Int, String?, Int).self) {
                backlog = NotificationBacklog(count: count, oldestFinishedAt: oldest, mostAttempts: most)
            }
            for try await last in try await connection.query(
                """
                SELECT last_error FROM notifications WHERE last_error IS NOT NULL ORDER BY next_attempt DESC LIMIT 1
                """,
                logger: logger
            ).decode(String.self) {
                backlog.lastError = last
            }
            return backlog
        }
    }
}
