import Foundation
import JSONSchema
import Testing

@Suite struct JSONParserTests {
    @Test(arguments: [
        ("{\"a\":1,\"a\":2}", "duplicate key"),
        ("[1,2,]", "unexpected character"),
        ("{\"a\":1,}", "expected a string key"),
        ("\"\\ud800\"", "lone surrogate"),
        ("01", "leading zero"),
        ("[1] x", "unexpected data after"),
        ("// c\n{}", "unexpected character"),
        ("\"a\nb\"", "unescaped control character"),
    ])
    func rejectsWhatRFC8259Rejects(text: String, reason: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(text) }
        do {
            _ = try JSONParser.parse(text)
        } catch {
            #expect(error.reason.contains(reason), "\(error)")
        }
    }

    /// `check` (the HTTP door's, which lets each array element go once checked) agrees with `parse`:
    /// the same verdict, and for a broken document the same error at the same offset.
    @Test(arguments: [
        "[]", " [ ] ", "[1,2,3]", "[{\"a\":[1,{\"b\":\"]\"}]},\"x\"]", "{\"a\":1}", "\"s\"", "7",
        "[", "[1,", "[1 2]", "[1,]", "[,1]", "[1]]", "[1] x", "[{\"a\":1,\"a\":2}]", "[\"\\q\"]",
        "[01]", "[{\"a\" 1}]", "[tru]", "{\"a\":[}", "", "  ", "[\"\u{01}\"]",
    ])
    func checkAgreesWithParse(_ text: String) {
        Self.checkAgrees(Array(text.utf8))
    }

    /// `parse` and `check` — keeping the document, and walking it without building a value — give the
    /// same verdict, and for a broken document the same error at the same offset.
    static func checkAgrees(_ bytes: [UInt8], _ label: String = "") {
        let text = label.isEmpty ? String(decoding: bytes.prefix(80), as: UTF8.self) : label
        let parsed = Result { () throws(JSONParseError) in try JSONParser.parse(bytes) }
        for keep in [Int.max, 0] {
            switch (parsed, Result { () throws(JSONParseError) in try JSONParser.check(bytes, keepUpTo: keep) }) {
            case (.success(.array(let elements)), .success(.array(let count))): #expect(count == elements.count)
            case (.success(let value), .success(.value(let checked))): #expect(keep > 0 && value == checked)
            case (.success, .success(.unparsed)): #expect(keep == 0)
            case (.failure(let parsed), .failure(let checked)): #expect(parsed == checked, "\(text)")
            case (let parsed, let checked): Issue.record("\(text): parse \(parsed), check \(checked)")
            }
        }
        // The record count the pipeline routes by, without a value built.
        if case .success(let value) = parsed {
            if case .array(let elements) = value {
                #expect(JSONParser.topLevelCount(bytes) == elements.count, "\(text)")
            } else {
                #expect(JSONParser.topLevelCount(bytes) == 1, "\(text)")
            }
        }
    }

    /// Every document of the JSON-Schema-Test-Suite (draft 2020-12), whole and cut at ten places:
    /// the walk that builds no value agrees with the parser on each, error offsets included.
    @Test func checkAgreesWithParseOnEveryFileOfTheSchemaTestSuiteWholeAndCut() throws {
        let folder = TestPaths.testdata.appendingPathComponent("json-schema-test-suite/tests/draft2020-12")
        let files = try #require(FileManager.default.enumerator(atPath: folder.path)).compactMap { $0 as? String }
            .filter { $0.hasSuffix(".json") }
        #expect(files.count > 20)
        for file in files {
            let bytes = try Array(Data(contentsOf: folder.appendingPathComponent(file)))
            Self.checkAgrees(bytes, file)
            for cut in 1..<10 { Self.checkAgrees(Array(bytes.prefix(bytes.count * cut / 10)), "\(file) cut \(cut)/10") }
            // A byte changed: structure broken in ways no list above names.
            var changed = bytes
            for position in stride(from: 7, to: changed.count, by: max(1, changed.count / 7)) {
                changed[position] = [UInt8(ascii: "}"), UInt8(ascii: ","), UInt8(ascii: "\""), 0xFF][position % 4]
            }
            Self.checkAgrees(changed, "\(file) changed")
        }
    }

    /// The door's record limit: an element, or a whole document, over it is an error marked too large at
    /// its first byte — never parsed — while a document within it passes.
    @Test func aRecordOverTheLimitIsTooLargeAtItsFirstByte() throws {
        let array = Array("[1, \"\(String(repeating: "x", count: 100))\", 2]".utf8)
        let error = #expect(throws: JSONParseError.self) { try JSONParser.check(array, elementLimit: 50) }
        #expect(error?.tooLarge == true)
        #expect(error?.offset == 4)
        #expect(error?.reason == "element 2 is over 50 bytes")
        #expect(throws: Never.self) { try JSONParser.check(array, elementLimit: 102) }
        let object = Array("{\"a\": [1, 2, 3, 4, 5, 6]}".utf8)
        let whole = #expect(throws: JSONParseError.self) { try JSONParser.check(object, keepUpTo: 0, elementLimit: 10) }
        #expect(whole?.tooLarge == true)
        // A malformed document stays malformed (400), not too large.
        let broken = #expect(throws: JSONParseError.self) { try JSONParser.check(Array("[1,]".utf8), elementLimit: 1) }
        #expect(broken?.tooLarge == false)
    }

    /// Counting records builds nothing: an array of two million tiny records is counted in one walk, and
    /// NDJSON or text that is no JSON document is left to the caller (nil).
    @Test func topLevelCountCountsRecordsWithoutParsingThem() {
        let ones =
            [UInt8(ascii: "[")] + Array(repeating: Array("1,".utf8), count: 1_999_999).flatMap { $0 } + Array("1]".utf8)
        #expect(JSONParser.topLevelCount(ones) == 2_000_000)
        #expect(JSONParser.topLevelCount(Array("{\"a\":1}\n{\"a\":2}\n".utf8)) == nil)
        #expect(JSONParser.topLevelCount(Array("mrn,name\n1,a\n".utf8)) == nil)
        #expect(JSONParser.topLevelCount(Array("\u{FEFF}[1,2]".utf8)) == 2)
        // An array that breaks off is counted to the break, plus the broken rest.
        #expect(JSONParser.topLevelCount(Array("[1,2,x".utf8)) == 3)
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSONParseError.self) { try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]) }
    }

    @Test func reportsLineAndColumn() throws {
        do {
            _ = try JSONParser.parse("{\n  \"a\": 1,\n  \"b\" 2\n}")
            Issue.record("parsed invalid JSON")
        } catch {
            #expect(error.line == 3)
            #expect(error.column == 7)
        }
    }

    @Test func keepsNumbersAsWrittenAndMembersInOrder() throws {
        let value = try JSONParser.parse("{\"z\":1.0,\"a\":[true,null,\"\\u00e9\\ud83d\\udca9\"],\"n\":-2e3}")
        #expect(value.compactText == "{\"z\":1.0,\"a\":[true,null,\"é💩\"],\"n\":-2e3}")
        #expect(value["z"]?.typeName == "integer")
        #expect(JSONValue.bool(false) != JSONValue.number("0"))
    }

    @Test func keepsNulCharactersInStrings() throws {
        let value = try JSONParser.parse("\"a\\u0000b\"")
        #expect(value.stringValue?.unicodeScalars.count == 3)
        #expect(value.compactText == "\"a\\u0000b\"")
    }
}

