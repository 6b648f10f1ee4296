import GRDB
package import Kinds

/// The audit trail: every file's outcome and every operator action, with who, what and when — the
/// trail a HIPAA review asks for. Rows are only ever added.
package enum AuditTrail {

    static func record(_ db: Database, at: String, actor: String, action: String, target: String?, detail: String?)
        throws
    {
        try db.cachedStatement(sql: "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)")
            .execute(arguments: [at, actor, action, target, detail])
    }
}

/// One audit row.
package struct AuditEntry: Sendable {
    package var seq: Int64
    package var at: String
    package var actor: String
    package var action: String
    package var target: String?
    package var detail: String?

    package init(seq: Int64, at: String, actor: String, action: String, target: String?, detail: String?) {
        self.seq = seq
        self.at = at
        self.actor = actor
        self.action = action
        self.target = target
        self.detail = detail
    }
}

/// A file's ledger row, for operators.
package struct LedgerEntry: Sendable {
    package var id: String
    package var kind: String
    package var originalName: String
    package var size: Int
    /// A gzip file's size decompressed (`size` is as received).
    package var decompressedSize: Int?
    package var receivedAt: String
    package var finishedAt: String
    package var outcome: String
    package var stored: Int
    package var duplicates: Int
    package var rejected: Int
    package var report: FileReport?
    /// The host whose verdict it is (nil in a SQLite file's rows from before migration v11).
    package var host: String?

    package init(
        id: String,
        kind: String,
        originalName: String,
        size: Int,
        decompressedSize: Int?,
        receivedAt: String,
        finishedAt: String,
        outcome: String,
        stored: Int,
        duplicates: Int,
        rejected: Int,
        report: FileReport?,
        host: String? = nil
    ) {
        self.id = id
        self.kind = kind
        self.originalName = originalName
        self.size = size
        self.decompressedSize = decompressedSize
        self.receivedAt = receivedAt
        self.finishedAt = finishedAt
        self.outcome = outcome
        self.stored = stored
        self.duplicates = duplicates
        self.rejected = rejected
        self.report = report
        self.host = host
    }
}

/// A page of rows and how many there are in all.
package struct Page<Row: Sendable>: Sendable {
    package var total: Int
    package var rows: [Row]

    package init(total: Int, rows: [Row]) {
        self.total = total
        self.rows = rows
    }
}

extension AppDatabase {
    /// The OFFSET of `page` (from 1; below 1 is page 1) of `pageSize` rows, in checked arithmetic: a page
    /// so far out that its offset overflows (`--page 9223372036854775807` trapped) is past every row,
    /// an empty page.
    package static func offset(page: Int, pageSize: Int) -> Int {
        let (offset, overflow) = (max(page, 1) - 1).multipliedReportingOverflow(by: max(pageSize, 0))
        return overflow ? Int.max : offset
    }
}

extension AppDatabase {
    /// Adds an operator action to the audit trail.
    package func audit(at: String, actor: String, action: String, target: String?, detail: String?) throws {
        try writer.write { db in
            try AuditTrail.record(db, at: at, actor: actor, action: action, target: target, detail: detail)
        }
    }

