import JSONSchema
import Kinds
import Logging
import PostgresNIO

/// Intake rows in PostgreSQL: IntakeWriter's rules (patients by MRN, one person each with every change
/// kept in `person_history`, visits unique on their account number; a visit seen again is a duplicate when
/// its MRN, date and reason are the same, else a conflict naming the file that stored it), written set by
/// set: a chunk of rows costs a handful of statements whatever its size, never a statement a row. The
/// chunk's first row of each visit number goes by COPY into a temporary table (``Stage``), which the
/// statements of patients and visits read; the others take their columns as arrays (`unnest`). COPY was
/// measured against `unnest` here: 4–17 % faster (docs/PERFORMANCE.md, twentieth session).
///
/// The statements, in this order, in the caller's transaction:
/// 0. the stage: the chunk's first rows of each visit number, in key order;
/// 1. patients: each MRN of the chunk's first rows of a visit number the database does not have yet,
///    inserted unless there (`ON CONFLICT DO NOTHING … RETURNING`: the ones created);
/// 2. visits: the chunk's first row of each visit number, in key order (two hosts writing overlapping
///    files wait on each other's keys in one order), `ON CONFLICT DO NOTHING … RETURNING` the records
///    stored — a visit another host inserted and has not committed is waited for, then is there;
/// 3. a patient created for no stored visit (another host stored the visit between 1 and 2) goes again;
/// 4. the persons of the stored rows' patients, locked (`FOR UPDATE`, in patient order) and folded row
///    by row in record order as IntakeWriter does one row at a time: a new person, or each changed field
///    into `person_history`; then written, a statement each for the new, the changed and the history;
/// 5. the rows not stored are judged against the visit stored under their number (one look-up).
enum IntakeInPostgres {
    private struct Row {
        let number: Int
        let line: Int
        let record: IntakeRecord
    }

    private struct Person {
        var id: Int64
        var fields: [String]  // first name, last name, birth date
        var new: Bool
        var changed = false
    }

    private static let personFields = ["first_name", "last_name", "birth_date"]

