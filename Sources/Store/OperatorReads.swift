import Kinds

/// What the operator commands read of a store (and the audit rows they add): one API over SQLite (one
/// host's ledger) and the PostgreSQL database several hosts share (every host's, each row naming its
/// host; `host` narrows to one). Blocking calls: the commands are short-lived processes.
package protocol OperatorReads: Sendable {
    /// Whether rows say which host wrote them (a shared store), so that `host` can narrow them.
    var knowsHosts: Bool { get }
    /// Ledger rows with these outcomes (of `kind`, of `host`, finished at or after `since`), newest first.
    func ledger(outcomes: [String], kind: String?, since: String?, host: String?, limit: Int) throws -> [LedgerEntry]
    /// The ledger row of file `id` (in a shared store, also a large file's row while its chunks are stored
    /// on some host: outcome `processing`).
    func ledgerEntry(id: String) throws -> LedgerEntry?
    /// Files and records per day (UTC, by finish), kind and outcome (and host), at or after `since`.
    func dailyReport(since: String?, host: String?) throws -> [DailyReportRow]
    /// Audit rows at or after `since`, oldest first.
    func auditEntries(since: String?, limit: Int) throws -> [AuditEntry]
    /// Adds an operator action to the audit trail.
    func audit(at: String, actor: String, action: String, target: String?, detail: String?) throws
    /// Patients with their person and number of visits (``AppDatabase/patients(id:mrn:firstName:lastName:page:pageSize:)``).
    func patients(id: Int64?, mrn: String?, firstName: String?, lastName: String?, page: Int, pageSize: Int) throws
        -> Page<PatientRow>
    /// The visits of each of `patients`, by visit date then id.
    func visits(ofPatients patients: [Int64]) throws -> [Int64: [PatientVisit]]
    /// Visits, optionally of one patient (by MRN), newest visit date first.
    func visits(mrn: String?, page: Int, pageSize: Int) throws -> Page<VisitRow>
    /// Appointments' current state, optionally of one appointment or one patient.
    func appointments(id: String?, patient: String?, page: Int, pageSize: Int) throws -> Page<AppointmentRow>
    /// Stored appointment events, in the order they were stored.
    func appointmentEvents(id: String?, patient: String?, page: Int, pageSize: Int) throws
        -> Page<AppDatabase.StoredEvent>
    /// The newest rejected or partial files (of `host`), newest first, the ledger's columns as text.
    func lastFailures(limit: Int, host: String?) throws -> [[String: String?]]
    /// Zoom's webhook counters.
    func zoomCounters() throws -> [(event: String, received: Int, inserted: Int)]
    /// The visits of Zoom meeting `id` (a meeting id, or one visit's uuid), oldest first, with their intervals.
    func zoomVisits(meeting id: String) throws -> [AppDatabase.ZoomVisit]
    /// The notifications owed.
    func notificationBacklog() throws -> NotificationBacklog
}

package typealias DailyReportRow = (
    day: String, kind: String, outcome: String, host: String?, files: Int, stored: Int, duplicates: Int, rejected: Int
)
package typealias PatientRow = (
    id: Int64, mrn: String, firstName: String, lastName: String, birthDate: String, visits: Int
)
package typealias PatientVisit = (id: Int64, number: String, date: String, reason: String?)
package typealias VisitRow = (
    visitAccountNumber: String, mrn: String, visitDate: String, reason: String?, fileID: String
)
package typealias AppointmentRow = (id: String, patient: String, status: String, eventType: String, at: String)

extension AppDatabase: OperatorReads {
    /// One host's store: its rows name no host.
    package var knowsHosts: Bool { false }

    package func ledger(outcomes: [String], kind: String?, since: String?, host: String?, limit: Int) throws
        -> [LedgerEntry]
    {
        try ledger(outcomes: outcomes, kind: kind, since: since, limit: limit)
    }

    package func dailyReport(since: String?, host: String?) throws -> [DailyReportRow] {
        try dailyReport(since: since).map {
            ($0.day, $0.kind, $0.outcome, nil, $0.files, $0.stored, $0.duplicates, $0.rejected)
        }
    }

    package func lastFailures(limit: Int, host: String?) throws -> [[String: String?]] {
        try lastFailures(limit: limit)
    }
}
