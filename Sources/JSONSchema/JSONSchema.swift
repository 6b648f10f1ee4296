// JSONSchema: a small JSON Schema draft 2020-12 validator for the keywords carespool's schema.json needs.
//
// What it trusts: the schema comes from the operator's repository (schema.json); instances come from
// partners and are never trusted. What it never does: ignore a keyword it does not implement. A schema
// that uses one is refused when it is compiled, with the keyword and its place named.

import Foundation

/// Why a schema cannot be used.
package struct SchemaError: Error, Sendable, Equatable, CustomStringConvertible {
    /// JSON pointer of the offending place in the schema document.
    package var pointer: String
    package var reason: String
    /// The unsupported keyword, when that is the reason.
    package var keyword: String?

    package var description: String { "schema \(pointer.isEmpty ? "/" : pointer): \(reason)" }
}

/// One validation failure: where in the instance, and which rule.
///
/// Its pointer and message are written when first read, not when the failure is found: a file of a
/// million rows with six failures each is mostly rejected records whose messages are read once, on the
/// thread that writes them (or never, past a report's cap), so finding them builds no strings — the
/// failure keeps the values it would quote (references, not copies), in plain fields: copying one is a
/// few retains.
package struct ValidationError: Sendable {
    /// Where, as found: a pointer, or (the common case) one member of the instance by its name.
    enum Place: Sendable {
        case pointer(String)
        case member(String)
    }

    /// Which rule, with what its message quotes, as found.
    enum Rule: Sendable {
        case text(String)
        case requiredMissing
        case notOfType(JSONValue, expected: [String])
        case notOneOf(JSONValue, options: [JSONValue])
        case shorter(String, min: Double)
        case pattern(String, source: String)
        case format(String, dateTime: Bool)
    }

    /// The rules whose messages are written when read; the others' are written when found (`text`).
    private enum Deferred: UInt8, Sendable {
        case text, requiredMissing, shorter, pattern, date, dateTime
        /// `value` is a string instance (quoted when written) or another's text as written; `source` the
        /// types expected.
        case stringNotOfType, otherNotOfType
    }

    /// The pointer, or (when `isMember`) the member's unescaped name.
    private var place: String
    private var isMember: Bool
    private var rule: Deferred
    /// The message (`text`), or the value the message quotes.
    private var value: String
    /// `pattern`'s source.
    private var source = ""
    /// `shorter`'s minimum length.
    private var limit = 0.0

    init(_ place: Place, _ rule: Rule) {
        switch place {
        case .pointer(let text): (self.place, isMember) = (text, false)
        case .member(let name): (self.place, isMember) = (name, true)
        }
        switch rule {
        case .text(let text): (self.rule, value) = (.text, text)
        case .requiredMissing: (self.rule, value) = (.requiredMissing, "")
        case .notOfType(let instance, let expected):
            source = expected.count == 1 ? expected[0] : expected.joined(separator: " or ")
            switch instance {
            case .string(let text): (self.rule, value) = (.stringNotOfType, text)
            case .number(let text): (self.rule, value) = (.otherNotOfType, text)
            case .null: (self.rule, value) = (.otherNotOfType, "null")
            case .bool(let flag): (self.rule, value) = (.otherNotOfType, flag ? "true" : "false")
            case .object, .array: (self.rule, value) = (.otherNotOfType, JSONSchema.describe(instance))
            }
        case .notOneOf(let instance, let options):
            let list = options.map { $0.compactText }.joined(separator: ", ")
            (self.rule, value) = (.text, "\(JSONSchema.describe(instance)) is not one of \(list)")
        case .shorter(let text, let min): (self.rule, value, limit) = (.shorter, text, min)
        case .pattern(let text, let source): (self.rule, value, self.source) = (.pattern, text, source)
        case .format(let text, let dateTime): (self.rule, value) = (dateTime ? .dateTime : .date, text)
        }
    }

    package init(pointer: String, message: String) {
        self.init(.pointer(pointer), .text(message))
    }

    /// JSON pointer into the instance ("" is the whole instance).
    package var pointer: String {
        get { isMember ? "/" + JSONSchema.escape(place) : place }
        set { (place, isMember) = (newValue, false) }
    }

    /// The rule broken, e.g. `"2025-01-10 12:30" is not an RFC 3339 date-time`.
    package var message: String {
        get {
            if rule == .text { return value }
            var bytes: [UInt8] = []
            appendMessage(to: &bytes)
            return String(decoding: bytes, as: UTF8.self)
        }
        set { (rule, value, source, limit) = (.text, newValue, "", 0) }
    }

    /// Whether its pointer and message are certainly `other`'s: the same place, rule and quoted values.
    package func saysTheSame(as other: ValidationError) -> Bool {
        // By their bytes (canonically equal strings are written differently); a pair that differs here
        // but reads the same is merely written twice.
        rule == other.rule && isMember == other.isMember && limit == other.limit
            && place.hasSameUTF8(as: other.place) && value.hasSameUTF8(as: other.value)
            && source.hasSameUTF8(as: other.source)
    }

    /// Whether its pointer is certainly `other`'s (the same place, by its bytes).
    package func isAtSamePlace(as other: ValidationError) -> Bool {
        isMember == other.isMember && place.hasSameUTF8(as: other.place)
    }

    /// Appends ``pointer``'s UTF-8 to `out`, without its leading "/" when `dropSlash`.
    package func appendPointer(to out: inout [UInt8], dropSlash: Bool = false) {
        guard isMember else {
            out += place.utf8.dropFirst(dropSlash && place.utf8.first == 0x2F ? 1 : 0)
            return
        }
        if !dropSlash { out.append(0x2F) }
        var name = place
        name.withUTF8 { bytes in
            guard bytes.contains(where: { $0 == 0x7E || $0 == 0x2F }) else {
                out.append(contentsOf: bytes)
                return
            }
            for byte in bytes {
                switch byte {
                case 0x7E: out += [0x7E, 0x30]  // ~ is ~0
                case 0x2F: out += [0x7E, 0x31]  // / is ~1
                default: out.append(byte)
                }
            }
        }
    }

    /// Appends ``message``'s UTF-8 to `out`: the common rules' messages written straight as bytes (the
    /// thread writing a million rejected rows' reasons builds no string for each).
    package func appendMessage(to out: inout [UInt8]) {
        switch rule {
        case .text:
            out += value.utf8
        case .requiredMissing:
            out += "required property is missing".utf8
        case .shorter:
            JSONSchema.appendDescribed(value, to: &out)
            out += " is shorter than ".utf8
            out += JSONSchema.number(limit).utf8
            out += " characters".utf8
        case .date, .dateTime:
            JSONSchema.appendDescribed(value, to: &out)
            out += (rule == .dateTime ? " is not an RFC 3339 date-time" : " is not an RFC 3339 date").utf8
        case .pattern:
            JSONSchema.appendDescribed(value, to: &out)
            out += " does not match pattern ".utf8
            JSONValue.appendQuoted(source.unicodeScalars, to: &out)
        case .stringNotOfType, .otherNotOfType:
            if rule == .stringNotOfType { JSONSchema.appendDescribed(value, to: &out) } else { out += value.utf8 }
            out += " is not of type ".utf8
            out += source.utf8
        }
    }
}

