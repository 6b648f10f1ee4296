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
        let bytes = Array(text.utf8)
        switch (
            Result { () throws(JSONParseError) in try JSONParser.parse(bytes) },
            Result { () throws(JSONParseError) in try JSONParser.check(bytes) }
        ) {
        case (.success(.array(let elements)), .success(.array(let count))): #expect(count == elements.count)
        case (.success(let value), .success(.value(let checked))): #expect(value == checked)
        case (.failure(let parsed), .failure(let checked)): #expect(parsed == checked, "\(text)")
        case (let parsed, let checked): Issue.record("\(text): parse \(parsed), check \(checked)")
        }
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
