// JSONValue: an exact, order-preserving JSON document model.
//
// Trusts nothing: the parser reads bytes from partners and webhooks. It never reads files and never
// logs. Numbers keep their source text (so `1.0` and `1` round-trip as written) and booleans never
// compare equal to numbers, which Foundation's bridging gets wrong.

import Foundation

/// One member of a JSON object, in document order.
package struct JSONMember: Sendable, Equatable {
    package var key: String
    package var value: JSONValue

    package init(key: String, value: JSONValue) {
        self.key = key
        self.value = value
    }
}

/// Text compared, hashed and ordered by its UTF-8 bytes (its Unicode scalars), as JSON compares names and
/// strings and as SQLite and PostgreSQL compare text — never by Swift's `String` equality, which is
/// canonical equivalence ("é" precomposed equals "e" followed by U+0301, "K" the Kelvin sign U+212A).
/// Keys a database keeps apart must stay apart in memory: a sender could otherwise make two patients,
/// visits or appointments one in a writer's bookkeeping. For duplicate checks and lookups in linear time.
package struct ExactText: Hashable, Comparable, Sendable, CustomStringConvertible {
    package var text: String

    package init(_ text: String) { self.text = text }

    /// The text, as an object member's name.
    package var name: String { text }

    package static func == (lhs: ExactText, rhs: ExactText) -> Bool { lhs.text.hasSameUTF8(as: rhs.text) }

    package static func < (lhs: ExactText, rhs: ExactText) -> Bool {
        lhs.text.utf8.lexicographicallyPrecedes(rhs.text.utf8)
    }

    package func hash(into hasher: inout Hasher) {
        // Native strings keep their UTF-8 contiguous: hashed as one buffer, not byte by byte.
        let done: Void? = text.utf8.withContiguousStorageIfAvailable {
            hasher.combine(bytes: UnsafeRawBufferPointer($0))
        }
        if done == nil {
            for byte in text.utf8 { hasher.combine(byte) }
        }
    }

    package var description: String { text }
}

/// An object member's name, compared as JSON compares names (``ExactText``).
package typealias JSONKey = ExactText

/// Whether two texts are the same bytes (both absent counts as the same): a database's equality.
package func sameText(_ lhs: String?, _ rhs: String?) -> Bool {
    switch (lhs, rhs) {
    case (nil, nil): true
    case (let left?, let right?): left.hasSameUTF8(as: right)
    default: false
    }
}

/// A parsed JSON value.
package enum JSONValue: Sendable {
    case null
    case bool(Bool)
    /// The number's text exactly as written in the document.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([JSONMember])

    /// The member named `key` of an object, or nil.
    package subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for member in members where member.key.hasSameUTF8(as: key) { return member.value }
        return nil
    }

    /// The numeric value of a number, or nil.
    package var doubleValue: Double? {
        guard case .number(let text) = self else { return nil }
        return Double(text)
    }

    /// The string value, or nil.
    package var stringValue: String? {
        guard case .string(let text) = self else { return nil }
        return text
    }

    /// A JSON Schema type name for this value ("integer" for numbers with no fractional part).
    package var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number(let text):
            if let double = Double(text), double.rounded(.towardZero) == double, double.isFinite {
                "integer"
            } else {
                "number"
            }
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

extension JSONValue: Equatable {
    /// JSON Schema equality: numbers by value, objects regardless of member order, booleans never equal numbers.
    package static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.number(let a), .number(let b)):
            if a == b { return true }
            guard let x = Double(a), let y = Double(b) else { return false }
            return x == y
        case (.string(let a), .string(let b)):
            // Compare scalars, not grapheme clusters: "é" precomposed and decomposed differ in JSON.
            return a.unicodeScalars.elementsEqual(b.unicodeScalars)
        case (.array(let a), .array(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0 == $1 }
        case (.object(let a), .object(let b)):
            guard a.count == b.count else { return false }
            // Small objects by scanning; larger ones through an index of b's names, so that comparing
            // two objects costs their size, not its square.
            if a.count <= JSONValue.linearScanMembers {
                for member in a {
                    guard
                        let other = b.first(where: { $0.key.hasSameUTF8(as: member.key) }),
                        other.value == member.value
                    else { return false }
                }
                return true
            }
            var index: [JSONKey: Int] = [:]
            index.reserveCapacity(b.count)
            for (position, member) in b.enumerated() { index[JSONKey(member.key)] = position }
            for member in a {
                guard let position = index[JSONKey(member.key)], b[position].value == member.value else { return false }
            }
            return true
        default: return false
        }
    }
}

extension JSONValue {
    /// Up to this many members an object's names are compared by scanning them (cheaper than hashing for
    /// the records carespool reads); beyond it, through a hash of ``JSONKey``s.
    package static let linearScanMembers = 8

    /// Compact JSON text; numbers as written, members in document order.
    package var compactText: String {
        var out = ""
        write(to: &out)
        return out
    }

    private func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let text): out += text
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let items):
            out += "["
            for (index, item) in items.enumerated() {
                if index > 0 { out += "," }
                item.write(to: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (index, member) in members.enumerated() {
                if index > 0 { out += "," }
                JSONValue.writeString(member.key, to: &out)
                out += ":"
                member.value.write(to: &out)
            }
            out += "}"
        }
    }

    /// Appends `s` as a JSON string literal.
    package static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }

    /// ``quoted(_:)`` of `scalars`, as UTF-8 appended to `out`.
    package static func appendQuoted(_ scalars: some Sequence<Unicode.Scalar>, to out: inout [UInt8]) {
        out.append(0x22)
        for scalar in scalars {
            switch scalar {
            case "\"": out += [0x5C, 0x22]
            case "\\": out += [0x5C, 0x5C]
            case "\n": out += [0x5C, 0x6E]
            case "\r": out += [0x5C, 0x72]
            case "\t": out += [0x5C, 0x74]
            case "\u{08}": out += [0x5C, 0x62]
            case "\u{0C}": out += [0x5C, 0x66]
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u".utf8
                    out += String(repeating: "0", count: 4 - hex.count).utf8
                    out += hex.utf8
                } else {
                    UTF8.encode(scalar) { out.append($0) }
                }
            }
        }
        out.append(0x22)
    }

    /// A JSON string literal for `s`.
    package static func quoted(_ s: String) -> String {
        var out = ""
        writeString(s, to: &out)
        return out
    }
}

extension String {
    /// Whether it holds U+0000: memchr over a native string's bytes.
    package var containsNUL: Bool {
        utf8.withContiguousStorageIfAvailable { bytes in
            bytes.count > 0 && memchr(bytes.baseAddress!, 0, bytes.count) != nil
        } ?? utf8.contains(0)
    }

    /// Whether both hold the same UTF-8 bytes: JSON's equality of names and strings (code points, with
    /// no Unicode normalisation, unlike `==`). Compares the contiguous buffers of native strings at once,
    /// after their lengths; byte by byte only for bridged ones.
    package func hasSameUTF8(as other: String) -> Bool {
        guard utf8.count == other.utf8.count else { return false }
        let fast: Bool? =
            utf8.withContiguousStorageIfAvailable { mine in
                other.utf8.withContiguousStorageIfAvailable { theirs in
                    mine.count == 0 || memcmp(mine.baseAddress!, theirs.baseAddress!, mine.count) == 0
                }
            } ?? nil
        return fast ?? utf8.elementsEqual(other.utf8)
    }
}
