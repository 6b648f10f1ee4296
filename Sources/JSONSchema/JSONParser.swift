// A strict RFC 8259 parser over bytes, with line and column positions for error messages.
// Rejects invalid UTF-8, lone surrogates, duplicate object keys (names compared by their Unicode scalars,
// as JSONValue's equality compares them), trailing commas and comments. Linear in the input's size.

/// Where and why a document is not JSON.
package struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 1-based line of the offending byte.
    package var line: Int
    /// 1-based column (in bytes) of the offending byte.
    package var column: Int
    /// What was wrong, without quoting the document.
    package var reason: String
    /// 0-based byte offset of the offending byte.
    package var offset: Int = 0
    /// Well-formed so far, but a record or document over the size asked for (``JSONParser/check``).
    package var tooLarge = false

    package var description: String { "line \(line), column \(column): \(reason)" }

    package init(line: Int, column: Int, reason: String, offset: Int = 0) {
        self.line = line
        self.column = column
        self.reason = reason
        self.offset = offset
    }
}

/// Parses JSON text. Use ``parse(_:)`` for one document, or ``parseValue(_:from:)`` to read
/// successive values from one buffer (JSON arrays element by element).
package struct JSONParser {
    private let bytes: [UInt8]
    package private(set) var index: Int
    private var depthLimit = 512

    package init(bytes: [UInt8], start: Int = 0) {
        self.bytes = bytes
        self.index = start
    }

    /// Parses exactly one JSON document (surrounding whitespace allowed).
    package static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        if parser.index < bytes.count { throw parser.error("unexpected data after the JSON value") }
        return value
    }

    /// A checked document: an array (its elements parsed one at a time and let go, so that a large
    /// array is never held whole as values) or any other value.
    package enum Checked: Sendable {
        case array(count: Int)
        case value(JSONValue)
        /// Well-formed, larger than asked to be kept: not parsed into values.
        case unparsed
    }

    /// Checks exactly one JSON document as ``parse(_:)`` does — the same errors at the same offsets —
    /// without building its values: memory stays near the input's size whatever its shape (parsed, a
    /// 64 MiB array of `1,` held about sixty times that as values). A top-level array is counted; any
    /// other document of at most `keepUpTo` bytes is parsed and handed back (a caller that needs to look
    /// inside a small document), a larger one comes back as ``Checked/unparsed``. Each element of a
    /// top-level array, and a whole other document, may span at most `elementLimit` bytes.
    package static func check(
        _ bytes: [UInt8],
        keepUpTo keep: Int = .max,
        elementLimit: Int = .max
    ) throws(JSONParseError) -> Checked {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        guard parser.currentByte == UInt8(ascii: "[") else {
            if bytes.count <= keep { return .value(try parse(bytes)) }
            let start = parser.index
            try parser.skipValue(depth: 0)
            parser.skipWhitespace()
            if parser.index < bytes.count { throw parser.error("unexpected data after the JSON value") }
            if parser.index - start > elementLimit {
                parser.index = start
                var error = parser.error("a JSON document over \(elementLimit) bytes")
                error.tooLarge = true
                throw error
            }
            return .unparsed
        }
        let count = try parser.skipArray(depth: 0, elementLimit: elementLimit)
        parser.skipWhitespace()
        if parser.index < bytes.count { throw parser.error("unexpected data after the JSON value") }
        return .array(count: count)
    }

    /// How many records `bytes` holds as the pipeline splits a file — a top-level array's elements, or
    /// one for any other document — counted without building a value; nil when it is neither (NDJSON,
    /// or not JSON: the caller counts lines). An array that breaks off is counted up to the break.
    package static func topLevelCount(_ bytes: [UInt8]) -> Int? {
        var parser = JSONParser(bytes: bytes)
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { parser.index = 3 }
        parser.skipWhitespace()
        if parser.currentByte == UInt8(ascii: "[") {
            var count = 0
            do throws(JSONParseError) {
                return try parser.skipArray(depth: 0, counted: &count)
            } catch {
                return count + 1
            }
        }
        do throws(JSONParseError) {
            try parser.skipValue(depth: 0)
        } catch {
            return nil
        }
        parser.skipWhitespace()
        return parser.isAtEnd ? 1 : nil
    }

    /// Parses one JSON document from UTF-8 text.
    package static func parse(_ text: String) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8))
    }

    /// The 1-based line number of byte offset `offset`.
    package static func line(of offset: Int, in bytes: [UInt8]) -> Int {
        var line = 1
        var i = 0
        while i < offset && i < bytes.count {
            if bytes[i] == 0x0A { line += 1 }
            i += 1
        }
        return line
    }

    package var isAtEnd: Bool { index >= bytes.count }
    package var currentByte: UInt8? { index < bytes.count ? bytes[index] : nil }
    package mutating func advance() { index += 1 }

    package mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    package func error(_ reason: String) -> JSONParseError {
        var line = 1
        var lineStart = 0
        var i = 0
        let end = min(index, bytes.count)
        while i < end {
            if bytes[i] == 0x0A {
                line += 1
                lineStart = i + 1
            }
            i += 1
        }
        return JSONParseError(line: line, column: end - lineStart + 1, reason: reason, offset: end)
    }

    package mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth < depthLimit else { throw error("nesting deeper than \(depthLimit) levels") }
        guard index < bytes.count else { throw error("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject(depth: depth)
        case UInt8(ascii: "["): return try parseArray(depth: depth)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        default: throw error("unexpected character, expected a JSON value")
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("unexpected end of input") }
        let expected = UnsafeBufferPointer(start: word.utf8Start, count: count)
        for k in 0..<count where bytes[index + k] != expected[k] {
            index += k
            throw error("invalid literal")
        }
        index += count
    }

    /// The names of one object so far, for the duplicate check: scanned while there are few, hashed (by
    /// their Unicode scalars, as ``JSONKey``) once the object outgrows a scan — checking each new name
    /// against all the earlier ones made an object of 92,000 names take 16 s.
    private struct Names {
        private var few: [String] = []
        private var many = Set<JSONKey>()

        /// Adds `name`; false when the object has it already.
        mutating func insert(_ name: String) -> Bool {
            if many.isEmpty && few.count < JSONValue.linearScanMembers {
                if few.contains(where: { $0.hasSameUTF8(as: name) }) { return false }
                few.append(name)
                return true
            }
            if many.isEmpty {
                many.reserveCapacity(few.count * 2)
                for earlier in few { many.insert(JSONKey(earlier)) }
                few = []
            }
            return many.insert(JSONKey(name)).inserted
        }
    }

    /// Moves into the object or array at `index`; true when it is empty (and moved past).
    private mutating func opens(closing: UInt8) -> Bool {
        index += 1
        skipWhitespace()
        guard index < bytes.count && bytes[index] == closing else { return false }
        index += 1
        return true
    }

    /// A member's name and its `:`, checked against the object's `names`; leaves `index` at the value.
    private mutating func memberName(_ names: inout Names) throws(JSONParseError) -> String {
        skipWhitespace()
        guard index < bytes.count else { throw error("unexpected end of input inside an object") }
        guard bytes[index] == UInt8(ascii: "\"") else { throw error("expected a string key") }
        let keyStart = index
        let key = try parseString()
        guard names.insert(key) else {
            index = keyStart
            throw error("duplicate key \(JSONValue.quoted(String(key.prefix(64))))")
        }
        skipWhitespace()
        guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
        index += 1
        skipWhitespace()
        return key
    }

    /// After a member or an element: true at the closing bracket, false after a `,` (both moved past).
    private mutating func closes(_ closing: UInt8) throws(JSONParseError) -> Bool {
        skipWhitespace()
        let inside = closing == UInt8(ascii: "]") ? "an array" : "an object"
        guard index < bytes.count else { throw error("unexpected end of input inside \(inside)") }
        if bytes[index] == UInt8(ascii: ",") {
            index += 1
            return false
        }
        if bytes[index] == closing {
            index += 1
            return true
        }
        throw error(closing == UInt8(ascii: "]") ? "expected ',' or ']'" : "expected ',' or '}'")
    }

    private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        var members: [JSONMember] = []
        if opens(closing: UInt8(ascii: "}")) { return .object(members) }
        var names = Names()
        while true {
            let key = try memberName(&names)
            members.append(JSONMember(key: key, value: try parseValue(depth: depth + 1)))
            if try closes(UInt8(ascii: "}")) { return .object(members) }
        }
    }

    private mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
        var items: [JSONValue] = []
        if opens(closing: UInt8(ascii: "]")) { return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue(depth: depth + 1))
            if try closes(UInt8(ascii: "]")) { return .array(items) }
        }
    }

    /// Checks the value at `index` exactly as ``parseValue(depth:)`` would — same errors at the same
    /// offsets — and moves past it, building nothing but each object's set of names while it is walked.
    package mutating func skipValue(depth: Int) throws(JSONParseError) {
        guard depth < depthLimit else { throw error("nesting deeper than \(depthLimit) levels") }
        guard index < bytes.count else { throw error("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): try skipObject(depth: depth)
        case UInt8(ascii: "["): try skipArray(depth: depth)
        case UInt8(ascii: "\""): try skipString()
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try skipNumber()
        default: throw error("unexpected character, expected a JSON value")
        }
    }

    /// Skips the array at `index` and returns how many elements it has (`counted` follows the count, for
    /// a caller that wants it when the array breaks off); an element over `elementLimit` bytes is an error
    /// at its first byte.
    @discardableResult
    private mutating func skipArray(
        depth: Int,
        elementLimit: Int = .max,
        counted: UnsafeMutablePointer<Int>? = nil
    ) throws(JSONParseError) -> Int {
        var count = 0
        if opens(closing: UInt8(ascii: "]")) { return 0 }
        while true {
            skipWhitespace()
            let start = index
            try skipValue(depth: depth + 1)
            count += 1
            counted?.pointee = count
            if index - start > elementLimit {
                index = start
                var error = error("element \(count) is over \(elementLimit) bytes")
                error.tooLarge = true
                throw error
            }
            if try closes(UInt8(ascii: "]")) { return count }
        }
    }

    private mutating func skipObject(depth: Int) throws(JSONParseError) {
        if opens(closing: UInt8(ascii: "}")) { return }
        var names = Names()
        while true {
            _ = try memberName(&names)
            try skipValue(depth: depth + 1)
            if try closes(UInt8(ascii: "}")) { return }
        }
    }

    /// Checks a string as ``parseString()`` does without keeping it: the fast path (no escapes) builds
    /// nothing at all.
    private mutating func skipString() throws(JSONParseError) {
        let start = index
        var cursor = index + 1
        while cursor < bytes.count {
            let byte = bytes[cursor]
            if byte == UInt8(ascii: "\"") {
                // Validated, and let go at once (a long string is a moment's allocation, never kept).
                guard String(validating: bytes[(start + 1)..<cursor], as: UTF8.self) != nil else { break }
                index = cursor + 1
                return
            }
            if byte == UInt8(ascii: "\\") || byte < 0x20 { break }
            cursor += 1
        }
        // Escapes, control characters, invalid UTF-8 or no end: the parser's own path, errors and all.
        index = start
        _ = try parseString()
    }

    private mutating func skipNumber() throws(JSONParseError) { try scanNumber() }

    private mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = index
        try scanNumber()
        return .number(String(decoding: bytes[start..<index], as: UTF8.self))
    }

    /// Moves past the number at `index`, checking its grammar.
    private mutating func scanNumber() throws(JSONParseError) {
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
            if index < bytes.count, isDigit(bytes[index]) { throw error("invalid number: leading zero") }
        } else {
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number: digit expected") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number: digit expected") }
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
        }
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

    private mutating func parseString() throws(JSONParseError) -> String {
        index += 1
        let start = index
        // Fast path: no escapes.
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                guard let s = String(validating: bytes[start..<index], as: UTF8.self) else {
                    index = start
                    throw error("invalid UTF-8 in string")
                }
                index += 1
                return s
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw error("unescaped control character in string") }
            index += 1
        }
        var scalars = String.UnicodeScalarView()
        guard let prefix = String(validating: bytes[start..<index], as: UTF8.self) else {
            index = start
            throw error("invalid UTF-8 in string")
        }
        scalars.append(contentsOf: prefix.unicodeScalars)
        var runStart = index
        while true {
            guard index < bytes.count else { throw error("unterminated string") }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                if runStart < index {
                    guard let run = String(validating: bytes[runStart..<index], as: UTF8.self) else {
                        index = runStart
                        throw error("invalid UTF-8 in string")
                    }
                    scalars.append(contentsOf: run.unicodeScalars)
                }
                if byte == UInt8(ascii: "\"") {
                    index += 1
                    return String(scalars)
                }
                index += 1
                guard index < bytes.count else { throw error("unterminated string") }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""): scalars.append("\"")
                case UInt8(ascii: "\\"): scalars.append("\\")
                case UInt8(ascii: "/"): scalars.append("/")
                case UInt8(ascii: "b"): scalars.append("\u{08}")
                case UInt8(ascii: "f"): scalars.append("\u{0C}")
                case UInt8(ascii: "n"): scalars.append("\n")
                case UInt8(ascii: "r"): scalars.append("\r")
                case UInt8(ascii: "t"): scalars.append("\t")
                case UInt8(ascii: "u"):
                    let unit = try hex4()
                    if unit >= 0xD800 && unit < 0xDC00 {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
                            bytes[index + 1] == UInt8(ascii: "u")
                        else { throw error("lone surrogate in \\u escape") }
                        index += 2
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw error("lone surrogate in \\u escape") }
                        let value = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                        scalars.append(Unicode.Scalar(value)!)
                    } else if unit >= 0xDC00 && unit < 0xE000 {
                        throw error("lone surrogate in \\u escape")
                    } else {
                        scalars.append(Unicode.Scalar(unit)!)
                    }
                default:
                    index -= 1
                    throw error("invalid escape sequence")
                }
                runStart = index
                continue
            }
            if byte < 0x20 { throw error("unescaped control character in string") }
            index += 1
        }
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("incomplete \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt32
            switch byte {
            case 0x30...0x39: digit = UInt32(byte - 0x30)
            case 0x41...0x46: digit = UInt32(byte - 0x41 + 10)
            case 0x61...0x66: digit = UInt32(byte - 0x61 + 10)
            default: throw error("invalid hex digit in \\u escape")
            }
            value = value << 4 | digit
            index += 1
        }
        return value
    }
}
