import Foundation
import JSONSchema
import Testing

/// The official JSON-Schema-Test-Suite (draft 2020-12 subset in ../shared/testdata), run whole.
///
/// Every group either compiles and passes every one of its cases, or is refused at compile time with the
/// unsupported keyword named. The refused groups are listed exactly below, so a group that starts or stops
/// being refused fails this test.
@Suite struct JSONSchemaSuiteTests {
    static let suiteDirectory = TestPaths.testdata.appendingPathComponent("json-schema-test-suite/tests/draft2020-12")

    static let files: [String] = {
        let fm = FileManager.default
        var names = (try? fm.contentsOfDirectory(atPath: suiteDirectory.path)) ?? []
        names = names.filter { $0.hasSuffix(".json") }
        let formats =
            (try? fm.contentsOfDirectory(atPath: suiteDirectory.appendingPathComponent("optional/format").path)) ?? []
        names += formats.filter { $0.hasSuffix(".json") }.map { "optional/format/" + $0 }
        return names.sorted()
    }()

    /// Groups refused because they need a keyword (or `$ref` form) this validator does not implement.
    static let expectedRefusals: Set<String> = [
        "additionalProperties.json: additionalProperties being false does not allow other properties",
        "additionalProperties.json: non-ASCII pattern with additionalProperties",
        "additionalProperties.json: additionalProperties with propertyNames",
        "additionalProperties.json: dependentSchemas with additionalProperties",
        "allOf.json: allOf combined with anyOf, oneOf",
        "defs.json: validate definition against metaschema",
        "not.json: collect annotations inside a 'not', even if collection is disabled",
        "properties.json: properties, patternProperties, additionalProperties interaction",
    ]

    @Test func suiteHasAllTwentySixFiles() {
        #expect(Self.files.count == 26)
    }

    @Test(arguments: files)
    func everyCasePassesOrTheGroupIsRefusedWithTheKeywordNamed(file: String) throws {
        let data = try Data(contentsOf: Self.suiteDirectory.appendingPathComponent(file))
        let groups = try JSONParser.parse(Array(data))
        guard case .array(let list) = groups else {
            Issue.record("\(file) is not an array")
            return
        }
        var cases = 0
        for group in list {
            let description = group["description"]?.stringValue ?? "?"
            let schemaDocument = try #require(group["schema"])
            guard case .array(let tests) = try #require(group["tests"]) else { continue }
            let schema: JSONSchema
            do {
                schema = try JSONSchema(document: schemaDocument)
            } catch {
                let isRefRefusal = file == "ref.json" && error.keyword != nil
                #expect(
                    Self.expectedRefusals.contains("\(file): \(description)") || isRefRefusal,
                    "\(file): \(description) refused: \(error)"
                )
                #expect(error.keyword != nil, "refusal must name the keyword: \(error)")
                continue
            }
            #expect(
                !Self.expectedRefusals.contains("\(file): \(description)"),
                "\(file): \(description) was expected to be refused"
            )
            for test in tests {
                let data = try #require(test["data"])
                guard case .bool(let valid) = try #require(test["valid"]) else { continue }
                cases += 1
                let errors = schema.validate(data)
                #expect(
                    errors.isEmpty == valid,
                    "\(file): \(description): \(test["description"]?.stringValue ?? "?"): expected valid=\(valid), got \(errors)"
                )
            }
        }
        #expect(cases > 0 || file == "defs.json", "\(file): no case ran")
    }
}

