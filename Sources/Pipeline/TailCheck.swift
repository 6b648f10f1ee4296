import CSV
import JSONSchema
package import Kinds

/// Tells an upload cut short from a complete file by the file itself. A client that dies mid-upload
/// (an sftp client killed during `put`) leaves a closed file whose last line stops mid-record: sshd
/// closes what it had, and a close does not mean the upload is complete. A CSV or NDJSON file whose last
/// line has no line end and does not make a record is such a cut, and is rejected whole with nothing
/// stored, so that the partner's re-send is processed cleanly instead of adding to a `partial` file.
///
/// Fed the file's bytes in order (alongside its hashing pass), it keeps only the bytes after the last
/// record boundary, at most `limit` of them: a line end, for CSV one outside a quoted field (quote
/// parity is enough: `""` toggles twice).
package struct TailCheck {
    let csv: Bool
    let limit: Int
    private var inQuote = false
    private var lines = 1
    private var offset = 0
    private var tailStart = 0
    private var tailLine = 1
    private var tail: [UInt8] = []

    package init(csv: Bool, limit: Int) {
        self.csv = csv
        self.limit = limit
    }

    package mutating func feed(_ chunk: ArraySlice<UInt8>) {
        var boundary: Int?
        for index in chunk.indices {
            let byte = chunk[index]
            if csv && byte == 0x22 {
                inQuote.toggle()
            } else if byte == 0x0A {
                lines += 1
                if !inQuote { boundary = index }
            }
        }
        if let boundary {
            tail.removeAll(keepingCapacity: true)
            tailStart = offset + (boundary - chunk.startIndex) + 1
            tailLine = lines - (chunk[(boundary + 1)...].count { $0 == 0x0A })
            tail += chunk[(boundary + 1)...].prefix(limit)
        } else if tail.count < limit {
            tail += chunk.prefix(limit - tail.count)
        }
        offset += chunk.count
    }

    /// The problem of a file cut short, or nil. `headerWidth` is how many fields a CSV row needs (nil
    /// when the last line is the header itself, or not CSV).
    package func problem(headerWidth: Int?) -> RecordProblem? {
        // Whitespace after the last line end (a trailing blank line or spaces) is no record.
        guard tailStart > 0, tail.contains(where: { ![0x20, 0x09, 0x0D].contains($0) }) else { return nil }
        let incomplete: Bool
        if csv {
            if inQuote {
                incomplete = true
            } else {
                var reader = CSVReader(maxRecordBytes: limit)
                var fields: [String]?? = nil
                reader.feed(tail[...]) { fields = .some($0.fields) }
                reader.finish { fields = .some($0.fields) }
                switch fields {
                case .some(.some(let found)): incomplete = found.count < (headerWidth ?? 0)
                default: incomplete = true
                }
            }
        } else {
            var line = tail
            if line.last == 0x0D { line.removeLast() }
            incomplete = tail.count >= limit || (try? JSONParser.check(line, keepUpTo: 0)) == nil
        }
        guard incomplete else { return nil }
        return RecordProblem(
            record: nil,
            line: tailLine,
            pointer: nil,
            message:
                "truncated upload: last line incomplete (line \(tailLine), byte \(tailStart)): it has no line end "
                + "and is no whole record, so the upload was cut short; nothing is stored: send the whole file again"
        )
    }

    /// The same judgement over a whole CSV file in memory (a report read whole).
    package static func csv(_ bytes: [UInt8], limit: Int) -> RecordProblem? {
        var check = TailCheck(csv: true, limit: limit)
        check.feed(bytes[...])
        return check.problem(headerWidth: nil)
    }

    /// The same judgement over a whole NDJSON file in memory (not one JSON document).
    package static func ndjson(_ bytes: [UInt8], limit: Int) -> RecordProblem? {
        guard let last = bytes.last, last != 0x0A, bytes.contains(0x0A) else { return nil }
        if (try? JSONParser.check(bytes, keepUpTo: 0)) != nil { return nil }  // one (pretty-printed) document
        var check = TailCheck(csv: false, limit: limit)
        check.feed(bytes[...])
        return check.problem(headerWidth: nil)
    }
}