@Suite struct RFC3339Tests {
    @Test(arguments: [
        ("2025-01-10T12:30:00Z", "2025-01-10T12:30:00.000000000Z"),
        ("2025-01-10T13:30:00+01:00", "2025-01-10T12:30:00.000000000Z"),
        ("2025-01-01T00:15:00.5+00:30", "2024-12-31T23:45:00.500000000Z"),
        ("1998-12-31T15:59:60.123-08:00", "1998-12-31T23:59:60.123000000Z"),
        ("2024-02-29t08:00:00z", "2024-02-29T08:00:00.000000000Z"),
    ])
    func normalizesToUTC(text: String, utc: String) {
        #expect(RFC3339.normalizedDateTime(text) == utc)
    }

    @Test(arguments: [
        "2025-01-10 12:30", "2025-01-10T12:30:00", "2025-02-30T12:00:00Z", "2025-01-10T24:00:00Z",
        "2025-01-10T12:30:00+0100", "1998-12-31T23:58:60Z", "2025-01-10T12:30:00.Z", "",
    ])
    func rejectsWhatIsNotAnRFC3339DateTime(text: String) {
        #expect(RFC3339.normalizedDateTime(text) == nil)
    }

    @Test func checksFullDates() {
        #expect(RFC3339.isDate("2024-02-29"))
        #expect(!RFC3339.isDate("2023-02-29"))
        #expect(!RFC3339.isDate("2023-2-28"))
    }
}

