package import JSONSchema

/// Splits a JSON file into records: one object, an array of objects, or NDJSON (one value per line).
package enum JSONRecords {
    /// A record before validation.
    package struct Raw: Sendable {
        package var number: Int
        package var line: Int
        package var text: String
        /// The record's bytes exactly as received (an array element's span, an NDJSON line, the object).
        package var raw: String
        package var value: Result<JSONValue, JSONParseError>
    }

    /// The records of `bytes`, or a problem with the whole file.
    package static func split(_ input: [UInt8]) -> (records: [Raw], fileProblem: RecordProblem?) {
        var bytes = input
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        guard let first = parser.currentByte else {
            return ([], RecordProblem(record: nil, line: nil, pointer: nil, message: "file is empty: no records"))
        }
        if first == UInt8(ascii: "[") {
            return splitArray(bytes)
        }
        // One JSON value filling the file (pretty-printed objects included), else NDJSON.
        if let whole = try? JSONParser.parse(bytes) {
            let start = startOffset(bytes)
            var end = bytes.count
            while end > start, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[end - 1]) { end -= 1 }
            let line = JSONParser.line(of: start, in: bytes)
            let raw = String(decoding: bytes[start..<end], as: UTF8.self)
            return ([Raw(number: 1, line: line, text: whole.compactText, raw: raw, value: .success(whole))], nil)
        }
        return splitLines(bytes)
    }

    private static func startOffset(_ bytes: [UInt8]) -> Int {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        return parser.index
    }

    private static func splitArray(_ bytes: [UInt8]) -> ([Raw], RecordProblem?) {
        do {
            let value = try JSONParser.parse(bytes)
            guard case .array(let elements) = value else { return ([], nil) }
            // Line of each element: walk the array once more, noting where each element starts.
            var lines: [Int] = []
            var spans: [Range<Int>] = []
            lines.reserveCapacity(elements.count)
            spans.reserveCapacity(elements.count)
            var parser = JSONParser(bytes: bytes)
            parser.skipWhitespace()
            parser.advance()
            var line = 1
            var lineCountedTo = 0
            for _ in elements {
                parser.skipWhitespace()
                while lineCountedTo < parser.index {
                    if bytes[lineCountedTo] == 0x0A { line += 1 }
                    lineCountedTo += 1
                }
                lines.append(line)
                let start = parser.index
                _ = try parser.parseValue(depth: 1)
                spans.append(start..<parser.index)
                parser.skipWhitespace()
                parser.advance()  // ',' or ']'
            }
            var records: [Raw] = []
            records.reserveCapacity(elements.count)
            for (i, element) in elements.enumerated() {
                records.append(
                    Raw(
                        number: i + 1,
                        line: lines[i],
                        text: element.compactText,
                        raw: String(decoding: bytes[spans[i]], as: UTF8.self),
                        value: .success(element)
                    )
                )
            }
            if records.isEmpty {
                return (
                    [], RecordProblem(record: nil, line: nil, pointer: nil, message: "the array is empty: no records")
                )
            }
            return (records, nil)
        } catch {
            return ([], notJSON(error))
        }
    }

    private static func splitLines(_ bytes: [UInt8]) -> ([Raw], RecordProblem?) {
        var records: [Raw] = []
        var lineNumber = 0
        var start = 0
        while start <= bytes.count {
            lineNumber += 1
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            if let raw = record(line: bytes[start..<end], number: records.count + 1, lineNumber: lineNumber) {
                records.append(raw)
            }
            start = end + 1
        }
        if records.isEmpty {
            return ([], RecordProblem(record: nil, line: nil, pointer: nil, message: "file is empty: no records"))
        }
        // One line that is not JSON: the file is not JSON.
        if records.count == 1, case .failure(let error) = records[0].value {
            return ([], notJSON(error))
        }
        return (records, nil)
    }

    /// One NDJSON line (without its line break) as record `number`; nil for a blank line.
    package static func record(line: ArraySlice<UInt8>, number: Int, lineNumber: Int) -> Raw? {
        var slice = Array(line)
        if slice.last == 0x0D { slice.removeLast() }
        if slice.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return nil }
        let raw = String(decoding: slice, as: UTF8.self)
        do {
            let value = try JSONParser.parse(slice)
            return Raw(number: number, line: lineNumber, text: value.compactText, raw: raw, value: .success(value))
        } catch {
            var located = error
            located.line = lineNumber
            return Raw(number: number, line: lineNumber, text: raw, raw: raw, value: .failure(located))
        }
    }

    /// Reads a file's records and maps each: the shared shape of every JSON kind's reader.
    package static func read<Record>(
        _ bytes: [UInt8],
        _ map: (Raw) -> Result<Record, Problems>
    ) -> ParsedFile<Record> {
        let (raws, fileProblem) = split(bytes)
        if let fileProblem { return ParsedFile(items: [], fileProblem: fileProblem) }
        return ParsedFile(
            items: raws.map { Item(number: $0.number, line: $0.line, text: $0.text, result: map($0)) },
            fileProblem: nil
        )
    }

    /// The record's JSON value, or its parse error as the record's problem.
    package static func value(of raw: Raw) -> Result<JSONValue, Problems> {
        switch raw.value {
        case .success(let value): return .success(value)
        case .failure(let error):
            let message = "not valid JSON: \(error.reason) (column \(error.column))"
            return .failure(
                Problems([RecordProblem(record: raw.number, line: raw.line, pointer: nil, message: message)])
            )
        }
    }

    /// `value`'s schema violations as the record's problems, nil when it is valid.
    package static func violations(of value: JSONValue, in raw: Raw, against schema: JSONSchema) -> Problems? {
        let errors = schema.validate(value)
        if errors.isEmpty { return nil }
        return Problems(
            errors.map { RecordProblem(record: raw.number, line: raw.line, pointer: $0.pointer, message: $0.message) }
        )
    }

    private static func notJSON(_ error: JSONParseError) -> RecordProblem {
        RecordProblem(record: nil, line: error.line, pointer: nil, message: "not valid JSON: \(error.description)")
    }
}
