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

        package init(number: Int, line: Int, text: String, raw: String, value: Result<JSONValue, JSONParseError>) {
            self.number = number
            self.line = line
            self.text = text
            self.raw = raw
            self.value = value
        }
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
        return parsed(slice, number: number, line: lineNumber, raw: raw, failureText: raw)
    }

    /// `bytes` parsed as record `number` starting on `line`: its compact text, or when it is not JSON,
    /// the error placed in the file and `failureText` (computed only then).
    private static func parsed(
        _ bytes: [UInt8],
        number: Int,
        line: Int,
        raw: String,
        failureText: @autoclosure () -> String
    ) -> Raw {
        do {
            let value = try JSONParser.parse(bytes)
            return Raw(number: number, line: line, text: value.compactText, raw: raw, value: .success(value))
        } catch {
            var located = error
            located.line = line + error.line - 1
            return Raw(number: number, line: line, text: failureText(), raw: raw, value: .failure(located))
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
            // A record of several lines (a pretty-printed array's element) names the line as well.
            let place = error.line > raw.line ? "line \(error.line), column \(error.column)" : "column \(error.column)"
            // Too large to parse is said as it is: nothing says the record is not JSON.
            let message = error.tooLarge ? error.reason : "not valid JSON: \(error.reason) (\(place))"
            return .failure(
                Problems([RecordProblem(record: raw.number, line: raw.line, pointer: nil, message: message)])
            )
        }
    }

    /// `value`'s schema violations as the record's problems, nil when it is valid.
    package static func violations(of value: JSONValue, in raw: Raw, against schema: JSONSchema) -> Problems? {
        let errors = schema.validate(value)
        if errors.isEmpty { return nil }
        return Problems(record: raw.number, line: raw.line, failures: errors)
    }

    private static func notJSON(_ error: JSONParseError) -> RecordProblem {
        RecordProblem(record: nil, line: error.line, pointer: nil, message: "not valid JSON: \(error.description)")
    }
}