@Suite struct SchemaCompilationTests {
    @Test func refusesAnUnsupportedKeywordNamingIt() throws {
        let document = try JSONParser.parse("{\"$defs\":{\"x\":{\"type\":\"object\",\"patternProperties\":{}}}}")
        do {
            _ = try JSONSchema(document: document)
            Issue.record("compiled a schema with patternProperties")
        } catch {
            #expect(error.keyword == "patternProperties")
            #expect(
                error.description == "schema /$defs/x/patternProperties: keyword \"patternProperties\" is not supported"
            )
        }
    }

    @Test func refusesAnUnsupportedFormat() throws {
        let document = try JSONParser.parse("{\"format\":\"email\"}")
        #expect(throws: SchemaError.self) { try JSONSchema(document: document) }
    }

    @Test func compilesTheProjectSchema() throws {
        let bytes = try [UInt8](Data(contentsOf: TestPaths.schemaJSON))
        let document = try JSONParser.parse(bytes)
        let schema = try JSONSchema(document: document, entry: "/$defs/appointment_event")
        let good = try JSONParser.parse(
            "{\"event_type\":\"appointment.updated\",\"appointment_id\":\"A\",\"patient_id\":\"P\",\"timestamp\":\"2025-01-10T12:30:00Z\"}"
        )
        #expect(schema.validate(good).isEmpty)
        let long = try JSONParser.parse(
            "{\"event_type\":\"appointment.updated\",\"appointment_id\":\"\(String(repeating: "x", count: 65))\",\"patient_id\":\"\",\"timestamp\":\"2025-01-10T12:30:00Z\"}"
        )
        #expect(schema.validate(long).map(\.pointer) == ["/appointment_id", "/patient_id"])
    }
}

/// Cost in proportion to size (issue 16, finding 2): an object's names are checked for duplicates, and
/// an instance's pointers built, in linear time. The time limits only say that each completes: before
/// the fix the first took minutes (every name compared with all the earlier ones) and the last built a
/// megabyte-long pointer for each of 200,000 items.
@Suite struct JSONCostTests {
    /// `{"k0":0,"k1":1,…}` with `count` distinct names, then `extra` members as written.
    static func wideObject(_ count: Int, extra: String = "") -> [UInt8] {
        var text = "{"
        text.reserveCapacity(count * 16)
        for n in 0..<count {
            if n > 0 { text += "," }
            text += "\"k\(n)\":\(n)"
        }
        return Array((text + extra + "}").utf8)
    }

    @Test(.timeLimit(.minutes(1))) func anObjectOf200000DistinctNamesParses() throws {
        guard case .object(let members) = try JSONParser.parse(Self.wideObject(200_000)) else {
            Issue.record("not an object")
            return
        }
        #expect(members.count == 200_000)
        #expect(members.last?.key == "k199999")
    }

