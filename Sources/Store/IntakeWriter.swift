import GRDB
import GRDBSQLite
import Kinds

/// Writes intake rows into the normalised model of the pipeline this replaces: patients (mrn unique),
/// persons (one per patient: names and birth date, updated only when changed, every change kept in
/// `person_history` with the file that made it), and visits (visit_account_number unique, linked to the
/// patient). A visit seen again with identical content is a duplicate; with different content or another
/// MRN it is a conflict naming the file that stored it first.
struct IntakeWriter {
    let db: Database
    let fileID: String

    /// Migration v3's schema (frozen once shipped).
    static let schema = """
        CREATE TABLE patients (
            id         INTEGER PRIMARY KEY,
            mrn        TEXT NOT NULL UNIQUE,
            file_id    TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED
        ) STRICT;
        CREATE INDEX patients_by_file ON patients (file_id);

        CREATE TABLE persons (
            patient_id  INTEGER PRIMARY KEY REFERENCES patients (id),
            first_name  TEXT NOT NULL,
            last_name   TEXT NOT NULL,
            birth_date  TEXT NOT NULL,
            file_id     TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED
        ) STRICT;
        CREATE INDEX persons_by_file ON persons (file_id);

        CREATE TABLE person_history (
            seq        INTEGER PRIMARY KEY,
            patient_id INTEGER NOT NULL REFERENCES patients (id),
            field      TEXT NOT NULL CHECK (field IN ('first_name', 'last_name', 'birth_date')),
            old_value  TEXT NOT NULL,
            new_value  TEXT NOT NULL,
            file_id    TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED,
            record     INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX person_history_by_patient ON person_history (patient_id);
        CREATE INDEX person_history_by_file ON person_history (file_id);

        CREATE TABLE visits (
            id                   INTEGER PRIMARY KEY,
            visit_account_number TEXT NOT NULL UNIQUE,
            patient_id           INTEGER NOT NULL REFERENCES patients (id),
            visit_date           TEXT NOT NULL,
            reason               TEXT,
            file_id              TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED,
            record               INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX visits_by_patient ON visits (patient_id);
        CREATE INDEX visits_by_file ON visits (file_id);
        """

    /// Writes a chunk of rows. The statements run through SQLite's C API on statements prepared once
    /// per chunk: at hundreds of thousands of rows a file, GRDB's per-call conveniences (argument
    /// arrays, rows decoded by column name) cost more than SQLite's own work.
    func write(_ items: [Item<IntakeRecord>]) throws -> FileReport {
        var report = FileReport(outcome: .accepted)
        var rejectedRecords = 0  // each item is one record, judged once: a count, no set
        var patientsCreated = 0
        var patientsUpdated = 0
        guard let connection = db.sqliteConnection else { throw DatabaseError(resultCode: .SQLITE_MISUSE) }
        let sql = try IntakeStatements(connection)
        defer { sql.finalize() }
        for item in items {
            switch item.result {
            case .failure(let problems):
                rejectedRecords += 1
                problems.append(to: &report.errors)
            case .success(let row):
                // The visit first: a conflicting row changes nothing, not even the person.
                try sql.visitByNumber.bind(1, row.visitAccountNumber)
                if try sql.visitByNumber.step() {
                    let visit = sql.visitByNumber
                    let same =
                        visit.equals(0, row.mrn) && visit.equals(1, row.visitDate) && visit.equals(2, row.reason)
                    let earlier = visit.text(3)
                    let ours = earlier == fileID && visit.int(4) == Int64(item.number)
                    try visit.reset()
                    if !same {
                        rejectedRecords += 1
                        report.errors.append(
                            RecordProblem(
                                record: item.number,
                                line: item.line,
                                pointer: "/visit_account_number",
                                message:
                                    "conflicts with the visit stored from file \(earlier) (another MRN, date or reason)"
                            )
                        )
                    } else if ours {
                        // This very row, committed by an earlier chunk before a crash: stored, not again.
                        report.stored += 1
                    } else {
                        // A duplicate is skipped whole (its person fields too), so that processing rows
                        // again changes nothing.
                        report.duplicates += 1
                    }
                    continue
                }
                try sql.visitByNumber.reset()
                let (patientID, created, updated) = try upsertPatient(row, record: item.number, sql)
                if created { patientsCreated += 1 }
                if updated { patientsUpdated += 1 }
                let insert = sql.insertVisit
                try insert.bind(1, row.visitAccountNumber)
                try insert.bind(2, patientID)
                try insert.bind(3, row.visitDate)
                try insert.bind(4, row.reason)
                try insert.bind(5, fileID)
                try insert.bind(6, Int64(item.number))
                try insert.run()
                report.stored += 1
            }
        }
        report.rejected = rejectedRecords
        report.outcome = FileReport.outcome(
            stored: report.stored,
            duplicates: report.duplicates,
            rejected: report.rejected
        )
        report.details = [
            "patients_created": patientsCreated, "patients_updated": patientsUpdated, "visits_created": report.stored,
        ]
        return report
    }