/// What a sender may see of a validation message: the rule and the schema's own strings, never a value
/// of its payload, whatever quotes and escapes the value holds.
@Suite struct MaskedMessageTests {
    @Test func theSchemasAllowedValuesShowAndThePayloadsValuesDoNot() throws {
        let document = try JSONParser.parse(
            Array(
                #"{"$defs":{"r":{"type":"object","properties":{"t":{"enum":["a.b","c \"d\""]},"k":{"const":"K"},"p":{"type":"string","pattern":"^M[0-9]+$"}}}}}"#
                    .utf8
            )
        )
        let schema = try JSONSchema(document: document, entry: "/$defs/r")
        let instance = try JSONParser.parse(Array(#"{"t":"se\"cret","k":"SECRET2","p":"SECRET3"}"#.utf8))
        let messages = schema.validate(instance).map { JSONSchema.masked($0.message, keeping: schema.constants) }
        #expect(
            messages == [
                #""…" is not one of "a.b", "c \"d\"""#, #""…" is not "K""#, #""…" does not match pattern "^M[0-9]+$""#,
            ]
        )
        #expect(!messages.joined().contains("SECRET") && !messages.joined().contains("cret"))
        // A value that is one of the schema's strings is no secret; an unterminated quote masks the rest.
        #expect(JSONSchema.masked(#""K" is fine, "x"#, keeping: schema.constants) == #""K" is fine, "…"#)
        // A value beginning with a combining mark (fused with its opening quote into one Character) and
        // an instance's number are masked too.
        #expect(JSONSchema.masked("\"\u{301}SSN-999\" is not a date", keeping: []) == "\"…\" is not a date")
        #expect(JSONSchema.masked("123456789 is not of type string", keeping: []) == "… is not of type string")
        #expect(JSONSchema.masked("-5.5e3 is less than the minimum 0", keeping: []) == "… is less than the minimum 0")
    }
}

/// A failure's pointer and message are written when read (as bytes, by the thread writing rejected
/// records): what is written must be what the strings say, for every rule written so, and for names and
/// values that need escaping or cutting.
@Suite struct DeferredMessageTests {
    @Test func theBytesWrittenAreThePointerAndMessageForEveryRuleAndAwkwardValues() throws {
        let document = try JSONParser.parse(
            Array(
                #"""
                {"type":"object","required":["a~b/c","gone"],"properties":{
                  "a~b/c":{"type":"string","minLength":5},
                  "d":{"type":"string","format":"date"},
                  "t":{"type":"string","format":"date-time"},
                  "p":{"type":"string","pattern":"^M[0-9]+\\\\\"$"},
                  "n":{"type":"integer"},
                  "m":{"type":["string","null"]},
                  "b":{"type":"string"},
                  "e":{"enum":["x",1]},
                  "o":{"type":"object","properties":{"deep":{"type":"string","minLength":2}}}}}
                """#.utf8
            )
        )
        let schema = try JSONSchema(document: document)
        let long = String(repeating: "é", count: 79) + "\u{301}\u{1F600}zz"
        let instance: JSONValue = .object([
            JSONMember(key: "a~b/c", value: .string("\u{1}\"\\\n")),
            JSONMember(key: "d", value: .string(long)),
            JSONMember(key: "t", value: .string("2025-01-10 12:30")),
            JSONMember(key: "p", value: .string("Zoë\t")),
            JSONMember(key: "n", value: .string("1")),
            JSONMember(key: "m", value: .number("-12.5e3")),
            JSONMember(key: "b", value: .array([.bool(true)])),
            JSONMember(key: "e", value: .string("y")),
            JSONMember(key: "o", value: .object([JSONMember(key: "deep", value: .string("q"))])),
        ])
        let errors = schema.validate(instance)
        #expect(errors.count == 10, "\(errors.map(\.message))")
        #expect(errors.contains { $0.pointer == "/m" && $0.message == "-12.5e3 is not of type string or null" })
        #expect(errors.contains { $0.pointer == "/b" && $0.message == "an array is not of type string" })
        #expect(errors.contains { $0.pointer == "/n" && $0.message == #""1" is not of type integer"# })
        #expect(errors.first?.pointer == "/gone" && errors.first?.message == "required property is missing")
        #expect(
            errors.contains {
                $0.pointer == "/a~0b~1c" && $0.message == #""\u0001\"\\\n" is shorter than 5 characters"#
            }
        )
        #expect(errors.contains { $0.pointer == "/d" && $0.message.hasSuffix("…\" is not an RFC 3339 date") })
        #expect(errors.contains { $0.pointer == "/o/deep" && $0.message == #""q" is shorter than 2 characters"# })
        for error in errors {
            var pointer: [UInt8] = []
            var trimmed: [UInt8] = []
            var message: [UInt8] = []
            error.appendPointer(to: &pointer)
            error.appendPointer(to: &trimmed, dropSlash: true)
            error.appendMessage(to: &message)
            #expect(pointer == Array(error.pointer.utf8))
            #expect(trimmed == Array(error.pointer.utf8.dropFirst()))
            #expect(message == Array(error.message.utf8), "\(error.message)")
            #expect(error == ValidationError(pointer: error.pointer, message: error.message))
        }
        // The cut is within the quotes, after 80 scalars, as ``JSONSchema/describe(_:)`` cuts.
        let date = try #require(errors.first { $0.pointer == "/d" })
        #expect(date.message == JSONSchema.describe(.string(long)) + " is not an RFC 3339 date")
    }
}

/// A CSV row is validated field by field (``JSONSchema/validate(strings:plan:)``), not built into an
/// object: the failures must be the object's, in the same order, whatever the row holds.
@Suite struct StringObjectPlanTests {
    static let names = ["mrn", "first_name", "last_name", "birth_date", "visit_account_number", "visit_date", "reason"]

    static func compare(_ schema: JSONSchema, names: [String], rows: [[String?]]) throws {
        let plan = try #require(schema.stringObjectPlan(names: names))
        for row in rows {
            let object: JSONValue = .object(
                zip(names, row).compactMap { name, value in value.map { JSONMember(key: name, value: .string($0)) } }
            )
            let built = schema.validate(object)
            let planned = schema.validate(strings: row, plan: plan)
            #expect(planned.map(\.pointer) == built.map(\.pointer), "\(row)")
            #expect(planned.map(\.message) == built.map(\.message), "\(row)")
        }
    }

    @Test func theIntakeSchemasFailuresAreTheBuiltObjectsInOrder() throws {
        let document = try JSONParser.parse(Array(try Data(contentsOf: TestPaths.schemaJSON)))
        var schema = try JSONSchema(document: document, entry: "/$defs/intake_record")
        schema.forbidsNUL = true
        let long = String(repeating: "Zoë ", count: 60)
        try Self.compare(
            schema,
            names: Self.names,
            rows: [
                ["M1", "Zoë", "Müller", "1980-01-02", "V1", "2025-03-01", nil],
                ["M1", "Zoë", "Müller", "1980-01-02", "V1", "2025-03-01", "checkup, \"quoted\""],
                ["", "", "", "", "", "", nil],
                [nil, "", nil, "1980-02-30", nil, "2025-13-01", ""],
                [
                    "M\u{0}1", long, "x", "1980-01-02T00:00:00Z", String(repeating: "9", count: 65), "2025-03-01",
                    "a\u{0}",
                ],
                [nil, nil, nil, nil, nil, nil, nil],
            ]
        )
    }

    @Test func otherSchemasOfStringMembersToo() throws {
        let document = try JSONParser.parse(
            Array(
                #"""
                {"type":"object","required":["a","zz"],"additionalProperties":false,
                 "properties":{"a":{"type":"string","pattern":"^[a-z]+$"},"b":{"enum":["x","y"]},"c":{"type":"integer"}}}
                """#.utf8
            )
        )
        var schema = try JSONSchema(document: document)
        schema.forbidsNUL = true
        try Self.compare(
            schema,
            names: ["a", "b", "c", "d", "n\u{0}"],
            rows: [["ok", "x", nil, nil, nil], ["OK", "z", "1", "extra", "v"], [nil, nil, nil, nil, nil]]
        )
        // A root that is more than an object's properties is validated whole: no plan.
        let anyOf = try JSONSchema(document: try JSONParser.parse(Array(#"{"anyOf":[{"type":"object"}]}"#.utf8)))
        #expect(anyOf.stringObjectPlan(names: ["a"]) == nil)
    }
}