extension JSONSchema {
    /// ``describe(_:)`` of a string, as UTF-8 appended to `out`.
    static func appendDescribed(_ s: String, to out: inout [UInt8]) {
        if s.utf8.count <= 80 || s.unicodeScalars.count <= 80 {
            JSONValue.appendQuoted(s.unicodeScalars, to: &out)
        } else {
            // Cut inside the quotes, as ``describe(_:)`` does.
            JSONValue.appendQuoted(Array(s.unicodeScalars.prefix(80)) + ["…"], to: &out)
        }
    }
}

extension ValidationError: Equatable {
    package static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.pointer == rhs.pointer && lhs.message == rhs.message
    }
}

/// A compiled schema. Build once at start, validate many instances concurrently.
package struct JSONSchema: Sendable {
    /// Keywords this validator implements.
    package static let supportedKeywords: Set<String> = [
        "type", "required", "properties", "additionalProperties", "enum", "const", "minLength", "maxLength",
        "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "items", "prefixItems",
        "minItems", "maxItems", "allOf", "anyOf", "oneOf", "not", "$ref", "$defs",
    ]
    /// Annotation keywords with no effect on validation.
    package static let annotationKeywords: Set<String> = [
        "$schema", "$comment", "title", "description", "default", "examples", "deprecated", "readOnly",
        "writeOnly",
    ]
    /// Values of `format` that are asserted.
    package static let supportedFormats: Set<String> = ["date-time", "date"]

    private let nodes: [Node]
    private let root: Int
    /// The schema's own strings as its messages quote them (`enum` and `const` strings, `pattern`s):
    /// what a message may show a sender where the instance's values are masked (``masked(_:keeping:)``).
    package let constants: Set<String>
    /// Beyond the schema: a string holding U+0000 is invalid. SQLite's text bindings end at the first NUL
    /// byte, so `"P0\u0000x"` was stored as `P0` (and two ids differing after a NUL conflicted). On for
    /// carespool's kinds; off for the JSON-Schema-Test-Suite, whose valid instances include such strings.
    package var forbidsNUL = false

    /// Compiles `document`, refusing any keyword outside ``supportedKeywords``.
    package init(document: JSONValue) throws(SchemaError) {
        var compiler = Compiler(document: document)
        root = try compiler.compile(document, pointer: "", isRoot: true)
        nodes = compiler.nodes.map { $0! }
        constants = Self.constants(of: nodes)
    }

    /// Compiles the subschema at `pointer` (e.g. `/$defs/appointment_event`) of `document`, with `$ref`s
    /// resolved against the whole document. Every subschema of the document is checked for support.
    package init(document: JSONValue, entry pointer: String) throws(SchemaError) {
        var compiler = Compiler(document: document)
        _ = try compiler.compile(document, pointer: "", isRoot: true)
        guard let target = Compiler.resolve(pointer: pointer, in: document) else {
            throw SchemaError(pointer: pointer, reason: "no schema at this pointer")
        }
        root = try compiler.compile(target, pointer: pointer, isRoot: false)
        nodes = compiler.nodes.map { $0! }
        constants = Self.constants(of: nodes)
    }

    private static func constants(of nodes: [Node]) -> Set<String> {
        var found = Set<String>()
        for node in nodes {
            for value in (node.enumValues ?? []) + (node.constValue.map { [$0] } ?? []) {
                if case .string = value { found.insert(value.compactText) }
            }
            if let pattern = node.pattern { found.insert(JSONValue.quoted(pattern.source)) }
        }
        return found
    }

    /// `message` with every quoted string replaced by `"…"` but those in `keeping` (a schema's
    /// ``constants``), and a number it begins with (an instance's number: `123456789 is not of type
    /// string`) by `…`: a sender learns the rule and what is allowed, never a payload's values. A value
    /// that equals one of the schema's own strings shows: it is no secret. Walked by Unicode scalars, not
    /// characters: a value beginning with a combining mark fused with its opening quote into one
    /// character, and the quote was not seen.
    package static func masked(_ message: String, keeping: Set<String>) -> String {
        var out = String.UnicodeScalarView()
        var quoted = String.UnicodeScalarView()
        var inQuote = false
        var escaped = false
        var scalars = message.unicodeScalars[...]
        let number = scalars.prefix { "0123456789+-.eE".unicodeScalars.contains($0) }
        if number.contains(where: { $0.properties.numericType != nil }), number.first != "e", number.first != "E" {
            out.append(contentsOf: "…".unicodeScalars)
            scalars = scalars.dropFirst(number.count)
        }
        for scalar in scalars {
            guard inQuote else {
                if scalar == "\"" {
                    inQuote = true
                    quoted = String.UnicodeScalarView(["\""])
                } else {
                    out.append(scalar)
                }
                continue
            }
            quoted.append(scalar)
            if escaped {
                escaped = false
            } else if scalar == "\\" {
                escaped = true
            } else if scalar == "\"" {
                inQuote = false
                let text = String(quoted)
                out.append(contentsOf: (keeping.contains(text) ? text : "\"…\"").unicodeScalars)
            }
        }
        if inQuote { out.append(contentsOf: "\"…".unicodeScalars) }
        return String(out)
    }

    /// Validates `instance`; an empty result means valid.
    package func validate(_ instance: JSONValue) -> [ValidationError] {
        var errors: [ValidationError] = []
        var path = InstancePath()
        validate(instance, node: root, path: &path, errors: &errors)
        if forbidsNUL { Self.findNUL(instance, path: &path, errors: &errors) }
        return errors
    }

    /// Every string of `value` (member names too) that holds U+0000, once each, at its pointer.
    private static func findNUL(_ value: JSONValue, path: inout InstancePath, errors: inout [ValidationError]) {
        switch value {
        case .string(let s):
            if s.containsNUL {
                errors.append(.init(pointer: path.pointer, message: "contains a NUL character (U+0000): not storable"))
            }
        case .object(let members):
            for member in members {
                path.enter(member.key)
                if member.key.containsNUL {
                    errors.append(.init(pointer: path.pointer, message: "name contains a NUL character (U+0000)"))
                }
                findNUL(member.value, path: &path, errors: &errors)
                path.leave()
            }
        case .array(let items):
            for (index, item) in items.enumerated() {
                path.enter(index)
                findNUL(item, path: &path, errors: &errors)
                path.leave()
            }
        default: break
        }
    }

    /// How objects whose members are all strings, always under the same names in the same order (a CSV
    /// file's rows), are validated without being built: each name's subschema found once.
    package struct StringObjectPlan: Sendable {
        fileprivate let names: [String]
        /// Each name's subschema (its property's, or `additionalProperties`'), nil when none applies.
        fileprivate let members: [Int?]
        /// Whether each name is disallowed (`additionalProperties: false`).
        fileprivate let disallowed: [Bool]
        /// For each required name, its position in `names`, or -1 (never present).
        fileprivate let required: [(name: String, position: Int)]
        /// Whether a name holds U+0000.
        fileprivate let nulNames: [Bool]
    }

    /// The plan for objects of string members named `names`, in that order; nil when the root schema is
    /// more than an object's `type`, `required`, `properties` and `additionalProperties` (then the object
    /// is built and validated whole).
    package func stringObjectPlan(names: [String]) -> StringObjectPlan? {
        let node = nodes[root]
        guard node.boolean == nil, node.ref == nil, node.constValue == nil, node.enumValues == nil,
            node.allOf.isEmpty, node.anyOf.isEmpty, node.oneOf.isEmpty, node.not == nil,
            node.types == nil || node.typeMask & Node.objectBit != 0
        else { return nil }
        var members: [Int?] = []
        var disallowed: [Bool] = []
        for name in names {
            if let property = node.property(name) {
                members.append(property)
                disallowed.append(false)
            } else if let additional = node.additionalProperties {
                let no = nodes[additional].boolean == false
                members.append(no ? nil : additional)
                disallowed.append(no)
            } else {
                members.append(nil)
                disallowed.append(false)
            }
        }
        let required = node.required.map { name in
            (name, names.firstIndex { $0.hasSameUTF8(as: name) } ?? -1)
        }
        return StringObjectPlan(
            names: names,
            members: members,
            disallowed: disallowed,
            required: required,
            nulNames: names.map(\.containsNUL)
        )
    }

    /// Validates the object whose members are `plan`'s names with `values` (nil: no such member), as
    /// ``validate(_:)`` validates it built — the same failures in the same order — without building it.
    package func validate(strings values: [String?], plan: StringObjectPlan) -> [ValidationError] {
        precondition(values.count == plan.names.count)
        var errors: [ValidationError] = []
        var path = InstancePath()
        for (name, position) in plan.required where position < 0 || values[position] == nil {
            path.enter(name)
            errors.append(.init(path.place, .requiredMissing))
            path.leave()
        }
        for position in values.indices {
            guard let value = values[position] else { continue }
            // Room for a failure a field once the row has one (grown one by one: four reallocations).
            if !errors.isEmpty && errors.capacity < values.count { errors.reserveCapacity(values.count + 1) }
            path.enter(plan.names[position])
            if plan.disallowed[position] {
                errors.append(.init(pointer: path.pointer, message: "property is not allowed"))
            } else if let member = plan.members[position] {
                validate(.string(value), node: member, path: &path, errors: &errors)
            }
            path.leave()
        }
        if forbidsNUL {
            for position in values.indices {
                guard let value = values[position] else { continue }
                path.enter(plan.names[position])
                if plan.nulNames[position] {
                    errors.append(.init(pointer: path.pointer, message: "name contains a NUL character (U+0000)"))
                }
                if value.containsNUL {
                    errors.append(
                        .init(pointer: path.pointer, message: "contains a NUL character (U+0000): not storable")
                    )
                }
                path.leave()
            }
        }
        return errors
    }

    /// Whether `instance` is valid.
    package func isValid(_ instance: JSONValue) -> Bool {
        matches(instance, root)
    }

    /// Checks `value` against node `index`; `path` is where `value` is in the instance (restored on return).
    private func validate(
        _ value: JSONValue,
        node index: Int,
        path: inout InstancePath,
        errors: inout [ValidationError]
    ) {
        unowned(unsafe) let node = nodes[index]  // the schema holds every node: no retain per visit
        if let always = node.boolean {
            if !always { errors.append(.init(pointer: path.pointer, message: "no value is allowed here")) }
            return
        }
        if let ref = node.ref { validate(value, node: ref, path: &path, errors: &errors) }
        if let types = node.types {
            // By bits: a number is parsed only when the schema allows integers but not all numbers.
            let ok: Bool
            switch value {
            case .null: ok = node.typeMask & Node.nullBit != 0
            case .bool: ok = node.typeMask & Node.booleanBit != 0
            case .string: ok = node.typeMask & Node.stringBit != 0
            case .array: ok = node.typeMask & Node.arrayBit != 0
            case .object: ok = node.typeMask & Node.objectBit != 0
            case .number:
                ok =
                    node.typeMask & Node.numberBit != 0
                    || (node.typeMask & Node.integerBit != 0 && value.typeName == "integer")
            }
            if !ok {
                errors.append(.init(path.place, .notOfType(value, expected: types)))
                return
            }
        }
        if let constant = node.constValue, value != constant {
            errors.append(
                .init(pointer: path.pointer, message: "\(Self.describe(value)) is not \(constant.compactText)")
            )
        }
        if let options = node.enumValues, !options.contains(where: { $0 == value }) {
            errors.append(.init(path.place, .notOneOf(value, options: options)))
        }
        switch value {
        case .string(let s):
            validateString(s, node: node, path: &path, errors: &errors)
        case .number(let text):
            if let x = Double(text) { validateNumber(x, node: node, path: &path, errors: &errors) }
        case .object(let members):
            validateObject(members, node: node, path: &path, errors: &errors)
        case .array(let items):
            validateArray(items, node: node, path: &path, errors: &errors)
        default: break
        }
        for sub in node.allOf { validate(value, node: sub, path: &path, errors: &errors) }
        if !node.anyOf.isEmpty, !node.anyOf.contains(where: { matches(value, $0) }) {
            errors.append(
                .init(pointer: path.pointer, message: "\(Self.describe(value)) matches none of the anyOf schemas")
            )
        }
        if !node.oneOf.isEmpty {
            let count = node.oneOf.reduce(0) { $0 + (matches(value, $1) ? 1 : 0) }
            if count != 1 {
                errors.append(
                    .init(
                        pointer: path.pointer,
                        message: "\(Self.describe(value)) matches \(count) of the oneOf schemas, not 1"
                    )
                )
            }
        }
        if let not = node.not, matches(value, not) {
            errors.append(
                .init(pointer: path.pointer, message: "\(Self.describe(value)) must not match the schema in not")
            )
        }
    }

    private func matches(_ value: JSONValue, _ node: Int) -> Bool {
        var errors: [ValidationError] = []
        var path = InstancePath()
        validate(value, node: node, path: &path, errors: &errors)
        return errors.isEmpty
    }

    private func validateString(_ s: String, node: Node, path: inout InstancePath, errors: inout [ValidationError]) {
        if node.minLength != nil || node.maxLength != nil {
            let length = s.unicodeScalars.count
            if let min = node.minLength, Double(length) < min {
                errors.append(.init(path.place, .shorter(s, min: min)))
            }
            if let max = node.maxLength, Double(length) > max {
                errors.append(
                    .init(
                        pointer: path.pointer,
                        message: "string of \(length) characters is longer than \(Self.number(max))"
                    )
                )
            }
        }
        if let pattern = node.pattern, !pattern.matches(s) {
            errors.append(.init(path.place, .pattern(s, source: pattern.source)))
        }
        if let format = node.format {
            let dateTime = format == "date-time"
            if !(dateTime ? RFC3339.isDateTime(s) : RFC3339.isDate(s)) {
                errors.append(.init(path.place, .format(s, dateTime: dateTime)))
            }
        }
    }

    private func validateNumber(_ x: Double, node: Node, path: inout InstancePath, errors: inout [ValidationError]) {
        if let min = node.minimum, x < min {
            errors.append(
                .init(pointer: path.pointer, message: "\(Self.number(x)) is less than the minimum \(Self.number(min))")
            )
        }
        if let max = node.maximum, x > max {
            errors.append(
                .init(
                    pointer: path.pointer,
                    message: "\(Self.number(x)) is greater than the maximum \(Self.number(max))"
                )
            )
        }
        if let min = node.exclusiveMinimum, x <= min {
            errors.append(
                .init(
                    pointer: path.pointer,
                    message: "\(Self.number(x)) is not greater than the exclusive minimum \(Self.number(min))"
                )
            )
        }
        if let max = node.exclusiveMaximum, x >= max {
            errors.append(
                .init(
                    pointer: path.pointer,
                    message: "\(Self.number(x)) is not less than the exclusive maximum \(Self.number(max))"
                )
            )
        }
    }

    private func validateObject(
        _ members: [JSONMember],
        node: Node,
        path: inout InstancePath,
        errors: inout [ValidationError]
    ) {
        if node.scansFew && members.count <= JSONValue.linearScanMembers {
            // A schema of a few properties and a small object: which properties are present first (a bit
            // each, found by a scan from the last one found: members mostly come in the schema's order),
            // so that missing required names are said first, as below; then each member.
            var seen: UInt32 = 0
            var hint = 0
            for member in members {
                if let slot = node.slot(member.key, hint: &hint) { seen |= 1 << UInt32(slot) }
            }
            for (name, slot) in zip(node.required, node.requiredSlots) {
                let present =
                    slot >= 0 ? seen & (1 << UInt32(slot)) != 0 : members.contains { $0.key.hasSameUTF8(as: name) }
                if !present {
                    path.enter(name)
                    errors.append(.init(path.place, .requiredMissing))
                    path.leave()
                }
            }
            hint = 0
            for member in members {
                path.enter(member.key)
                defer { path.leave() }
                if let slot = node.slot(member.key, hint: &hint) {
                    validate(member.value, node: node.few[slot].node, path: &path, errors: &errors)
                } else if let additional = node.additionalProperties {
                    if nodes[additional].boolean == false {
                        errors.append(.init(pointer: path.pointer, message: "property is not allowed"))
                    } else {
                        validate(member.value, node: additional, path: &path, errors: &errors)
                    }
                }
            }
            return
        }
        if !node.required.isEmpty {
            // Small objects by scanning; larger ones through a set of their names, built once.
            let indexed = members.count > JSONValue.linearScanMembers
            var names = Set<JSONKey>()
            if indexed {
                names.reserveCapacity(members.count)
                for member in members { names.insert(JSONKey(member.key)) }
            }
            for name in node.required {
                let present: Bool
                if indexed {
                    present = names.contains(JSONKey(name))
                } else {
                    present = members.contains(where: { $0.key.hasSameUTF8(as: name) })
                }
                if !present {
                    path.enter(name)
                    errors.append(.init(path.place, .requiredMissing))
                    path.leave()
                }
            }
        }
        for member in members {
            path.enter(member.key)
            defer { path.leave() }
            if let property = node.property(member.key) {
                validate(member.value, node: property, path: &path, errors: &errors)
            } else if let additional = node.additionalProperties {
                if nodes[additional].boolean == false {
                    errors.append(.init(pointer: path.pointer, message: "property is not allowed"))
                } else {
                    validate(member.value, node: additional, path: &path, errors: &errors)
                }
            }
        }
    }

    private func validateArray(
        _ items: [JSONValue],
        node: Node,
        path: inout InstancePath,
        errors: inout [ValidationError]
    ) {
        if let min = node.minItems, Double(items.count) < min {
            errors.append(
                .init(
                    pointer: path.pointer,
                    message: "array of \(items.count) items has fewer than \(Self.number(min))"
                )
            )
        }
        if let max = node.maxItems, Double(items.count) > max {
            errors.append(
                .init(pointer: path.pointer, message: "array of \(items.count) items has more than \(Self.number(max))")
            )
        }
        for (index, item) in items.enumerated() {
            path.enter(index)
            defer { path.leave() }
            if index < node.prefixItems.count {
                validate(item, node: node.prefixItems[index], path: &path, errors: &errors)
            } else if let each = node.items {
                if nodes[each].boolean == false {
                    errors.append(.init(pointer: path.pointer, message: "no item is allowed at this index"))
                } else {
                    validate(item, node: each, path: &path, errors: &errors)
                }
            }
        }
    }

    /// Escapes a property name for a JSON pointer (RFC 6901).
    package static func escape(_ token: String) -> String {
        guard token.utf8.contains(where: { $0 == 0x7E || $0 == 0x2F }) else { return token }
        return token.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
    }

    /// A short description of a value for messages: strings quoted and cut at 80 characters.
    package static func describe(_ value: JSONValue) -> String {
        switch value {
        case .string(let s):
            let cut =
                s.unicodeScalars.count > 80 ? String(String.UnicodeScalarView(s.unicodeScalars.prefix(80))) + "…" : s
            return JSONValue.quoted(cut)
        case .object: return "an object"
        case .array: return "an array"
        default: return value.compactText
        }
    }

    static func number(_ x: Double) -> String {
        x.rounded() == x && abs(x) < 1e15 ? String(Int(x)) : String(x)
    }
}

