package import CSV
package import JSONSchema

/// One patient intake row, valid against schema.json's `intake_record` and the rules beyond it.
package struct IntakeRecord: Sendable, Equatable {
    package var mrn: String
    package var firstName: String
    package var lastName: String
    package var birthDate: String
    package var visitAccountNumber: String
    package var visitDate: String
    package var reason: String?
}

/// Where each required column is in a CSV file's header.
package struct IntakeColumns: Sendable {
    /// The columns a file must have (matched case-insensitively after trimming), in schema order.
    package static let required = [
        "mrn", "first_name", "last_name", "birth_date", "visit_account_number", "visit_date", "reason",
    ]
    package let index: [String: Int]
    /// Columns the header has beyond the required ones: ignored, and listed in the file's report.
    package let extra: [String]
    /// How many fields the header has: a row with more is shifted (a field with an unquoted comma, a
    /// value in no column) and is rejected rather than stored without its extra field.
    package let fieldCount: Int
    /// Each required column's field position, in ``required``'s order (a row reads its fields by these,
    /// not by a name lookup per field); and the fields a row needs at least.
    let positions: [Int]
    let width: Int

    package init(index: [String: Int], extra: [String], fieldCount: Int) {
        self.index = index
        self.extra = extra
        self.fieldCount = fieldCount
        positions = Self.required.map { index[$0] ?? 0 }
        width = (index.values.max() ?? 0) + 1
    }

    /// The note in the report of a file with no rows after its header.
    package static let noRowsNote = "no rows after the header: a valid file with nothing to store"

    /// The note in the report of a file whose header has columns beyond the required ones.
    package static func extraNote(_ extra: [String]) -> String {
        "extra columns ignored: " + extra.joined(separator: ", ")
    }
}