/// Splits a top-level JSON array into its elements as its bytes arrive, in chunks of any size, so that
/// a large array is read in bounded memory, like NDJSON: each element's bytes, its number and the line
/// it starts on. Only the structure is followed here (strings, escapes, nesting); each element is
/// parsed on its own by ``JSONRecords/record(element:)``. Where the structure breaks — a byte other
/// than `,` or `]` after an element, a `]` after a `,`, text after the closing `]` — the rest of the
/// input becomes one last element that is rejected with the reason (its records before it stand, as
/// an NDJSON file's lines before a bad one do); input that ends before the closing `]` adds a rejected
/// element saying so. An element longer than `maxElementBytes` is cut there, and fails to parse.
package struct JSONArrayReader {
    package struct Element: Sendable {
        package var number: Int
        package var line: Int
        package var bytes: [UInt8]
        /// Why this is no element (the array broke here), nil for an element to parse.
        package var broken: String?
    }

    private enum Phase { case start, beforeElement, inElement, afterElement, closed, broken }
    private var phase = Phase.start
    private var afterComma = false
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var current: [UInt8] = []
    private var line = 1
    private var elementLine = 1
    private var count = 0
    private var brokenReason = ""
    package let maxElementBytes: Int

    package init(maxElementBytes: Int = 16 << 20) { self.maxElementBytes = maxElementBytes }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }

    package mutating func feed(_ chunk: ArraySlice<UInt8>, _ emit: (Element) throws -> Void) rethrows {
        for byte in chunk {
            if byte == 0x0A { line += 1 }
            switch phase {
            case .start:
                // A UTF-8 byte-order mark and whitespace may come before the `[`.
                if Self.isWhitespace(byte) || byte == 0xEF || byte == 0xBB || byte == 0xBF { continue }
                if byte == UInt8(ascii: "[") {
                    phase = .beforeElement
                } else {
                    breakHere(byte, "the file does not begin with a JSON array")
                }
            case .beforeElement:
                if Self.isWhitespace(byte) { continue }
                if byte == UInt8(ascii: "]") {
                    if afterComma {
                        breakHere(byte, "a ']' after a ',' (after record \(count))")
                    } else {
                        phase = .closed
                    }
                    continue
                }
                elementLine = line
                current.removeAll(keepingCapacity: true)
                current.append(byte)
                phase = .inElement
                depth = byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") ? 1 : 0
                inString = byte == UInt8(ascii: "\"")
                escaped = false
            case .inElement:
                if inString {
                    append(byte)
                    if escaped {
                        escaped = false
                    } else if byte == UInt8(ascii: "\\") {
                        escaped = true
                    } else if byte == UInt8(ascii: "\"") {
                        inString = false
                        if depth == 0 { try complete(emit) }
                    }
                } else if depth == 0 {
                    // A bare number or literal ends at what follows it.
                    if byte == UInt8(ascii: ",") {
                        try complete(emit)
                        phase = .beforeElement
                        afterComma = true
                    } else if byte == UInt8(ascii: "]") {
                        try complete(emit)
                        phase = .closed
                    } else if Self.isWhitespace(byte) {
                        try complete(emit)
                    } else {
                        append(byte)
                    }
                } else {
                    append(byte)
                    if byte == UInt8(ascii: "\"") {
                        inString = true
                    } else if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                        depth += 1
                    } else if byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") {
                        depth -= 1
                        if depth == 0 { try complete(emit) }
                    }
                }
            case .afterElement:
                if Self.isWhitespace(byte) { continue }
                if byte == UInt8(ascii: ",") {
                    phase = .beforeElement
                    afterComma = true
                } else if byte == UInt8(ascii: "]") {
                    phase = .closed
                } else {
                    breakHere(byte, "expected ',' or ']' after record \(count)")
                }
            case .closed:
                if !Self.isWhitespace(byte) { breakHere(byte, "text after the array's closing ']'") }
            case .broken:
                append(byte)
            }
        }
    }

    /// Ends the input: an element cut short, the broken rest, or a missing `]` becomes a last, rejected
    /// element.
    package mutating func finish(_ emit: (Element) throws -> Void) rethrows {
        switch phase {
        case .inElement where depth == 0 && !inString:
            // A bare number or literal at the very end: an element, and then the `]` is missing.
            try complete(emit)
            try missingEnd(emit)
        case .inElement:
            // Cut short inside an element, which then fails to parse: reason enough.
            count += 1
            try emit(Element(number: count, line: elementLine, bytes: current, broken: nil))
        case .broken:
            count += 1
            try emit(Element(number: count, line: elementLine, bytes: current, broken: brokenReason))
        case .beforeElement, .afterElement:
            try missingEnd(emit)
        case .start, .closed:
            break
        }
        phase = .closed
    }

    private mutating func missingEnd(_ emit: (Element) throws -> Void) rethrows {
        count += 1
        try emit(
            Element(
                number: count,
                line: line,
                bytes: [],
                broken: "the array is not closed: the file ends before its ']' (cut short?)"
            )
        )
    }

    private mutating func append(_ byte: UInt8) {
        if current.count < maxElementBytes { current.append(byte) }
    }

    private mutating func complete(_ emit: (Element) throws -> Void) rethrows {
        count += 1
        try emit(Element(number: count, line: elementLine, bytes: current, broken: nil))
        current.removeAll(keepingCapacity: true)
        phase = .afterElement
        afterComma = false
    }

    private mutating func breakHere(_ byte: UInt8, _ reason: String) {
        brokenReason = "the array breaks at line \(line): \(reason); the rest of the file is not read"
        elementLine = line
        current.removeAll(keepingCapacity: true)
        current.append(byte)
        phase = .broken
    }
}

extension JSONRecords {
    /// One element of a streamed JSON array as record `element.number`.
    package static func record(element: JSONArrayReader.Element) -> Raw {
        let raw = String(decoding: element.bytes, as: UTF8.self)
        // A record that is not JSON keeps its text, on one line (it goes to an NDJSON sidecar): its line
        // breaks, whitespace between tokens or invalid inside a string, become spaces.
        func oneLine() -> String {
            String(decoding: element.bytes.map { $0 == 0x0A || $0 == 0x0D ? 0x20 : $0 }, as: UTF8.self)
        }
        if let broken = element.broken {
            let error = JSONParseError(line: element.line, column: 1, reason: broken)
            return Raw(number: element.number, line: element.line, text: oneLine(), raw: raw, value: .failure(error))
        }
        return parsed(element.bytes, number: element.number, line: element.line, raw: raw, failureText: oneLine())
    }
}