/// Where a value is in the instance: the steps from the root, turned into a JSON pointer only when an
/// error is reported. Building each member's and item's pointer eagerly cost the length of its parent's
/// pointer every time: quadratic under a long key (an array of a million items below a 1 MB name).
private struct InstancePath {
    private enum Step {
        case name(String)
        case index(Int)
    }

    private var steps: [Step] = []

    mutating func enter(_ name: String) { steps.append(.name(name)) }
    mutating func enter(_ index: Int) { steps.append(.index(index)) }
    mutating func leave() { steps.removeLast() }

    /// This place for an error: a member of the instance by its name, kept as it is (its pointer is
    /// written only if the error is read), or the pointer.
    var place: ValidationError.Place {
        if steps.count == 1, case .name(let name) = steps[0] { return .member(name) }
        return .pointer(pointer)
    }

    /// The JSON pointer (RFC 6901) of this place; "" is the whole instance.
    var pointer: String {
        var text = ""
        if steps.count == 1, case .name(let name) = steps[0] { return "/" + JSONSchema.escape(name) }
        for step in steps {
            text += "/"
            switch step {
            case .name(let name): text += JSONSchema.escape(name)
            case .index(let index): text += String(index)
            }
        }
        return text
    }
}

/// A compiled subschema. A class, so that visiting one costs a reference, not a copy of its dozen
/// arrays and strings (each retained and released per visit: a third of validating a small record).
/// Filled in only while the schema is compiled, read-only once it is: hence `@unchecked Sendable`.
private final class Node: @unchecked Sendable {
    var boolean: Bool?
    var ref: Int?
    var types: [String]? {
        didSet {
            let bits: [String: UInt8] = [
                "null": Self.nullBit, "boolean": Self.booleanBit, "string": Self.stringBit, "array": Self.arrayBit,
                "object": Self.objectBit, "number": Self.numberBit, "integer": Self.integerBit,
            ]
            typeMask = (types ?? []).reduce(0) { $0 | (bits[$1] ?? 0) }
        }
    }
    /// ``types`` as bits (a comparison of strings per value was a tenth of validating a small record).
    private(set) var typeMask: UInt8 = 0
    static let nullBit: UInt8 = 1
    static let booleanBit: UInt8 = 2
    static let stringBit: UInt8 = 4
    static let arrayBit: UInt8 = 8
    static let objectBit: UInt8 = 16
    static let numberBit: UInt8 = 32
    static let integerBit: UInt8 = 64
    var required: [String] = [] {
        didSet { indexRequired() }
    }
    /// Each property's subschema by name (a lookup per member, not a scan of the schema's properties).
    private(set) var properties: [JSONKey: Int] = [:]
    /// The same in the schema's order: scanned when there are at most `scanned` (comparing a few names'
    /// bytes beats hashing one), from where the last member was found (members mostly come in order).
    private(set) var few: [(name: String, node: Int)] = []
    private static let scanned = 8
    /// Whether properties are looked up in ``few``: then ``requiredSlots`` says where each required
    /// name is in it (-1: not a property), and an object's required names are checked by a bit each.
    var scansFew: Bool { properties.count <= Self.scanned }
    private(set) var requiredSlots: [Int] = []