/// Reads intake files: CSV with a header row (streamed by the pipeline, row by row) or a JSON array.
/// A CSV row must have no more fields than the header (a shifted row is rejected with its line, never
/// stored short of a field); a header with no rows is a valid file of zero records (a day without visits).
package struct IntakeReader: Sendable {
    private let schema: JSONSchema
    /// How a CSV row's fields are validated without building the object (nil: a schema that needs it).
    private let rowPlan: JSONSchema.StringObjectPlan?

    /// - Parameter schema: the compiled `intake_record` schema.
    package init(schema: JSONSchema) {
        self.schema = schema
        rowPlan = schema.stringObjectPlan(names: IntakeColumns.required)
    }

    /// Maps a CSV header; a missing required column is a problem with the whole file, naming the column.
    package func columns(header: CSVRecord) -> Result<IntakeColumns, RecordProblem> {
        // Spreadsheets save "Unicode text" as UTF-16: say so, not what its bytes look like as UTF-8.
        if let encoding = Self.wideEncoding(header.raw) {
            return .failure(
                RecordProblem(
                    record: nil,
                    line: header.line,
                    pointer: nil,
                    message: "the file is \(encoding), not UTF-8: save it as UTF-8 (in Excel: CSV UTF-8)"
                )
            )
        }
        guard let names = header.fields else {
            let reason = header.error ?? "unreadable"
            return .failure(RecordProblem(record: nil, line: header.line, pointer: nil, message: "header: \(reason)"))
        }
        var index: [String: Int] = [:]
        var extra: [String] = []
        for (position, name) in names.enumerated() {
            let key = name.trimmingASCIIWhitespace().lowercased()
            if IntakeColumns.required.contains(key), index[key] == nil {
                index[key] = position
            } else {
                extra.append(name)
            }
        }
        let missing = IntakeColumns.required.filter { index[$0] == nil }
        if !missing.isEmpty {
            let list = missing.joined(separator: ", ")
            let noun = missing.count == 1 ? "column" : "columns"
            var message = "missing required \(noun): \(list)"
            // A header read as one column holding another separator: a semicolon- or tab-separated export.
            if names.count == 1, let separator = [";", "\t", "|"].first(where: { names[0].contains($0) }) {
                let shown = separator == "\t" ? "tabs" : "'\(separator)'"
                message +=
                    " (the header is one column separated by \(shown): intake files are comma-separated, RFC 4180)"
            }
            return .failure(RecordProblem(record: nil, line: header.line, pointer: nil, message: message))
        }
        return .success(IntakeColumns(index: index, extra: extra, fieldCount: names.count))
    }

    /// The wide encoding a header's bytes are in, by byte-order mark (UTF-32 before UTF-16, whose mark
    /// begins UTF-32LE's) or, without one, by the NUL bytes beside ASCII letters that UTF-16 gives a
    /// header of column names; nil for UTF-8.
    static func wideEncoding(_ raw: [UInt8]) -> String? {
        if raw.starts(with: [0xFF, 0xFE, 0, 0]) { return "UTF-32 (little-endian byte-order mark)" }
        if raw.starts(with: [0, 0, 0xFE, 0xFF]) { return "UTF-32 (big-endian byte-order mark)" }
        if raw.starts(with: [0xFF, 0xFE]) { return "UTF-16 (little-endian byte-order mark)" }
        if raw.starts(with: [0xFE, 0xFF]) { return "UTF-16 (big-endian byte-order mark)" }
        guard raw.count >= 4 else { return nil }
        func isLetter(_ byte: UInt8) -> Bool { (byte | 0x20) >= 0x61 && (byte | 0x20) <= 0x7A }
        if isLetter(raw[0]) && raw[1] == 0 && isLetter(raw[2]) && raw[3] == 0 { return "UTF-16 (little-endian)" }
        if raw[0] == 0 && isLetter(raw[1]) && raw[2] == 0 && isLetter(raw[3]) { return "UTF-16 (big-endian)" }
        return nil
    }

    /// One CSV data row (`number` counts data rows from 1), checked against the schema and the rules.
    package func row(_ record: CSVRecord, number: Int, columns: IntakeColumns, today: String) -> Item<IntakeRecord> {
        let text = String(decoding: record.raw, as: UTF8.self)
        func failure(_ message: String, _ pointer: String? = nil) -> Item<IntakeRecord> {
            Item(
                number: number,
                line: record.line,
                text: text,
                result: .failure(
                    Problems([RecordProblem(record: number, line: record.line, pointer: pointer, message: message)])
                )
            )
        }
        guard let fields = record.fields else { return failure(record.error ?? "unreadable row") }
        if fields.count > columns.fieldCount {
            return failure("row has \(fields.count) fields; the header has \(columns.fieldCount)")
        }
        if fields.count < columns.width {
            return failure("row has \(fields.count) fields; the header needs at least \(columns.width)")
        }
        guard let rowPlan else {
            var members: [JSONMember] = []
            members.reserveCapacity(IntakeColumns.required.count)
            for (name, position) in zip(IntakeColumns.required, columns.positions) {
                let value = fields[position]
                if name == "reason" && value.isEmpty { continue }
                members.append(JSONMember(key: name, value: .string(value)))
            }
            let result = check(.object(members), number: number, line: record.line, today: today)
            return Item(number: number, line: record.line, text: text, result: result)
        }
        // Field by field against the properties' subschemas, as the object would be (an empty reason is
        // no member): no object built for each row.
        let positions = columns.positions
        let reason = fields[positions[6]]
        let values: [String?] = [
            fields[positions[0]], fields[positions[1]], fields[positions[2]], fields[positions[3]],
            fields[positions[4]], fields[positions[5]], reason.isEmpty ? nil : reason,
        ]
        let errors = schema.validate(strings: values, plan: rowPlan)
        if !errors.isEmpty {
            return Item(
                number: number,
                line: record.line,
                text: text,
                result: .failure(Problems(record: number, line: record.line, failures: errors))
            )
        }
        let row = IntakeRecord(
            mrn: values[0]!,
            firstName: values[1]!,
            lastName: values[2]!,
            birthDate: values[3]!,
            visitAccountNumber: values[4]!,
            visitDate: values[5]!,
            reason: values[6]
        )
        return Item(
            number: number,
            line: record.line,
            text: text,
            result: judge(row, number: number, line: record.line, today: today)
        )
    }

    /// A JSON array of intake records (the body of `POST /ingest`), or NDJSON.
    package func read(_ bytes: [UInt8], today: String) -> ParsedFile<IntakeRecord> {
        JSONRecords.read(bytes) { raw in map(raw, today: today) }
    }

    /// One JSON record: for streaming readers that split the records themselves.
    package func record(_ raw: JSONRecords.Raw, today: String) -> Item<IntakeRecord> {
        Item(number: raw.number, line: raw.line, text: raw.text, result: map(raw, today: today))
    }

    private func map(_ raw: JSONRecords.Raw, today: String) -> Result<IntakeRecord, Problems> {
        switch JSONRecords.value(of: raw) {
        case .failure(let problems): .failure(problems)
        case .success(let value): check(value, number: raw.number, line: raw.line, today: today)
        }
    }

    private func check(_ value: JSONValue, number: Int, line: Int, today: String) -> Result<IntakeRecord, Problems> {
        let errors = schema.validate(value)
        if !errors.isEmpty {
            return .failure(Problems(record: number, line: line, failures: errors))
        }
        let record = IntakeRecord(
            mrn: value["mrn"]?.stringValue ?? "",
            firstName: value["first_name"]?.stringValue ?? "",
            lastName: value["last_name"]?.stringValue ?? "",
            birthDate: value["birth_date"]?.stringValue ?? "",
            visitAccountNumber: value["visit_account_number"]?.stringValue ?? "",
            visitDate: value["visit_date"]?.stringValue ?? "",
            reason: value["reason"]?.stringValue
        )
        return judge(record, number: number, line: line, today: today)
    }

    /// The rules beyond the schema, for a record the schema passed.
    private func judge(_ record: IntakeRecord, number: Int, line: Int, today: String) -> Result<IntakeRecord, Problems>
    {
        var problems: [RecordProblem] = []
        // Dates are YYYY-MM-DD (the schema checked), so text order is date order.
        if record.birthDate > today {
            problems.append(
                RecordProblem(
                    record: number,
                    line: line,
                    pointer: "/birth_date",
                    message: "\(JSONValue.quoted(record.birthDate)) is in the future"
                )
            )
        }
        if record.birthDate > record.visitDate {
            problems.append(
                RecordProblem(
                    record: number,
                    line: line,
                    pointer: "/birth_date",
                    message:
                        "\(JSONValue.quoted(record.birthDate)) is after visit_date \(JSONValue.quoted(record.visitDate))"
                )
            )
        }
        return problems.isEmpty ? .success(record) : .failure(Problems(problems))
    }
}