    /// Audit rows at or after `since` (an RFC 3339 prefix such as `2026-11-23`), oldest first.
    package func auditEntries(since: String?, limit: Int) throws -> [AuditEntry] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM audit WHERE at >= ? ORDER BY seq LIMIT ?",
                arguments: [since ?? "", limit]
            ).map {
                AuditEntry(
                    seq: $0["seq"],
                    at: $0["at"],
                    actor: $0["actor"],
                    action: $0["action"],
                    target: $0["target"],
                    detail: $0["detail"]
                )
            }
        }
    }

    private static let ledgerColumns =
        "id, kind, original_name, size, decompressed_size, received_at, finished_at, outcome, stored, duplicates, "
        + "rejected, report, host"

    private static func ledgerEntry(_ row: Row) -> LedgerEntry {
        LedgerEntry(
            id: row["id"],
            kind: row["kind"],
            originalName: row["original_name"],
            size: row["size"],
            decompressedSize: row["decompressed_size"],
            receivedAt: row["received_at"],
            finishedAt: row["finished_at"],
            outcome: row["outcome"],
            stored: row["stored"],
            duplicates: row["duplicates"],
            rejected: row["rejected"],
            report: FileReport(json: row["report"]),
            host: row["host"]
        )
    }

    /// Ledger rows with these outcomes (of `kind`, finished at or after `since`), newest first.
    package func ledger(outcomes: [String], kind: String?, since: String?, limit: Int) throws -> [LedgerEntry] {
        try writer.read { db in
            let marks = outcomes.map { _ in "?" }.joined(separator: ", ")
            var arguments: StatementArguments = StatementArguments(outcomes)
            var sql = "SELECT \(Self.ledgerColumns) FROM files WHERE outcome IN (\(marks)) AND finished_at >= ?"
            arguments += [since ?? ""]
            if let kind {
                sql += " AND kind = ?"
                arguments += [kind]
            }
            sql += " ORDER BY finished_at DESC, id DESC LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.ledgerEntry)
        }
    }

    /// The ledger row of file `id`.
    package func ledgerEntry(id: String) throws -> LedgerEntry? {
        try writer.read { db in
            try Row.fetchOne(db, sql: "SELECT \(Self.ledgerColumns) FROM files WHERE id = ?", arguments: [id])
                .map(Self.ledgerEntry)
        }
    }

    /// Files and records per day (UTC, by finish), kind and outcome, at or after `since`.
    package func dailyReport(since: String?) throws -> [(
        day: String, kind: String, outcome: String, files: Int, stored: Int, duplicates: Int, rejected: Int
    )] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT substr(finished_at, 1, 10) AS day, kind, outcome, count(*) AS files,
                           sum(stored) AS stored, sum(duplicates) AS duplicates, sum(rejected) AS rejected
                    FROM files WHERE finished_at >= ? GROUP BY day, kind, outcome ORDER BY day, kind, outcome
                    """,
                arguments: [since ?? ""]
            ).map {
                ($0["day"], $0["kind"], $0["outcome"], $0["files"], $0["stored"], $0["duplicates"], $0["rejected"])
            }
        }
    }

    /// Patients (with their person and number of visits), filtered like the pipeline this replaces:
    /// `GET /patients?page=&page_size=&mrn=&first_name=&last_name=` (names match case-insensitively
    /// from their start).
    package func patients(
        id: Int64? = nil,
        mrn: String?,
        firstName: String?,
        lastName: String?,
        page: Int,
        pageSize: Int
    ) throws
        -> Page<(id: Int64, mrn: String, firstName: String, lastName: String, birthDate: String, visits: Int)>
    {
        try writer.read { db in
            var conditions: [String] = []
            var arguments: StatementArguments = []
            if let id {
                conditions.append("p.id = ?")
                arguments += [id]
            }
            if let mrn {
                conditions.append("p.mrn = ?")
                arguments += [mrn]
            }
            if let firstName {
                conditions.append("s.first_name LIKE ? ESCAPE '\\'")
                arguments += [Self.likePrefix(firstName)]
            }
            if let lastName {
                conditions.append("s.last_name LIKE ? ESCAPE '\\'")
                arguments += [Self.likePrefix(lastName)]
            }
            let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
            let total =
                try Int.fetchOne(
                    db,
                    sql: "SELECT count(*) FROM patients p JOIN persons s ON s.patient_id = p.id \(filter)",
                    arguments: arguments
                ) ?? 0
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT p.id, p.mrn, s.first_name, s.last_name, s.birth_date,
                           (SELECT count(*) FROM visits v WHERE v.patient_id = p.id) AS visits
                    FROM patients p JOIN persons s ON s.patient_id = p.id \(filter)
                    ORDER BY p.mrn LIMIT ? OFFSET ?
                    """,
                arguments: arguments + [pageSize, Self.offset(page: page, pageSize: pageSize)]
            ).map {
                (
                    $0["id"] as Int64, $0["mrn"] as String, $0["first_name"] as String, $0["last_name"] as String,
                    $0["birth_date"] as String, $0["visits"] as Int
                )
            }
            return Page(total: total, rows: rows)
        }
    }

    /// The visits of each of `patients` (their ids), by visit date then id: one query for a page.
    package func visits(ofPatients patients: [Int64]) throws
        -> [Int64: [(id: Int64, number: String, date: String, reason: String?)]]
    {
        guard !patients.isEmpty else { return [:] }
        return try writer.read { db in
            var found: [Int64: [(id: Int64, number: String, date: String, reason: String?)]] = [:]
            let marks = Array(repeating: "?", count: patients.count).joined(separator: ",")
            let rows = try Row.fetchCursor(
                db,
                sql: """
                    SELECT id, patient_id, visit_account_number, visit_date, reason FROM visits
                    WHERE patient_id IN (\(marks)) ORDER BY patient_id, visit_date, id
                    """,
                arguments: StatementArguments(patients)
            )
            while let row = try rows.next() {
                found[row["patient_id"] as Int64, default: []].append(
                    (row["id"], row["visit_account_number"], row["visit_date"], row["reason"])
                )
            }
            return found
        }
    }

    /// Visits, optionally of one patient (by MRN), newest visit date first.
    package func visits(mrn: String?, page: Int, pageSize: Int) throws
        -> Page<(visitAccountNumber: String, mrn: String, visitDate: String, reason: String?, fileID: String)>
    {
        try writer.read { db in
            let filter = mrn == nil ? "" : "WHERE p.mrn = ?"
            let arguments: StatementArguments = mrn.map { [$0] } ?? []
            let total =
                try Int.fetchOne(
                    db,
                    sql: "SELECT count(*) FROM visits v JOIN patients p ON p.id = v.patient_id \(filter)",
                    arguments: arguments
                ) ?? 0
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT v.visit_account_number, p.mrn, v.visit_date, v.reason, v.file_id
                    FROM visits v JOIN patients p ON p.id = v.patient_id \(filter)
                    ORDER BY v.visit_date DESC, v.visit_account_number LIMIT ? OFFSET ?
                    """,
                arguments: arguments + [pageSize, Self.offset(page: page, pageSize: pageSize)]
            ).map {
                (
                    $0["visit_account_number"] as String, $0["mrn"] as String, $0["visit_date"] as String,
                    $0["reason"] as String?, $0["file_id"] as String
                )
            }
            return Page(total: total, rows: rows)
        }
    }

    /// Appointments' current state, optionally of one appointment or one patient.
    package func appointments(id: String?, patient: String?, page: Int, pageSize: Int) throws
        -> Page<(id: String, patient: String, status: String, eventType: String, at: String)>
    {
        try writer.read { db in
            let (filter, arguments) = Self.appointmentFilter(id: id, patient: patient, table: "")
            let total =
                try Int.fetchOne(db, sql: "SELECT count(*) FROM appointments \(filter)", arguments: arguments) ?? 0
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT appointment_id, patient_id, status, event_type, event_timestamp FROM appointments \(filter)
                    ORDER BY appointment_id LIMIT ? OFFSET ?
                    """,
                arguments: arguments + [pageSize, Self.offset(page: page, pageSize: pageSize)]
            ).map {
                (
                    $0["appointment_id"] as String, $0["patient_id"] as String, $0["status"] as String,
                    $0["event_type"] as String, $0["event_timestamp"] as String
                )
            }
            return Page(total: total, rows: rows)
        }
    }

    /// The WHERE clause (or nothing) and arguments of an appointment query by id and patient; `table` is
    /// the columns' qualifier (`"e."` or `""`).
    private static func appointmentFilter(id: String?, patient: String?, table: String) -> (String, StatementArguments)
    {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        if let id {
            conditions.append(table + "appointment_id = ?")
            arguments += [id]
        }
        if let patient {
            conditions.append(table + "patient_id = ?")
            arguments += [patient]
        }
        return (conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND "), arguments)
    }

    /// One stored appointment event, as the replaced appointment receiver's `GET /events` listed it.
    package struct StoredEvent: Sendable {
        package var id: Int64
        package var eventType: String
        package var appointmentID: String
        package var patientID: String
        package var timestamp: String
        package var notes: String?
        /// When the file that brought it was received (the ledger's `received_at`).
        package var receivedAt: String

        package init(
            id: Int64,
            eventType: String,
            appointmentID: String,
            patientID: String,
            timestamp: String,
            notes: String?,
            receivedAt: String
        ) {
            self.id = id
            self.eventType = eventType
            self.appointmentID = appointmentID
            self.patientID = patientID
            self.timestamp = timestamp
            self.notes = notes
            self.receivedAt = receivedAt
        }
    }

    /// Stored appointment events, in the order they were stored, filtered and paged like
    /// ``appointments(id:patient:page:pageSize:)``.
    package func appointmentEvents(id: String?, patient: String?, page: Int, pageSize: Int) throws
        -> Page<StoredEvent>
    {
        try writer.read { db in
            let (filter, arguments) = Self.appointmentFilter(id: id, patient: patient, table: "e.")
            let total =
                try Int.fetchOne(db, sql: "SELECT count(*) FROM appointment_events e \(filter)", arguments: arguments)
                ?? 0
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT e.seq, e.event_type, e.appointment_id, e.patient_id, e.timestamp, e.notes, f.received_at
                    FROM appointment_events e JOIN files f ON f.id = e.file_id \(filter)
                    ORDER BY e.seq LIMIT ? OFFSET ?
                    """,
                arguments: arguments + [pageSize, Self.offset(page: page, pageSize: pageSize)]
            ).map {
                StoredEvent(
                    id: $0["seq"],
                    eventType: $0["event_type"],
                    appointmentID: $0["appointment_id"],
                    patientID: $0["patient_id"],
                    timestamp: $0["timestamp"],
                    notes: $0["notes"],
                    receivedAt: $0["received_at"]
                )
            }
            return Page(total: total, rows: rows)
        }
    }

    /// `text%` for LIKE, with `%`, `_` and `\` in `text` taken literally.
    package static func likePrefix(_ text: String) -> String {
        var escaped = ""
        for character in text {
            if character == "%" || character == "_" || character == "\\" { escaped.append("\\") }
            escaped.append(character)
        }
        return escaped + "%"
    }
}