    func addProperty(_ name: String, node: Int) {
        properties[JSONKey(name)] = node
        if let slot = few.firstIndex(where: { $0.name.hasSameUTF8(as: name) }) {
            few[slot].node = node
        } else {
            few.append((name, node))
        }
        indexRequired()
    }

    private func indexRequired() {
        requiredSlots = required.map { name in
            scansFew ? few.firstIndex(where: { $0.name.hasSameUTF8(as: name) }) ?? -1 : -1
        }
    }

    /// The position in ``few`` of the property called `name`, scanning from `hint` round (and setting
    /// it past the one found). Only when ``scansFew``.
    func slot(_ name: String, hint: inout Int) -> Int? {
        let count = few.count
        var slot = hint
        for _ in 0..<count {
            if slot >= count { slot = 0 }
            if few[slot].name.hasSameUTF8(as: name) {
                hint = slot + 1
                return slot
            }
            slot += 1
        }
        return nil
    }

    /// The subschema of the property called `name`, if the schema names it.
    func property(_ name: String) -> Int? {
        if scansFew {
            var hint = 0
            return slot(name, hint: &hint).map { few[$0].node }
        }
        return properties[JSONKey(name)]
    }
    var additionalProperties: Int?
    var enumValues: [JSONValue]?
    var constValue: JSONValue?
    var minLength: Double?
    var maxLength: Double?
    var pattern: Pattern?
    var format: String?
    var minimum: Double?
    var maximum: Double?
    var exclusiveMinimum: Double?
    var exclusiveMaximum: Double?
    var items: Int?
    var prefixItems: [Int] = []
    var minItems: Double?
    var maxItems: Double?
    var allOf: [Int] = []
    var anyOf: [Int] = []
    var oneOf: [Int] = []
    var not: Int?
}