    /// The patient of `row.mrn`, created with its person if new; the person's fields updated (with
    /// history) only where they changed.
    private func upsertPatient(_ row: IntakeRecord, record: Int, _ sql: IntakeStatements) throws -> (
        Int64, created: Bool, updated: Bool
    ) {
        let lookup = sql.patientByMRN
        try lookup.bind(1, row.mrn)
        if try lookup.step() {
            let id = lookup.int(0)
            var changes: [(field: String, old: String, new: String)] = []
            for (column, field, new) in [
                (Int32(1), "first_name", row.firstName), (2, "last_name", row.lastName),
                (3, "birth_date", row.birthDate),
            ] where !lookup.equals(column, new) {
                changes.append((field, lookup.text(column), new))
            }
            try lookup.reset()
            guard !changes.isEmpty else { return (id, false, false) }
            let update = sql.updatePerson
            try update.bind(1, row.firstName)
            try update.bind(2, row.lastName)
            try update.bind(3, row.birthDate)
            try update.bind(4, fileID)
            try update.bind(5, id)
            try update.run()
            for change in changes {
                let history = sql.insertHistory
                try history.bind(1, id)
                try history.bind(2, change.field)
                try history.bind(3, change.old)
                try history.bind(4, change.new)
                try history.bind(5, fileID)
                try history.bind(6, Int64(record))
                try history.run()
            }
            return (id, false, true)
        }
        try lookup.reset()
        try sql.insertPatient.bind(1, row.mrn)
        try sql.insertPatient.bind(2, fileID)
        try sql.insertPatient.run()
        let id = db.lastInsertedRowID
        let person = sql.insertPerson
        try person.bind(1, id)
        try person.bind(2, row.firstName)
        try person.bind(3, row.lastName)
        try person.bind(4, row.birthDate)
        try person.bind(5, fileID)
        try person.run()
        return (id, true, false)
    }
}

/// The intake writer's statements, prepared on the writer's connection for one chunk.
private struct IntakeStatements {
    let visitByNumber: RawStatement
    let patientByMRN: RawStatement
    let insertPatient: RawStatement
    let insertPerson: RawStatement
    let updatePerson: RawStatement
    let insertHistory: RawStatement
    let insertVisit: RawStatement

    init(_ connection: OpaquePointer) throws {
        visitByNumber = try RawStatement(
            connection,
            """
            SELECT p.mrn, v.visit_date, v.reason, v.file_id, v.record
            FROM visits v JOIN patients p ON p.id = v.patient_id
            WHERE v.visit_account_number = ?
            """
        )
        patientByMRN = try RawStatement(
            connection,
            """
            SELECT p.id, s.first_name, s.last_name, s.birth_date FROM patients p
            JOIN persons s ON s.patient_id = p.id WHERE p.mrn = ?
            """
        )
        insertPatient = try RawStatement(connection, "INSERT INTO patients (mrn, file_id) VALUES (?, ?)")
        insertPerson = try RawStatement(
            connection,
            "INSERT INTO persons (patient_id, first_name, last_name, birth_date, file_id) VALUES (?, ?, ?, ?, ?)"
        )
        updatePerson = try RawStatement(
            connection,
            "UPDATE persons SET first_name = ?, last_name = ?, birth_date = ?, file_id = ? WHERE patient_id = ?"
        )
        insertHistory = try RawStatement(
            connection,
            """
            INSERT INTO person_history (patient_id, field, old_value, new_value, file_id, record)
            VALUES (?, ?, ?, ?, ?, ?)
            """
        )
        insertVisit = try RawStatement(
            connection,
            """
            INSERT INTO visits (visit_account_number, patient_id, visit_date, reason, file_id, record)
            VALUES (?, ?, ?, ?, ?, ?)
            """
        )
    }

    func finalize() {
        for statement in [
            visitByNumber, patientByMRN, insertPatient, insertPerson, updatePerson, insertHistory, insertVisit,
        ] {
            statement.finalize()
        }
    }
}
