// Kinds: the payload kinds carespool ingests: parse, validate and map bytes to records.
//
// Trusts nothing in the bytes. Knows payloads only: it never touches the file system or the database,
// and never logs (its errors quote field values, so they go to sidecars and the ledger, never to logs).

package import JSONSchema

/// A kind of data, with its inbox folder name.
package enum Kind: String, CaseIterable, Sendable, Codable {
    case appointments
    case zoom
    case intake
    /// Zoom's participants reports (the web portal's CSV export, the Reports API's JSON), into the
    /// same visit timelines as the webhooks.
    case zoomReport = "zoom-report"

    /// Whether the HTTP door has a route for it (a Zoom report is only ever dropped as a file).
    package var hasHTTPRoute: Bool { self != .zoomReport }

    /// The `$defs` entry of schema.json that describes one record of this kind.
    package var schemaDefinition: String {
        switch self {
        case .appointments: "appointment_event"
        case .zoom: "zoom_event"
        case .intake: "intake_record"
        case .zoomReport: "zoom_report"
        }
    }

    /// The extension of the `.rejected.<ext>` sidecar that holds this kind's rejected records.
    package var rejectedExtension: String {
        switch self {
        case .appointments, .zoom: "ndjson"
        case .intake, .zoomReport: "csv"
        }
    }
}

/// A problem with a file or one of its records: where, and which rule.
package struct RecordProblem: Error, Sendable {
    /// 1-based record number in the file, nil when the problem is the file's.
    package var record: Int?
    /// 1-based line in the file where the record (or the problem) starts, when known.
    package var line: Int?
    /// What and where: as written, or a schema failure whose pointer and message are written only when
    /// read (on the thread that writes the rejected records, not the one that finds them).
    private var detail: ValidationError
    private var hasPointer: Bool

    package init(record: Int?, line: Int?, pointer: String?, message: String) {
        self.record = record
        self.line = line
        detail = ValidationError(pointer: pointer ?? "", message: message)
        hasPointer = pointer != nil
    }

    /// A schema failure of one record.
    package init(record: Int?, line: Int?, _ error: ValidationError) {
        self.record = record
        self.line = line
        detail = error
        hasPointer = true
    }

    /// JSON pointer into the record, when the problem is one field.
    package var pointer: String? {
        get { hasPointer ? detail.pointer : nil }
        set {
            detail.pointer = newValue ?? ""
            hasPointer = newValue != nil
        }
    }

    /// The rule broken; may quote the offending value, so never log it.
    package var message: String {
        get { detail.message }
        set { detail.message = newValue }
    }

    /// One line for people: `record 3 /timestamp: "2025-01-10 12:30" is not an RFC 3339 date-time (line 3)`.
    package var text: String {
        var parts: [String] = []
        if let record { parts.append("record \(record)") } else if let line { parts.append("line \(line)") }
        if let pointer { parts.append(pointer.isEmpty ? "/" : pointer) }
        let located = parts.isEmpty ? message : parts.joined(separator: " ") + ": " + message
        if let line, record != nil { return located + " (line \(line))" }
        return located
    }
}

extension RecordProblem {
    /// Appends ``pointer``'s UTF-8 (without its leading "/" when `dropSlash`) to `out`; false, appending
    /// nothing, when the problem has no pointer.
    package func appendPointer(to out: inout [UInt8], dropSlash: Bool = false) -> Bool {
        guard hasPointer else { return false }
        detail.appendPointer(to: &out, dropSlash: dropSlash)
        return true
    }

    /// Whether its pointer and message are those of `other` (its record and line aside), known without
    /// writing them when both are schema failures.
    package func saysTheSame(as other: RecordProblem) -> Bool {
        hasPointer == other.hasPointer && detail.saysTheSame(as: other.detail)
    }

    /// The same problem as written text, holding nothing of the record (a schema failure refers to the
    /// value it quotes until then).
    package var asText: RecordProblem {
        RecordProblem(record: record, line: line, pointer: pointer, message: message)
    }

    /// The bytes of its pointer and message (as text: see ``asText``).
    var textBytes: Int { (pointer?.utf8.count ?? 0) + message.utf8.count }

    /// Whether its pointer is certainly `other`'s (compared as found, not written).
    package func isAtSamePlace(as other: RecordProblem) -> Bool {
        hasPointer == other.hasPointer && detail.isAtSamePlace(as: other.detail)
    }

    /// Appends ``message``'s UTF-8 to `out` (a schema failure's written straight as bytes).
    package func appendMessage(to out: inout [UInt8]) {
        detail.appendMessage(to: &out)
    }
}