    static func write(
        _ items: [Item<IntakeRecord>],
        fileID: String,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> FileReport {
        var report = FileReport(outcome: .accepted)
        var problems: [RecordProblem] = []
        var rows: [Row] = []
        rows.reserveCapacity(items.count)
        for item in items {
            switch item.result {
            case .failure(let found):
                report.rejected += 1
                found.append(to: &problems)
            case .success(let record): rows.append(Row(number: item.number, line: item.line, record: record))
            }
        }
        // The first row of each visit number (in record order) is the one that may store it; a later row of
        // the same number is judged against what is stored, as one row after another would be.
        // Keys by their bytes (ExactText), as the database tells them apart.
        var seen = Set<ExactText>(minimumCapacity: rows.count)
        var firsts: [Int] = []
        for (index, row) in rows.enumerated() where seen.insert(ExactText(row.record.visitAccountNumber)).inserted {
            firsts.append(index)
        }
        firsts.sort { ExactText(rows[$0].record.visitAccountNumber) < ExactText(rows[$1].record.visitAccountNumber) }

        // 1. Patients, and 2. visits, from the chunk's first rows of each visit number staged by COPY.
        var created: [ExactText: Int64] = [:]
        var stored = Set<Int>()
        if !firsts.isEmpty {
            try await Stage.copy(firsts.map { rows[$0] }, connection, logger)
            let patients = try await connection.query(
                """
                INSERT INTO patients (mrn, file_id)
                SELECT DISTINCT s.mrn, \(fileID)::text FROM pg_temp.carespool_intake_stage s
                WHERE NOT EXISTS (SELECT 1 FROM visits v WHERE v.visit_account_number = s.van)
                ORDER BY s.mrn
                ON CONFLICT (mrn) DO NOTHING
                RETURNING mrn, id
                """,
                logger: logger
            )
            for try await (mrn, id) in patients.decode((String, Int64).self) { created[ExactText(mrn)] = id }
            let visits = try await connection.query(
                """
                INSERT INTO visits (visit_account_number, patient_id, visit_date, reason, file_id, record)
                SELECT s.van, p.id, s.visit_date, s.reason, \(fileID)::text, s.record
                FROM pg_temp.carespool_intake_stage s JOIN patients p ON p.mrn = s.mrn
                ORDER BY s.ord
                ON CONFLICT (visit_account_number) DO NOTHING
                RETURNING record
                """,
                logger: logger
            )
            for try await record in visits.decode(Int64.self) { stored.insert(Int(record)) }
        }

        // 3. A patient created for no stored visit.
        var storedMRNs = Set<ExactText>()
        for row in rows where stored.contains(row.number) { storedMRNs.insert(ExactText(row.record.mrn)) }
        let orphans = created.filter { !storedMRNs.contains($0.key) }.map(\.value).sorted()
        if !orphans.isEmpty {
            try await connection.query("DELETE FROM patients WHERE id = ANY(\(orphans)::int8[])", logger: logger)
        }

        // 4. Persons.
        var persons: [ExactText: Person] = [:]
        for (mrn, id) in created where storedMRNs.contains(mrn) { persons[mrn] = Person(id: id, fields: [], new: true) }
        let existing = storedMRNs.filter { created[$0] == nil }.sorted().map(\.text)
        if !existing.isEmpty {
            let found = try await connection.query(
                """
                SELECT p.mrn, p.id, s.first_name, s.last_name, s.birth_date
                FROM patients p JOIN persons s ON s.patient_id = p.id
                WHERE p.mrn = ANY(\(existing)::text[])
                ORDER BY p.id
                FOR UPDATE OF s
                """,
                logger: logger
            )
            for try await (mrn, id, first, last, birth) in found.decode((String, Int64, String, String, String).self) {
                persons[ExactText(mrn)] = Person(id: id, fields: [first, last, birth], new: false)
            }
        }
        var history: (patients: [Int64], fields: [String], old: [String], new: [String], records: [Int64]) = (
            [], [], [], [], []
        )
        var patientsCreated = 0
        var patientsUpdated = 0
        for row in rows where stored.contains(row.number) {
            let fields = [row.record.firstName, row.record.lastName, row.record.birthDate]
            guard var person = persons[ExactText(row.record.mrn)] else {
                throw PostgresStoreError(
                    description: "a stored visit's patient has no person (database edited by hand?)",
                    transient: false
                )
            }
            if person.fields.isEmpty {
                person.fields = fields
                patientsCreated += 1
            } else if !zip(person.fields, fields).allSatisfy(sameText) {
                for index in 0..<3 where !sameText(person.fields[index], fields[index]) {
                    history.patients.append(person.id)
                    history.fields.append(personFields[index])
                    history.old.append(person.fields[index])
                    history.new.append(fields[index])
                    history.records.append(Int64(row.number))
                }
                person.fields = fields
                person.changed = true
                patientsUpdated += 1
            }
            persons[ExactText(row.record.mrn)] = person
        }
        let written = persons.values.sorted { $0.id < $1.id }
        let new = written.filter(\.new)
        if !new.isEmpty {
            try await connection.query(
                """
                INSERT INTO persons (patient_id, first_name, last_name, birth_date, file_id)
                SELECT c.id, c.first_name, c.last_name, c.birth_date, \(fileID)::text
                FROM unnest(\(new.map(\.id))::int8[], \(new.map { $0.fields[0] })::text[],
                            \(new.map { $0.fields[1] })::text[], \(new.map { $0.fields[2] })::text[])
                     AS c (id, first_name, last_name, birth_date)
                """,
                logger: logger
            )
        }
        let changed = written.filter { !$0.new && $0.changed }
        if !changed.isEmpty {
            try await connection.query(
                """
                UPDATE persons s SET first_name = c.first_name, last_name = c.last_name, birth_date = c.birth_date,
                       file_id = \(fileID)::text
                FROM unnest(\(changed.map(\.id))::int8[], \(changed.map { $0.fields[0] })::text[],
                            \(changed.map { $0.fields[1] })::text[], \(changed.map { $0.fields[2] })::text[])
                     AS c (id, first_name, last_name, birth_date)
                WHERE s.patient_id = c.id
                """,
                logger: logger
            )
        }
        if !history.patients.isEmpty {
            try await connection.query(
                """
                INSERT INTO person_history (patient_id, field, old_value, new_value, file_id, record)
                SELECT c.id, c.field, c.old_value, c.new_value, \(fileID)::text, c.record
                FROM unnest(\(history.patients)::int8[], \(history.fields)::text[], \(history.old)::text[],
                            \(history.new)::text[], \(history.records)::int8[])
                     WITH ORDINALITY AS c (id, field, old_value, new_value, record, ord)
                ORDER BY c.ord
                """,
                logger: logger
            )
        }

        // 5. The rows not stored, against the visit stored under their number.
        var duplicates = 0
        var ours = 0
        let others = rows.filter { !stored.contains($0.number) }
        if !others.isEmpty {
            let numbers = Set(others.map { ExactText($0.record.visitAccountNumber) }).sorted().map(\.text)
            let found = try await connection.query(
                """
                SELECT v.visit_account_number, p.mrn, v.visit_date, v.reason, v.file_id, v.record
                FROM visits v JOIN patients p ON p.id = v.patient_id
                WHERE v.visit_account_number = ANY(\(numbers)::text[])
                """,
                logger: logger
            )
            var visits: [ExactText: (mrn: String, date: String, reason: String?, file: String, record: Int64)] = [:]
            for try await (number, mrn, date, reason, file, record) in found.decode(
                (String, String, String, String?, String, Int64).self
            ) {
                visits[ExactText(number)] = (mrn, date, reason, file, record)
            }
            for row in others {
                guard let visit = visits[ExactText(row.record.visitAccountNumber)] else {
                    throw PostgresStoreError.neitherStoredNorFound("a visit")
                }
                let same =
                    sameText(visit.mrn, row.record.mrn) && sameText(visit.date, row.record.visitDate)
                    && sameText(visit.reason, row.record.reason)
                if !same {
                    report.rejected += 1
                    problems.append(
                        RecordProblem(
                            record: row.number,
                            line: row.line,
                            pointer: "/visit_account_number",
                            message:
                                "conflicts with the visit stored from file \(visit.file) (another MRN, date or reason)"
                        )
                    )
                } else if sameText(visit.file, fileID) && visit.record == Int64(row.number) {
                    ours += 1  // this very row, committed by an earlier chunk before a crash: stored, not again
                } else {
                    duplicates += 1
                }
            }
        }
        report.stored = stored.count + ours
        report.duplicates = duplicates
        // Problems in record order, as the file lists them.
        report.errors = problems.enumerated().sorted {
            ($0.element.record ?? 0, $0.offset) < ($1.element.record ?? 0, $1.offset)
        }.map(\.element)
        report.outcome = FileReport.outcome(stored: report.stored, duplicates: duplicates, rejected: report.rejected)
        report.details = [
            "patients_created": patientsCreated, "patients_updated": patientsUpdated, "visits_created": report.stored,
        ]
        return report
    }

    /// The chunk's rows that may store a visit, sent by `COPY … FROM STDIN` (text format) into a temporary
    /// table of the connection's, emptied at every commit, for the two statements that insert patients and
    /// visits to read. Created when missing, in the transaction: one that rolls back takes a new table
    /// with it, and the next creates it again.
    private enum Stage {
        static func copy(_ rows: [Row], _ connection: PostgresConnection, _ logger: Logger) async throws {
            try await connection.query(
                """
                CREATE TEMPORARY TABLE IF NOT EXISTS carespool_intake_stage
                    (ord BIGINT, van TEXT, mrn TEXT, visit_date TEXT, reason TEXT, record BIGINT)
                    ON COMMIT DELETE ROWS
                """,
                logger: logger
            )
            // The previous file's rows of this batch's transaction (emptied at commit only).
            try await connection.query("DELETE FROM pg_temp.carespool_intake_stage", logger: logger)
            // Named in the temporary schema, whatever the search path says: with `pg_temp` listed after
            // `public` (as PostgreSQL advises), an unqualified name would find a table another role made
            // there first and give it the rows (hostile review). postgres-nio quotes the name it is given
            // as one identifier; these quotes make it `"pg_temp"."carespool_intake_stage"`.
            try await connection.copyFrom(
                table: #"pg_temp"."carespool_intake_stage"#,
                columns: ["ord", "van", "mrn", "visit_date", "reason", "record"],
                logger: logger
            ) { writer in
                var buffer = ByteBuffer()
                buffer.reserveCapacity(Self.flushBytes + 4096)
                for (ord, row) in rows.enumerated() {
                    buffer.writeString(String(ord))
                    for field in [row.record.visitAccountNumber, row.record.mrn, row.record.visitDate] {
                        buffer.writeInteger(UInt8(ascii: "\t"))
                        Self.append(field, to: &buffer)
                    }
                    buffer.writeInteger(UInt8(ascii: "\t"))
                    if let reason = row.record.reason {
                        Self.append(reason, to: &buffer)
                    } else {
                        buffer.writeStaticString("\\N")
                    }
                    buffer.writeInteger(UInt8(ascii: "\t"))
                    buffer.writeString(String(row.number))
                    buffer.writeInteger(UInt8(ascii: "\n"))
                    if buffer.readableBytes >= Self.flushBytes {
                        try await writer.write(buffer)
                        buffer.clear()
                    }
                }
                if buffer.readableBytes > 0 { try await writer.write(buffer) }
            }
        }

        private static let flushBytes = 64 * 1024

        /// `text` in COPY's text format: a backslash, tab, newline or carriage return escaped (no NUL reaches
        /// here: the schema's validator refuses it).
        static func append(_ text: String, to buffer: inout ByteBuffer) {
            let special = text.utf8.contains { $0 == 0x5C || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
            guard special else {
                buffer.writeString(text)
                return
            }
            for byte in text.utf8 {
                switch byte {
                case 0x5C: buffer.writeStaticString("\\\\")
                case 0x09: buffer.writeStaticString("\\t")
                case 0x0A: buffer.writeStaticString("\\n")
                case 0x0D: buffer.writeStaticString("\\r")
                default: buffer.writeInteger(byte)
                }
            }
        }
    }
}
