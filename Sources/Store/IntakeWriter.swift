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
                // One descent of each unique index for a new row: the patient is inserted unless its MRN
                // is there (then looked up), the visit unless its number is there (then looked up and
                // judged). Looking each key up first and then inserting it took two.
                let patient = try patient(row, sql)
                let visit = sql.insertVisit
                try visit.bind(1, row.visitAccountNumber)
                try visit.bind(2, patient.id)
                try visit.bind(3, row.visitDate)
                try visit.bind(4, row.reason)
                try visit.bind(5, fileID)
                try visit.bind(6, Int64(item.number))
                if try visit.insert() {
                    report.stored += 1
                    if patient.created {
                        try writePerson(row, patient: patient.id, sql.insertPerson)
                        patientsCreated += 1
                    } else if !patient.changes.isEmpty {
                        try updatePerson(row, patient: patient.id, changes: patient.changes, record: item.number, sql)
                        patientsUpdated += 1
                    }
                    continue
                }
                // The visit was there: this row changes nothing, not even the person; a patient it
                // created goes again (nothing refers to it yet).
                if patient.created {
                    try sql.deletePatient.bind(1, patient.id)
                    try sql.deletePatient.run()
                }
                let stored = sql.visitByNumber
                try stored.bind(1, row.visitAccountNumber)
                guard try stored.step() else { throw DatabaseError(resultCode: .SQLITE_CORRUPT) }
                let same = stored.equals(0, row.mrn) && stored.equals(1, row.visitDate) && stored.equals(2, row.reason)
                let earlier = stored.text(3)
                let ours = earlier == fileID && stored.int(4) == Int64(item.number)
                try stored.reset()
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

    /// The patient of `row.mrn`: inserted if new (its person follows once the row's visit is stored),
    /// else looked up with the person fields this row would change.
    private func patient(_ row: IntakeRecord, _ sql: IntakeStatements) throws -> (
        id: Int64, created: Bool, changes: [(field: String, old: String, new: String)]
    ) {
        let insert = sql.insertPatient
        try insert.bind(1, row.mrn)
        try insert.bind(2, fileID)
        if try insert.insert() { return (db.lastInsertedRowID, true, []) }
        let lookup = sql.patientByMRN
        try lookup.bind(1, row.mrn)
        guard try lookup.step() else { throw DatabaseError(resultCode: .SQLITE_CORRUPT) }
        let id = lookup.int(0)
        var changes: [(field: String, old: String, new: String)] = []
        for (column, field, new) in [
            (Int32(1), "first_name", row.firstName), (2, "last_name", row.lastName), (3, "birth_date", row.birthDate),
        ] where !lookup.equals(column, new) {
            changes.append((field, lookup.text(column), new))
        }
        try lookup.reset()
        return (id, false, changes)
    }

    /// Writes the person's fields as `row` has them with `statement` (an insert or an update, each taking
    /// the patient's id, the three fields and the file's id as parameters 1 to 5).
    private func writePerson(_ row: IntakeRecord, patient id: Int64, _ statement: RawStatement) throws {
        try statement.bind(1, id)
        try statement.bind(2, row.firstName)
        try statement.bind(3, row.lastName)
        try statement.bind(4, row.birthDate)
        try statement.bind(5, fileID)
        try statement.run()
    }

    /// The person's fields as this row has them, and each change in `person_history`.
    private func updatePerson(
        _ row: IntakeRecord,
        patient id: Int64,
        changes: [(field: String, old: String, new: String)],
        record: Int,
        _ sql: IntakeStatements
    ) throws {
        try writePerson(row, patient: id, sql.updatePerson)
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
    }
}

/// The intake writer's statements, prepared on the writer's connection for one chunk.
private struct IntakeStatements {
    let visitByNumber: RawStatement
    let patientByMRN: RawStatement
    let insertPatient: RawStatement
    let deletePatient: RawStatement
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
        insertPatient = try RawStatement(
            connection,
            "INSERT INTO patients (mrn, file_id) VALUES (?, ?) ON CONFLICT (mrn) DO NOTHING"
        )
        deletePatient = try RawStatement(connection, "DELETE FROM patients WHERE id = ?")
        insertPerson = try RawStatement(
            connection,
            "INSERT INTO persons (patient_id, first_name, last_name, birth_date, file_id) VALUES (?, ?, ?, ?, ?)"
        )
        updatePerson = try RawStatement(
            connection,
            "UPDATE persons SET first_name = ?2, last_name = ?3, birth_date = ?4, file_id = ?5 WHERE patient_id = ?1"
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
            VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (visit_account_number) DO NOTHING
            """
        )
    }

    func finalize() {
        for statement in [
            visitByNumber, patientByMRN, insertPatient, deletePatient, insertPerson, updatePerson, insertHistory,
            insertVisit,
        ] {
            statement.finalize()
        }
    }
}