extension RecordProblem: Equatable {
    package static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.record == rhs.record && lhs.line == rhs.line && lhs.pointer == rhs.pointer && lhs.message == rhs.message
    }
}

extension RecordProblem: Codable {
    private enum CodingKeys: String, CodingKey {
        case record, line, pointer, message
    }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            record: try container.decodeIfPresent(Int.self, forKey: .record),
            line: try container.decodeIfPresent(Int.self, forKey: .line),
            pointer: try container.decodeIfPresent(String.self, forKey: .pointer),
            message: try container.decode(String.self, forKey: .message)
        )
    }

    package func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(record, forKey: .record)
        try container.encodeIfPresent(line, forKey: .line)
        try container.encodeIfPresent(pointer, forKey: .pointer)
        try container.encode(message, forKey: .message)
    }
}

/// One record of a file: its place, its text for a `.rejected` file, and either the value or its problems.
package struct Item<Record: Sendable>: Sendable {
    /// 1-based record number.
    package var number: Int
    /// 1-based line where the record starts.
    package var line: Int
    /// The record as one line of NDJSON (its source line when it was not valid JSON).
    package var text: String
    package var result: Result<Record, Problems>

    package init(number: Int, line: Int, text: String, result: Result<Record, Problems>) {
        self.number = number
        self.line = line
        self.text = text
        self.result = result
    }
}

/// The problems of one record (an `Error` so that it fits `Result`).
package struct Problems: Error, Sendable {
    /// Problems as made, or none when they are a record's schema failures (kept as found: a record of
    /// tiny rejected records copied each failure into a problem, then each problem into the report).
    private var made: [RecordProblem]
    private var failures: [ValidationError] = []
    private var record: Int?
    private var line: Int?

    package init(_ list: [RecordProblem]) { made = list }

    /// A record's schema failures (not empty).
    package init(record: Int?, line: Int?, failures: [ValidationError]) {
        made = []
        self.failures = failures
        self.record = record
        self.line = line
    }

    package var list: [RecordProblem] {
        get {
            guard made.isEmpty else { return made }
            return failures.map { RecordProblem(record: record, line: line, $0) }
        }
        set {
            made = newValue
            failures = []
        }
    }

    /// Appends ``list`` to `problems`, with no array between.
    package func append(to problems: inout [RecordProblem]) {
        guard made.isEmpty else { return problems += made }
        for failure in failures { problems.append(RecordProblem(record: record, line: line, failure)) }
    }
}

/// What a reader made of a whole file.
package struct ParsedFile<Record: Sendable>: Sendable {
    /// Every record in file order.
    package var items: [Item<Record>]
    /// Set when the file as a whole cannot be read: nothing in it is stored.
    package var fileProblem: RecordProblem?
    /// What the file's report says about it beyond its records (a CSV header's extra columns, a header
    /// with no rows).
    package var notes: [String]

    package init(items: [Item<Record>], fileProblem: RecordProblem?, notes: [String] = []) {
        self.items = items
        self.fileProblem = fileProblem
        self.notes = notes
    }
}

/// Why schema.json cannot be used.
package struct KindsError: Error, Sendable, CustomStringConvertible {
    package var description: String
}

/// Text that becomes part of a database key (an index entry): a Zoom meeting id, visit uuid, event name,
/// participant id, name or e-mail. No NUL (PostgreSQL's text cannot hold one: 22021, retried for ever
/// from a report's JSON, found by the hostile review). At most ``maxBytes`` bytes of UTF-8, whatever the
/// schema in use says:
/// PostgreSQL refuses an index entry over about 2.7 KB (SQLSTATE 54000), and a key holds up to four such
/// texts — a longer one stored nowhere and retried for ever (found by the hostile review). No real id,
/// name or e-mail comes near it. The same rule in both stores, so both give the same verdict.
package enum KeyText {
    package static let maxBytes = 512

    /// A problem for each of `fields` (its name in the message, its pointer, its text) that is longer.
    package static func problems(
        _ fields: [(name: String, pointer: String?, text: String?)],
        record: Int?,
        line: Int?
    ) -> [RecordProblem] {
        fields.compactMap { field in
            guard let text = field.text else { return nil }
            let message: String
            if text.utf8.count > maxBytes {
                message = "\(field.name) is \(text.utf8.count) bytes long: at most \(maxBytes) (part of a stored key)"
            } else if text.utf8.contains(0) {
                // A readers' rule elsewhere too (the schema validator's): no database stores it as text.
                message = "\(field.name) contains a NUL character (U+0000): not storable"
            } else {
                return nil
            }
            return RecordProblem(record: record, line: line, pointer: field.pointer, message: message)
        }
    }
}
