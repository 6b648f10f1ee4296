import GRDB
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

    func write(_ items: [Item<IntakeRecord>]) throws -> FileReport {
        var report = FileReport(outcome: .accepted)
        var rejectedRecords = Set<Int>()
        var patientsCreated = 0
        var patientsUpdated = 0
        for item in items {
            switch item.result {
            case .failure(let problems):
                rejectedRecords.insert(item.number)
                report.errors += problems.list
            case .success(let row):
                // The visit first: a conflicting row changes nothing, not even the person.
                let visit = try Row.fetchOne(
                    db.cachedStatement(
                        sql: """
                            SELECT p.mrn, v.visit_date, v.reason, v.file_id, v.record
                            FROM visits v JOIN patients p ON p.id = v.patient_id
                            WHERE v.visit_account_number = ?
                            """
                    ),
                    arguments: [row.visitAccountNumber]
                )
                if let visit {
                    let same =
                        visit["mrn"] == row.mrn && visit["visit_date"] == row.visitDate
                        && (visit["reason"] as String?) == row.reason
                    if !same {
                        rejectedRecords.insert(item.number)
                        let earlier: String = visit["file_id"]
                        report.errors.append(
                            RecordProblem(
                                record: item.number,
                                line: item.line,
                                pointer: "/visit_account_number",
                                message:
                                    "conflicts with the visit stored from file \(earlier) (another MRN, date or reason)"
                            )
                        )
                        continue
                    }
                }
                if let visit {
                    // A duplicate is skipped whole (its person fields too), so that processing rows again
                    // changes nothing; this very row, committed by an earlier chunk before a crash, is ours.
                    if visit["file_id"] == fileID && visit["record"] == item.number {
                        report.stored += 1
                    } else {
                        report.duplicates += 1
                    }
                    continue
                }
                let (patientID, created, updated) = try upsertPatient(row, record: item.number)
                if created { patientsCreated += 1 }
                if updated { patientsUpdated += 1 }
                try db.cachedStatement(
                    sql: """
                        INSERT INTO visits (visit_account_number, patient_id, visit_date, reason, file_id, record)
                        VALUES (?, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [
                    row.visitAccountNumber, patientID, row.visitDate, row.reason, fileID, item.number,
                ])
                report.stored += 1
            }
        }
        report.rejected = rejectedRecords.count
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
    private func upsertPatient(_ row: IntakeRecord, record: Int) throws -> (Int64, created: Bool, updated: Bool) {
        if let existing = try Row.fetchOne(
            db.cachedStatement(
                sql: """
                    SELECT p.id, s.first_name, s.last_name, s.birth_date FROM patients p
                    JOIN persons s ON s.patient_id = p.id WHERE p.mrn = ?
                    """
            ),
            arguments: [row.mrn]
        ) {
            let id: Int64 = existing["id"]
            var changed = false
            for (field, new) in [
                ("first_name", row.firstName), ("last_name", row.lastName), ("birth_date", row.birthDate),
            ] {
                let old: String = existing[field]
                guard old != new else { continue }
                changed = true
                try db.execute(
                    sql: "UPDATE persons SET \(field) = ?, file_id = ? WHERE patient_id = ?",
                    arguments: [new, fileID, id]
                )
                try db.cachedStatement(
                    sql: """
                        INSERT INTO person_history (patient_id, field, old_value, new_value, file_id, record)
                        VALUES (?, ?, ?, ?, ?, ?)
                        """
                ).execute(arguments: [id, field, old, new, fileID, record])
            }
            return (id, false, changed)
        }
        try db.cachedStatement(sql: "INSERT INTO patients (mrn, file_id) VALUES (?, ?)").execute(arguments: [
            row.mrn, fileID,
        ])
        let id = db.lastInsertedRowID
        try db.cachedStatement(
            sql: "INSERT INTO persons (patient_id, first_name, last_name, birth_date, file_id) VALUES (?, ?, ?, ?, ?)"
        ).execute(arguments: [id, row.firstName, row.lastName, row.birthDate, fileID])
        return (id, true, false)
    }
}