extension String {
    /// Without leading and trailing spaces and tabs.
    func trimmingASCIIWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first == " " || first == "\t" { scalars.removeFirst() }
        while let last = scalars.last, last == " " || last == "\t" { scalars.removeLast() }
        return String(scalars)
    }
}

extension IntakeReader {
    /// A whole CSV file in memory (the pipeline streams files instead; this serves `validate` and tests).
    package func readCSV(_ bytes: [UInt8], today: String) -> ParsedFile<IntakeRecord> {
        var reader = CSVReader()
        var columns: IntakeColumns?
        var problem: RecordProblem?
        var items: [Item<IntakeRecord>] = []
        let take: (CSVRecord) -> Void = { record in
            guard problem == nil else { return }
            guard let mapped = columns else {
                switch self.columns(header: record) {
                case .success(let found): columns = found
                case .failure(let failure): problem = failure
                }
                return
            }
            if record.fields == [""] { return }
            items.append(self.row(record, number: items.count + 1, columns: mapped, today: today))
        }
        reader.feed(bytes[...], take)
        reader.finish(take)
        if let problem { return ParsedFile(items: [], fileProblem: problem) }
        guard let found = columns else {
            return ParsedFile(
                items: [],
                fileProblem: RecordProblem(record: nil, line: nil, pointer: nil, message: "file is empty: no header")
            )
        }
        // The notes the streamed reading gives the same file.
        var notes: [String] = []
        if !found.extra.isEmpty { notes.append(IntakeColumns.extraNote(found.extra)) }
        if items.isEmpty { notes.append(IntakeColumns.noRowsNote) }
        return ParsedFile(items: items, fileProblem: nil, notes: notes)
    }
}