/// An ECMA-262 `pattern`, matched unanchored. NSRegularExpression is immutable and safe to share.
private struct Pattern: @unchecked Sendable {
    let source: String
    let regex: NSRegularExpression

    func matches(_ s: String) -> Bool {
        regex.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)) != nil
    }
}

private struct Compiler {
    let document: JSONValue
    var nodes: [Node?] = []
    var byPointer: [String: Int] = [:]

    init(document: JSONValue) { self.document = document }

    static func resolve(pointer: String, in document: JSONValue) -> JSONValue? {
        if pointer.isEmpty { return document }
        guard pointer.hasPrefix("/") else { return nil }
        var current = document
        for raw in pointer.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
            let token = raw.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
            switch current {
            case .object: guard let next = current[token] else { return nil }; current = next
            case .array(let items):
                guard let i = Int(token), i >= 0, i < items.count else { return nil }
                current = items[i]
            default: return nil
            }
        }
        return current
    }

    mutating func compile(_ schema: JSONValue, pointer: String, isRoot: Bool) throws(SchemaError) -> Int {
        if let existing = byPointer[pointer] { return existing }
        let index = nodes.count
        nodes.append(nil)
        byPointer[pointer] = index
        let node = Node()
        switch schema {
        case .bool(let b):
            node.boolean = b
            nodes[index] = node
            return index
        case .object(let members):
            for member in members {
                let key = member.key
                let value = member.value
                let here = pointer + "/" + JSONSchema.escape(key)
                if JSONSchema.annotationKeywords.contains(key) { continue }
                if key == "$id" && isRoot { continue }
                guard JSONSchema.supportedKeywords.contains(key) else {
                    throw SchemaError(
                        pointer: here,
                        reason: "keyword \(JSONValue.quoted(key)) is not supported",
                        keyword: key
                    )
                }
                switch key {
                case "type":
                    let names: [String]
                    switch value {
                    case .string(let s): names = [s]
                    case .array(let items): names = items.compactMap(\.stringValue)
                    default: throw SchemaError(pointer: here, reason: "type must be a string or an array of strings")
                    }
                    let known: Set = ["null", "boolean", "object", "array", "number", "integer", "string"]
                    guard names.allSatisfy(known.contains) else {
                        throw SchemaError(pointer: here, reason: "unknown type name")
                    }
                    node.types = names
                case "required":
                    guard case .array(let items) = value else {
                        throw SchemaError(pointer: here, reason: "required must be an array of strings")
                    }
                    node.required = items.compactMap(\.stringValue)
                case "properties":
                    guard case .object(let props) = value else {
                        throw SchemaError(pointer: here, reason: "properties must be an object")
                    }
                    for prop in props {
                        let sub = try compile(
                            prop.value,
                            pointer: here + "/" + JSONSchema.escape(prop.key),
                            isRoot: false
                        )
                        node.addProperty(prop.key, node: sub)
                    }
                case "additionalProperties":
                    node.additionalProperties = try compile(value, pointer: here, isRoot: false)
                case "enum":
                    guard case .array(let items) = value else {
                        throw SchemaError(pointer: here, reason: "enum must be an array")
                    }
                    node.enumValues = items
                case "const": node.constValue = value
                case "minLength": node.minLength = try number(value, here)
                case "maxLength": node.maxLength = try number(value, here)
                case "minimum": node.minimum = try number(value, here)
                case "maximum": node.maximum = try number(value, here)
                case "exclusiveMinimum": node.exclusiveMinimum = try number(value, here)
                case "exclusiveMaximum": node.exclusiveMaximum = try number(value, here)
                case "minItems": node.minItems = try number(value, here)
                case "maxItems": node.maxItems = try number(value, here)
                case "pattern":
                    guard let source = value.stringValue else {
                        throw SchemaError(pointer: here, reason: "pattern must be a string")
                    }
                    guard let regex = try? NSRegularExpression(pattern: source) else {
                        throw SchemaError(pointer: here, reason: "pattern is not a valid regular expression")
                    }
                    node.pattern = Pattern(source: source, regex: regex)
                case "format":
                    guard let name = value.stringValue else {
                        throw SchemaError(pointer: here, reason: "format must be a string")
                    }
                    guard JSONSchema.supportedFormats.contains(name) else {
                        throw SchemaError(
                            pointer: here,
                            reason: "format \(JSONValue.quoted(name)) is not supported",
                            keyword: "format"
                        )
                    }
                    node.format = name
                case "items": node.items = try compile(value, pointer: here, isRoot: false)
                case "prefixItems": node.prefixItems = try list(value, here)
                case "allOf": node.allOf = try list(value, here)
                case "anyOf": node.anyOf = try list(value, here)
                case "oneOf": node.oneOf = try list(value, here)
                case "not": node.not = try compile(value, pointer: here, isRoot: false)
                case "$defs":
                    guard case .object(let defs) = value else {
                        throw SchemaError(pointer: here, reason: "$defs must be an object")
                    }
                    for def in defs {
                        _ = try compile(def.value, pointer: here + "/" + JSONSchema.escape(def.key), isRoot: false)
                    }
                case "$ref":
                    guard let target = value.stringValue, target.hasPrefix("#") else {
                        throw SchemaError(
                            pointer: here,
                            reason: "only local $ref (\"#...\") is supported",
                            keyword: "$ref"
                        )
                    }
                    let targetPointer = String(target.dropFirst()).removingPercentEncoding ?? ""
                    guard let resolved = Compiler.resolve(pointer: targetPointer, in: document) else {
                        throw SchemaError(
                            pointer: here,
                            reason: "$ref \(JSONValue.quoted(target)) does not resolve",
                            keyword: "$ref"
                        )
                    }
                    node.ref = try compile(resolved, pointer: targetPointer, isRoot: targetPointer.isEmpty)
                default:
                    throw SchemaError(
                        pointer: here,
                        reason: "keyword \(JSONValue.quoted(key)) is not supported",
                        keyword: key
                    )
                }
            }
            nodes[index] = node
            return index
        default:
            throw SchemaError(pointer: pointer, reason: "a schema must be an object or a boolean")
        }
    }

    private func number(_ value: JSONValue, _ pointer: String) throws(SchemaError) -> Double {
        guard let x = value.doubleValue else { throw SchemaError(pointer: pointer, reason: "must be a number") }
        return x
    }

    private mutating func list(_ value: JSONValue, _ pointer: String) throws(SchemaError) -> [Int] {
        guard case .array(let items) = value, !items.isEmpty else {
            throw SchemaError(pointer: pointer, reason: "must be a non-empty array of schemas")
        }
        var result: [Int] = []
        for (i, item) in items.enumerated() {
            result.append(try compile(item, pointer: pointer + "/" + String(i), isRoot: false))
        }
        return result
    }
}
