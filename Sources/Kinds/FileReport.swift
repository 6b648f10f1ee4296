import JSONSchema

/// A file's verdict.
package enum Outcome: String, Sendable, CaseIterable, Codable {
    /// Everything stored (records seen before skipped).
    case accepted
    /// Byte-identical to an earlier file, or every record already stored: nothing new.
    case duplicate
    /// Good records stored; the bad ones go to the `.rejected` sidecar.
    case partial
    /// Nothing stored: unreadable, unparseable, not a regular file, or no valid record.
    case rejected
}

/// What happened to one file: the `.error.json` sidecar, `carespool validate --json`, and the ledger's
/// `report` column all carry this shape.
package struct FileReport: Sendable, Equatable {
    package var outcome: Outcome
    package var stored: Int
    package var duplicates: Int
    package var rejected: Int
    package var errors: [RecordProblem]
    /// The earlier file with the same bytes, for a duplicate found by sha256.
    package var duplicateOf: String?
    /// Records deliberately not stored, and why (e.g. Zoom's `endpoint.url_validation` challenges).
    package var notes: [String] = []
    /// Kind-specific counts, e.g. intake's `patients_created`, `patients_updated`, `visits_created`.
    package var details: [String: Int] = [:]

    package init(
        outcome: Outcome,
        stored: Int = 0,
        duplicates: Int = 0,
        rejected: Int = 0,
        errors: [RecordProblem] = [],
        duplicateOf: String? = nil
    ) {
        self.outcome = outcome
        self.stored = stored
        self.duplicates = duplicates
        self.rejected = rejected
        self.errors = errors
        self.duplicateOf = duplicateOf
    }

    /// The outcome that the counts imply.
    package static func outcome(stored: Int, duplicates: Int, rejected: Int, skipped: Int = 0) -> Outcome {
        if rejected > 0 { return stored + duplicates > 0 ? .partial : .rejected }
        if stored == 0 && duplicates > 0 { return .duplicate }
        return stored > 0 || skipped > 0 ? .accepted : .rejected
    }

    /// The text of the problems a streamed file's report lists, at most (and the one that passes it): a
    /// listed problem is kept until the file ends, and one may name a member up to the record limit long.
    package static let listedBytes = 1 << 20

    /// Adds a chunk's counts, problems (listing at most `limit` in all, and about ``listedBytes`` of their
    /// text), notes and details to these totals. Returns how many of the chunk's problems were not listed.
    /// A problem listed is kept as its text: a schema failure refers to the value it quotes, which may be
    /// as long as a record (a thousand of them held a gigabyte until the file ended).
    package mutating func absorb(_ chunk: FileReport, listing limit: Int) -> Int {
        stored += chunk.stored
        duplicates += chunk.duplicates
        rejected += chunk.rejected
        var bytes = errors.reduce(0) { $0 + $1.textBytes }
        var unlisted = 0
        for problem in chunk.errors {
            guard errors.count < limit, bytes < Self.listedBytes else {
                unlisted += 1
                continue
            }
            let text = problem.asText
            bytes += text.textBytes
            errors.append(text)
        }
        for note in chunk.notes where !notes.contains(note) { notes.append(note) }
        for (key, value) in chunk.details { details[key, default: 0] += value }
        return unlisted
    }

    /// Closes a streamed file's totals: the count of unlisted problems noted, the outcome set.
    package mutating func close(unlisted: Int, skipped: Int = 0) {
        if unlisted > 0 {
            notes.append("\(unlisted) more problems not listed here; every rejected record is in the .rejected file")
        }
        outcome = Self.outcome(stored: stored, duplicates: duplicates, rejected: rejected, skipped: skipped)
    }

    /// Record numbers that were rejected, ascending.
    package var rejectedRecords: [Int] {
        Array(Set(errors.compactMap(\.record))).sorted()
    }

    /// A one-line summary for the ledger's `error` column, nil when nothing went wrong.
    package var summary: String? {
        guard let first = errors.first else { return nil }
        let more = errors.count > 1 ? " (and \(errors.count - 1) more)" : ""
        switch outcome {
        case .partial: return "\(rejected) of \(stored + duplicates + rejected) records rejected; \(first.text)\(more)"
        default: return first.text + more
        }
    }

    /// The report as a JSON object, with `file` naming the file when given.
    package func json(fileID: String? = nil, originalName: String? = nil, kind: String? = nil) -> String {
        var members: [JSONMember] = []
        if let fileID { members.append(.init(key: "id", value: .string(fileID))) }
        if let kind { members.append(.init(key: "kind", value: .string(kind))) }
        if let originalName { members.append(.init(key: "original_name", value: .string(originalName))) }
        members.append(.init(key: "outcome", value: .string(outcome.rawValue)))
        members.append(
            .init(
                key: "counts",
                value: .object([
                    .init(key: "stored", value: .number(String(stored))),
                    .init(key: "duplicates", value: .number(String(duplicates))),
                    .init(key: "rejected", value: .number(String(rejected))),
                ])
            )
        )
        if let duplicateOf { members.append(.init(key: "duplicate_of", value: .string(duplicateOf))) }
        let errorValues: [JSONValue] = errors.map { problem in
            .object([
                .init(key: "record", value: problem.record.map { .number(String($0)) } ?? .null),
                .init(key: "line", value: problem.line.map { .number(String($0)) } ?? .null),
                .init(key: "pointer", value: problem.pointer.map { .string($0) } ?? .null),
                .init(key: "message", value: .string(problem.message)),
            ])
        }
        members.append(.init(key: "errors", value: .array(errorValues)))
        if !notes.isEmpty { members.append(.init(key: "notes", value: .array(notes.map { .string($0) }))) }
        if !details.isEmpty {
            let values = details.keys.sorted().map { JSONMember(key: $0, value: .number(String(details[$0]!))) }
            members.append(.init(key: "details", value: .object(values)))
        }
        return JSONValue.object(members).compactText
    }

    /// Reads a report back from ``json(fileID:originalName:kind:)``'s text.
    package init?(json text: String) {
        guard let value = try? JSONParser.parse(text), let outcomeText = value["outcome"]?.stringValue,
            let outcome = Outcome(rawValue: outcomeText)
        else { return nil }
        func int(_ v: JSONValue?) -> Int? { v?.doubleValue.flatMap { Int(exactly: $0) } }
        self.outcome = outcome
        stored = int(value["counts"]?["stored"]) ?? 0
        duplicates = int(value["counts"]?["duplicates"]) ?? 0
        rejected = int(value["counts"]?["rejected"]) ?? 0
        duplicateOf = value["duplicate_of"]?.stringValue
        var errors: [RecordProblem] = []
        if case .array(let list) = value["errors"] {
            for item in list {
                errors.append(
                    RecordProblem(
                        record: int(item["record"]),
                        line: int(item["line"]),
                        pointer: item["pointer"]?.stringValue,
                        message: item["message"]?.stringValue ?? ""
                    )
                )
            }
        }
        self.errors = errors
        if case .array(let list) = value["notes"] { notes = list.compactMap(\.stringValue) }
        if case .object(let members) = value["details"] {
            for member in members { details[member.key] = member.value.doubleValue.flatMap { Int(exactly: $0) } }
        }
    }
}