    @Test(.timeLimit(.minutes(1))) func aNameRepeatedAtTheEndOfA100000NameObjectIsStillRejected() throws {
        let bytes = Self.wideObject(100_000, extra: ",\"k0\":1")
        let error = #expect(throws: JSONParseError.self) { try JSONParser.parse(bytes) }
        #expect(error?.reason == "duplicate key \"k0\"")
        // Placed at the repeated name's opening quote, as before.
        #expect(error?.offset == bytes.count - 7)
        // The same at every size: a small object is scanned, a large one hashed.
        for count in [1, 7, 8, 9, 40] {
            let small = Self.wideObject(count, extra: ",\"k\(count - 1)\":0")
            #expect(throws: JSONParseError.self) { try JSONParser.parse(small) }
            #expect(try JSONParser.parse(Self.wideObject(count, extra: ",\"k\(count)\":0")) != .null)
        }
    }

    /// Names are compared by their Unicode scalars, as JSONValue's equality compares them: "é"
    /// precomposed and decomposed are two names (before, Swift's canonical equivalence made them one
    /// in the duplicate check, but two everywhere else).
    @Test func namesDifferingOnlyInNormalizationAreTwoNames() throws {
        for count in [0, 20] {
            let text = "{\"\u{E9}\":1,\"e\u{301}\":2" + (0..<count).map { ",\"n\($0)\":0" }.joined() + "}"
            let value = try JSONParser.parse(text)
            #expect(value["\u{E9}"] == .number("1"))
            #expect(value["e\u{301}"] == .number("2"))
        }
    }

    /// Object equality through an index of names for large objects: order-free, values compared.
    @Test func largeObjectsCompareRegardlessOfOrder() throws {
        let forward = try JSONParser.parse(Self.wideObject(50))
        guard case .object(let members) = forward else { return }
        #expect(JSONValue.object(members.reversed()) == forward)
        var changed = members
        changed[17].value = .number("-1")
        #expect(JSONValue.object(changed) != forward)
        changed[17] = JSONMember(key: "other", value: members[17].value)
        #expect(JSONValue.object(changed) != forward)
    }

    @Test(.timeLimit(.minutes(1))) func itemsUnderAMegabyteNameAreValidatedWithoutBuildingTheirPointers() throws {
        let schema = try JSONSchema(
            document: JSONParser.parse("{\"additionalProperties\":{\"items\":{\"type\":\"integer\"}}}")
        )
        let name = String(repeating: "n", count: 1 << 20)
        let items = Array(repeating: "1", count: 200_000).joined(separator: ",")
        let instance = try JSONParser.parse("{\"\(name)\":[\(items),\"x\"]}")
        let errors = schema.validate(instance)
        #expect(errors.map(\.pointer) == ["/\(name)/200000"])
    }

    /// Pointers are still built right where an error is: escaped names (RFC 6901), indexes, required
    /// names of small and large objects alike.
    @Test func errorPointersNameTheirPlace() throws {
        let schema = try JSONSchema(
            document: JSONParser.parse(
                """
                {"properties":{"a/b":{"items":{"type":"string"}},"m~n":{"required":["x"]}},
                 "required":["a/b","gone"],"additionalProperties":false}
                """
            )
        )
        let small = try JSONParser.parse("{\"a/b\":[\"s\",2],\"m~n\":{},\"extra\":0}")
        #expect(schema.validate(small).map(\.pointer) == ["/gone", "/a~1b/1", "/m~0n/x", "/extra"])
        let wide = (0..<20).map { ",\"e\($0)\":0" }.joined()
        let large = try JSONParser.parse("{\"a/b\":[\"s\",2],\"m~n\":{}\(wide)}")
        let pointers = schema.validate(large).map(\.pointer)
        #expect(pointers.prefix(3) == ["/gone", "/a~1b/1", "/m~0n/x"])
        #expect(pointers.count == 23 && pointers.last == "/e19")
    }
}
